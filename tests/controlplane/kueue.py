"""Kueue on the test control plane, as a GPU cluster runs it: its CRDs, its controller manager (built from its Go
module by tests/controlplane/build) with the batch/Job integration, and its admission webhooks. The apiserver calls
the webhooks over loopback (a `url` client config) with a CA made here, since no Service can route to a process on
this machine; everything else is Kueue's own release configuration. Then a GPU cluster's queue set-up: a
ResourceFlavor for the GPU node pool, a ClusterQueue with a GPU quota that preempts lower priorities, a LocalQueue in
the tests' namespace and two WorkloadPriorityClasses.

The CRDs are served without the conversion webhook: v1beta2 is their storage version and everything here (Kueue
itself, the tests) speaks v1beta2, so nothing ever needs converting."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .cluster import BIN, ControlPlane, _free_port

VERSION = "v0.17.0"
DIST = BIN / "kueue-config"
NAMESPACE = "kueue-system"
# The webhooks of the integrations this cluster enables (batch/Job) and of Kueue's own kinds; the other frameworks'
# webhooks would intercept kinds that do not exist here, or (pods, deployments) every pod of every test.
WEBHOOK_GROUPS = {"batch", "kueue.x-k8s.io"}
FLAVOR, CLUSTER_QUEUE, LOCAL_QUEUE = "gpu-pool", "gpus", "team"
GPU_QUOTA = 2
PRIORITIES = {"low": 100, "high": 1000}


def start_kueue(plane: ControlPlane, namespace: str, gpus: int = GPU_QUOTA) -> "Kueue":
    return Kueue(plane).start(namespace, gpus)


class Kueue:
    def __init__(self, plane: ControlPlane):
        self.plane = plane
        self.work = plane.work / "kueue"
        self.work.mkdir(exist_ok=True)
        self.port = _free_port()
        self.health = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, namespace: str, gpus: int) -> "Kueue":
        plane = self.plane
        plane.kubectl("apply", "--server-side", "-f", str(DIST / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(DIST / "crds"))
        plane.kubectl("create", "namespace", NAMESPACE, check=False)
        ca = self._certificates()
        self.proc = self._spawn([f"--config={self._config()}", f"--kubeconfig={plane.kubeconfig}",
                                 # The on-demand visibility API (pending workloads) is an aggregated apiserver
                                 # with certificates of its own at /visibility; the tests read Workloads instead.
                                 "--feature-gates=VisibilityOnDemand=false", "--zap-log-level=info"])
        plane.wait_for(self._healthy, "Kueue's manager /readyz", 90)
        plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                            "items": self._webhooks(ca)}))
        plane.wait_for(lambda: self._apply_queues(namespace, gpus), "Kueue's webhooks to accept the queues", 60)
        return self

    def stop(self) -> None:
        """Take Kueue out of the shared control plane: its webhooks would otherwise intercept later tests' Jobs."""
        self.plane.kubectl("delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration", "-l",
                           "kubetune.io/test=kueue", check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.plane.procs = [(n, p) for n, p in self.plane.procs if p is not self.proc]

    def log(self) -> str:
        return (self.plane.logs / "kueue.log").read_text()

    # --- set-up ---------------------------------------------------------------------------------------------------
    def _spawn(self, args: list[str]) -> subprocess.Popen:
        """The manager as its Deployment runs it: without internal certificate management it reads its metrics
        serving certificate from a fixed path, /etc/kueue/metrics/certs (a Secret volume in the release). A private
        mount namespace gives it that volume without touching this machine's /etc: an empty /etc holding only it
        (the manager reaches the apiserver by IP with the test kubeconfig, so it reads nothing else there)."""
        mount = (f"mount -t tmpfs kueue-etc /etc && mkdir -p /etc/kueue/metrics && "
                 f"ln -s {self.work / 'certs'} /etc/kueue/metrics/certs && exec \"$0\" \"$@\"")
        log = (self.plane.logs / "kueue.log").open("w")
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount,
                                 str(BIN / "kueue"), *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.work, start_new_session=True)
        self.plane.procs.append(("kueue", proc))
        return proc

    def _certificates(self) -> str:
        """A CA and a serving certificate for 127.0.0.1 in controller-runtime's layout; returns the CA (PEM)."""
        certs = self.work / "certs"
        certs.mkdir(exist_ok=True)
        run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kueue-test-ca",
            "-keyout", str(certs / "ca.key"), "-out", str(certs / "ca.crt"))
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(certs / "tls.key"),
            "-out", str(certs / "tls.csr"))
        (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", str(certs / "tls.csr"), "-CA", str(certs / "ca.crt"), "-CAkey",
            str(certs / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(certs / "san.ext"),
            "-out", str(certs / "tls.crt"))
        return (certs / "ca.crt").read_text()

    def _config(self) -> Path:
        config = {"apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": NAMESPACE,
                  "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health}"},
                  "metrics": {"bindAddress": "0"},
                  "webhook": {"host": "127.0.0.1", "port": self.port, "certDir": str(self.work / "certs")},
                  "leaderElection": {"leaderElect": False},
                  # The serving certificate is the fixture's (a cert-manager install's layout), not rotated by Kueue.
                  "internalCertManagement": {"enable": False},
                  "integrations": {"frameworks": ["batch/job"]},
                  "clientConnection": {"qps": 50, "burst": 100}}
        path = self.work / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _webhooks(self, ca: str) -> list[dict]:
        import base64

        bundle = base64.b64encode(ca.encode()).decode()
        out = []
        for doc in yaml.safe_load_all((DIST / "webhooks.yaml").read_text()):
            if not doc:
                continue
            hooks = [h for h in doc["webhooks"] if {g for r in h["rules"] for g in r["apiGroups"]} <= WEBHOOK_GROUPS]
            for hook in hooks:
                path = hook["clientConfig"]["service"]["path"]
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{self.port}{path}", "caBundle": bundle}
            doc["metadata"] = {"name": f"kueue-{doc['metadata']['name']}", "labels": {"kubetune.io/test": "kueue"}}
            doc["webhooks"] = hooks
            out.append(doc)
        return out

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _apply_queues(self, namespace: str, gpus: int) -> bool:
        applied = self.plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                           "items": queues(namespace, gpus)}),
                                     check=False)
        return applied.returncode == 0


def queues(namespace: str, gpus: int) -> list[dict[str, Any]]:
    api = "kueue.x-k8s.io/v1beta2"
    flavor = {"apiVersion": api, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
              "spec": {"nodeLabels": {"nvidia.com/gpu.present": "true"}}}
    cluster_queue = {
        "apiVersion": api, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
        "spec": {"namespaceSelector": {},
                 "preemption": {"withinClusterQueue": "LowerPriority"},
                 "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                     "flavors": [{"name": FLAVOR, "resources": [
                                         {"name": "cpu", "nominalQuota": "64"},
                                         {"name": "memory", "nominalQuota": "512Gi"},
                                         {"name": "nvidia.com/gpu", "nominalQuota": str(gpus)}]}]}]}}
    local_queue = {"apiVersion": api, "kind": "LocalQueue",
                   "metadata": {"name": LOCAL_QUEUE, "namespace": namespace},
                   "spec": {"clusterQueue": CLUSTER_QUEUE}}
    priorities = [{"apiVersion": api, "kind": "WorkloadPriorityClass", "metadata": {"name": name}, "value": value,
                   "description": f"{name} priority fine-tunes"} for name, value in PRIORITIES.items()]
    return [flavor, cluster_queue, local_queue, *priorities]
