"""Operator settings from the environment (the Helm chart sets them), read once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from kubetune.api import GROUP


@dataclass(frozen=True)
class Settings:
    image: str = "ghcr.io/kubetune/kubetune-runtime:latest"
    image_pull_policy: str | None = None
    rendezvous_port: int = 29500
    chat_port: int = 8000
    field_manager: str = "kubetune-operator"

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(image=os.environ.get("KUBETUNE_RUNTIME_IMAGE", cls.image),
                   image_pull_policy=os.environ.get("KUBETUNE_IMAGE_PULL_POLICY") or None)


LABEL_PREFIX = GROUP  # kubetune.io/...
