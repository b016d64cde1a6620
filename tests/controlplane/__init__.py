"""A real Kubernetes control plane for the tests, from the binaries `tests/controlplane/build` makes: etcd and
kube-apiserver (token auth, RBAC), optionally kube-controller-manager, kube-scheduler and kwok with one fake GPU node,
each on free loopback ports, each logging to its own file."""
