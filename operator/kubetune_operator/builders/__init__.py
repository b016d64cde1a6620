"""Pure builders: a validated spec and its parent's metadata in, Kubernetes manifests out. No I/O."""
