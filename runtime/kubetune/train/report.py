"""Progress into the FineTuneJob's status: rank 0 patches `status.progress` (and `status.latestCheckpoint`) of its
own job, which the operator's Role allows for this job only. Set by the operator: KUBETUNE_STATUS_TARGET
(namespace/name); in-cluster credentials come from the pod's service account. Reporting never stops training."""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubetune.api import API_VERSION

from .hooks import Hook

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class StatusReporter(Hook):
    def __init__(self, target: str, work_dir: Path, checkpoint_uri: str | None, every_seconds: float = 10.0):
        self.namespace, _, self.name = target.partition("/")
        self.work_dir, self.checkpoint_uri, self.every = work_dir, checkpoint_uri, every_seconds
        self.api = os.environ.get("KUBETUNE_STATUS_API") or (
            f"https://{os.environ.get('KUBERNETES_SERVICE_HOST')}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}")
        self.last_sent = 0.0
        self.last_checkpoint = ""
        self.warned = False

    @classmethod
    def from_env(cls, work_dir: Path, checkpoint_uri: str | None) -> "StatusReporter | None":
        target = os.environ.get("KUBETUNE_STATUS_TARGET")
        return cls(target, work_dir, checkpoint_uri) if target and "/" in target else None

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        final = metrics["step"] == ctx.total_steps
        if not final and time.monotonic() - self.last_sent < self.every:
            return
        self.last_sent = time.monotonic()
        status: dict[str, Any] = {"progress": {
            "step": metrics["step"], "totalSteps": ctx.total_steps,
            "stepDisplay": f"{metrics['step']}/{ctx.total_steps}", "epoch": round(metrics["epoch"], 4),
            "loss": round(metrics["loss"], 6), "learningRate": metrics["lr"],
            "tokensPerSecond": round(metrics["tokens_per_second"], 1), "eta": metrics["eta"]}}
        checkpoint = self._checkpoint()
        if checkpoint:
            status["latestCheckpoint"] = checkpoint
        self.patch(status)

    def _checkpoint(self) -> dict[str, Any] | None:
        marker = self.work_dir / "last_checkpoint"
        if not marker.is_file():
            return None
        local = marker.read_text().strip()
        if local == self.last_checkpoint:
            return None
        self.last_checkpoint = local
        name = Path(local).name
        step = int(name.split("_")[-1]) if name.startswith("iter_") and name.split("_")[-1].isdigit() else None
        uri = f"{self.checkpoint_uri.rstrip('/')}/{name}" if self.checkpoint_uri else local
        return {"step": step, "uri": uri, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def patch(self, status: dict[str, Any]) -> None:
        group_version = API_VERSION
        url = f"{self.api}/apis/{group_version}/namespaces/{self.namespace}/finetunejobs/{self.name}/status"
        token = os.environ.get("KUBETUNE_STATUS_TOKEN")
        if token is None and (SA_DIR / "token").is_file():
            token = (SA_DIR / "token").read_text().strip()
        if os.environ.get("KUBETUNE_STATUS_INSECURE") == "1":
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        else:
            ca = SA_DIR / "ca.crt"
            ctx = ssl.create_default_context(cafile=str(ca) if ca.is_file() else None)
        request = urllib.request.Request(url, data=json.dumps({"status": status}).encode(), method="PATCH",
                                         headers={"Content-Type": "application/merge-patch+json",
                                                  **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=5):
                pass
        except (urllib.error.URLError, OSError) as exc:
            if not self.warned:  # once: a cluster without the Role must not flood the log
                print(f"kubetune: cannot report progress to FineTuneJob {self.namespace}/{self.name}: {exc}",
                      file=sys.stderr)
                self.warned = True
