// kindcheck validates kind cluster configs against kind's own v1alpha4 API types: unknown fields and wrong types fail
// (strict decoding, as `kind create cluster --config` does), then the checks kind applies before creating nodes.
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

func check(path string) []string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return []string{err.Error()}
	}
	var c v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return []string{err.Error()}
	}
	var errs []string
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" {
		errs = append(errs, fmt.Sprintf("apiVersion/kind: want kind.x-k8s.io/v1alpha4 Cluster, got %s %s", c.APIVersion, c.Kind))
	}
	v1alpha4.SetDefaultsCluster(&c)
	controlPlanes := 0
	for i, n := range c.Nodes {
		switch n.Role {
		case v1alpha4.ControlPlaneRole:
			controlPlanes++
		case v1alpha4.WorkerRole:
		default:
			errs = append(errs, fmt.Sprintf("nodes[%d].role: %q is neither control-plane nor worker", i, n.Role))
		}
		seen := map[string]bool{}
		for j, m := range n.ExtraPortMappings {
			if m.ContainerPort < 0 || m.ContainerPort > 65535 || m.HostPort < -1 || m.HostPort > 65535 {
				errs = append(errs, fmt.Sprintf("nodes[%d].extraPortMappings[%d]: port out of range", i, j))
			}
			switch m.Protocol {
			case v1alpha4.PortMappingProtocolTCP, v1alpha4.PortMappingProtocolUDP, v1alpha4.PortMappingProtocolSCTP:
			default:
				errs = append(errs, fmt.Sprintf("nodes[%d].extraPortMappings[%d].protocol: %q", i, j, m.Protocol))
			}
			key := fmt.Sprintf("%s/%s/%d", m.ListenAddress, m.Protocol, m.HostPort)
			if m.HostPort > 0 && seen[key] {
				errs = append(errs, fmt.Sprintf("nodes[%d].extraPortMappings[%d]: host port %d mapped twice", i, j, m.HostPort))
			}
			seen[key] = true
		}
		for j, m := range n.ExtraMounts {
			if m.HostPath == "" || m.ContainerPath == "" {
				errs = append(errs, fmt.Sprintf("nodes[%d].extraMounts[%d]: hostPath and containerPath are required", i, j))
			}
		}
	}
	if controlPlanes == 0 {
		errs = append(errs, "nodes: at least one control-plane node is required")
	}
	switch c.Networking.IPFamily {
	case v1alpha4.IPv4Family, v1alpha4.IPv6Family, v1alpha4.DualStackFamily:
	default:
		errs = append(errs, fmt.Sprintf("networking.ipFamily: %q", c.Networking.IPFamily))
	}
	return errs
}

func main() {
	failed := false
	for _, path := range os.Args[1:] {
		if errs := check(path); len(errs) > 0 {
			failed = true
			for _, e := range errs {
				fmt.Fprintf(os.Stderr, "%s: %s\n", path, e)
			}
		} else {
			fmt.Printf("%s: valid kind v1alpha4 Cluster\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}
