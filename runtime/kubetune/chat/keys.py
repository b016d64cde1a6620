"""API keys: read once from a mounted Secret's file (or the environment), checked in constant time."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from kubetune.errors import UserError

# Reachable without a key: the kubelet's probes and Prometheus' scrape (docs/chat.md says so).
OPEN_ROUTES = ("/health", "/metrics")


def read_keys(path: str | None) -> frozenset[str]:
    """Keys from --api-key-file (a mounted Secret), else KUBETUNE_API_KEYS (comma-separated); none = open."""
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UserError(f"--api-key-file {path}: {exc.strerror}") from None
        lines = (line.strip() for line in text.splitlines())
        keys = frozenset(line for line in lines if line and not line.startswith("#"))
        if not keys:
            raise UserError(f"--api-key-file {path}: no keys in the file (one per line)")
        return keys
    return frozenset(k.strip() for k in os.environ.get("KUBETUNE_API_KEYS", "").split(",") if k.strip())


def authorized(header: str, keys: frozenset[str]) -> bool:
    """An `Authorization: Bearer <key>` header naming one of `keys`."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    # The scheme is case-insensitive (RFC 9110); compare_digest so timing says nothing about how much matched.
    return scheme.lower() == "bearer" and any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)
