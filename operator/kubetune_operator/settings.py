"""Operator settings from the environment (the Helm chart sets them), read once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    image: str = "ghcr.io/kubetune/kubetune-runtime:latest"
    image_pull_policy: str | None = None
    vllm_image: str | None = None  # None: kubetune.api.chat.VLLM_IMAGE
    rendezvous_port: int = 29500
    chat_port: int = 8000
    field_manager: str = "kubetune-operator"
    # Cluster-wide storage defaults for specs that leave `storage` fields empty.
    storage_secret: str | None = None
    storage_endpoint: str | None = None
    storage_region: str | None = None
    storage_path_style: bool = False
    # A NetworkPolicy per FineTuneJob: its pods take traffic only from each other, and metrics only from pods of
    # the monitoring namespace (the chart's networkPolicy values).
    network_policy: bool = False
    metrics_namespace: str | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        return cls(image=env.get("KUBETUNE_RUNTIME_IMAGE", cls.image),
                   image_pull_policy=env.get("KUBETUNE_IMAGE_PULL_POLICY") or None,
                   vllm_image=env.get("KUBETUNE_VLLM_IMAGE") or None,
                   storage_secret=env.get("KUBETUNE_DEFAULT_STORAGE_SECRET") or None,
                   storage_endpoint=env.get("KUBETUNE_DEFAULT_S3_ENDPOINT") or None,
                   storage_region=env.get("KUBETUNE_DEFAULT_S3_REGION") or None,
                   storage_path_style=env.get("KUBETUNE_DEFAULT_S3_PATH_STYLE", "").lower() in ("1", "true"),
                   network_policy=env.get("KUBETUNE_NETWORK_POLICY", "").lower() in ("1", "true"),
                   metrics_namespace=env.get("KUBETUNE_METRICS_NAMESPACE") or None)


