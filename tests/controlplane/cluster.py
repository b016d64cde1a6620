"""Start, use and stop a control plane. Processes run in their own process group and are stopped in reverse order
(SIGTERM, then SIGKILL); every component logs to `<work>/logs/<name>.log`, which failing tests point at."""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("KUBETUNE_TOOLS", Path.home() / ".cache" / "kubetune" / "tools"))
BIN = TOOLS / "bin"
GPU_NODE = "gpu-node-0"
# The chart's operator account: the apiserver audits its requests so a test can compare them with the chart's RBAC.
OPERATOR_NAMESPACE, OPERATOR_ACCOUNT = "kubetune-system", "kubetune"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}]}


class ControlPlaneError(RuntimeError):
    pass


def binaries_missing() -> list[str]:
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm",
             "kindcheck", "monitoring-crds", "kueue", "kueue-config")
    return [n for n in names if not (BIN / n).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ControlPlane:
    def __init__(self, work: Path):
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = work / "kubeconfig"
        self.audit_log = work / "logs" / "audit.log"

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "ControlPlane":
        t = time.monotonic()
        atexit.register(self.stop)  # an interrupted test run must not leave servers behind
        self._etcd()
        self._apiserver()
        self._wait(lambda: self._get("/readyz") == 200, "kube-apiserver /readyz", 120)
        self._write_kubeconfig()
        self.apply_crds()
        self.startup_seconds = time.monotonic() - t
        return self

    def start_nodes(self) -> "ControlPlane":
        """Add kube-controller-manager, kube-scheduler, kwok and one fake GPU node: Jobs then get Pods that are
        scheduled, run and complete, and deleted owners garbage-collect their children."""
        kc = str(self.kubeconfig)
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kc}", "--leader-elect=false", "--secure-port=0",
            # node-lifecycle lifts the not-ready taint the apiserver puts on every new node once kwok reports Ready.
            "--controllers=job-controller,garbage-collector-controller,namespace-controller,"
            "ttl-after-finished-controller,serviceaccount-controller,node-lifecycle-controller,"
            "deployment-controller,replicaset-controller,disruption-controller,clusterrole-aggregation-controller",
            # No kubelet reports back fast enough to matter, and tests want children gone promptly.
            "--concurrent-gc-syncs=5", "--kube-api-qps=100", "--kube-api-burst=200"])
        self._spawn("kube-scheduler", [f"--kubeconfig={kc}", "--leader-elect=false", "--bind-address=127.0.0.1",
                                       f"--secure-port={_free_port()}", f"--authentication-kubeconfig={kc}",
                                       f"--authorization-kubeconfig={kc}"])
        stages = self.work / "kwok-stages.yaml"
        stages.write_text((BIN / "kwok-stages-fast.yaml").read_text() + "\n---\n"
                          + (Path(__file__).parent / "stages.yaml").read_text())
        self._spawn("kwok", [f"--kubeconfig={kc}", f"--config={stages}",
                             "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                             f"--server-address=127.0.0.1:{_free_port()}", "--node-lease-duration-seconds=40"])
        self.kubectl("apply", "-f", "-", input=json.dumps(gpu_node()))
        self._wait(self._node_ready, f"node {GPU_NODE} Ready (kwok) and untainted (node-lifecycle)", 90)
        return self

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    # --- use ------------------------------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_crds(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubeconfig_for(self, token: str, path: Path) -> Path:
        """A kubeconfig that authenticates with `token` (a service account's), to run a component as that account."""
        config = json.loads(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        path.write_text(json.dumps(config))
        return path

    def wait_for(self, check: Any, what: str, timeout: float = 60) -> None:
        self._wait(check, what, timeout)

    def log_paths(self) -> str:
        return "\n".join(f"  {name}: {self.logs / (name + '.log')}" for name, _ in self.procs)

    # --- internals ------------------------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen([str(BIN / name), *args], stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def _etcd(self) -> None:
        client, peer = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [f"--data-dir={self.work / 'etcd'}", f"--listen-client-urls={self.etcd_url}",
                             f"--advertise-client-urls={self.etcd_url}", f"--listen-peer-urls=http://127.0.0.1:{peer}",
                             f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                             f"--initial-cluster=default=http://127.0.0.1:{peer}",
                             # Test data is thrown away: skip fsync, it is most of etcd's latency on a shared disk.
                             "--unsafe-no-fsync=true", "--log-level=warn"])
        self._wait(lambda: self._etcd_healthy(), "etcd /health", 30)

    def _apiserver(self) -> None:
        pki = self.work / "pki"
        pki.mkdir(exist_ok=True)
        subprocess.run(["openssl", "genrsa", "-out", str(pki / "sa.key"), "2048"], check=True, capture_output=True)
        (self.work / "tokens.csv").write_text(f"{self.token},admin,admin-uid,system:masters\n")
        (self.work / "audit-policy.json").write_text(json.dumps(AUDIT_POLICY))
        self._spawn("kube-apiserver", [
            f"--etcd-servers={self.etcd_url}", "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            # A loopback advertise address fails endpoint reconciling; with no reconciler it is accepted.
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}", f"--token-auth-file={self.work / 'tokens.csv'}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc", f"--service-account-key-file={pki / 'sa.key'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}", "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            f"--audit-policy-file={self.work / 'audit-policy.json'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-mode=blocking",
            # No service-account controller creates `default` in time for the first test's pods (envtest does this).
            "--disable-admission-plugins=ServiceAccount",
            # One client, two cores: priority-and-fairness queueing only costs start-up time here.
            "--enable-priority-and-fairness=false"])

    def _write_kubeconfig(self) -> None:
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "kubetune-test",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "kubetune-test", "context": {"cluster": "test", "user": "admin"}}]}))

    def _get(self, path: str) -> int:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, context=ctx, timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as response:
                return json.load(response).get("health") == "true"
        except (OSError, ValueError):
            return False

    def _node_ready(self) -> bool:
        node = self.kubectl("get", "node", GPU_NODE, "-o", "json", check=False)
        if node.returncode:
            return False
        node = json.loads(node.stdout)
        conditions = node.get("status", {}).get("conditions", [])
        tainted = any(t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", []))
        return not tainted and any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _wait(self, check: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    tail = (self.logs / f"{name}.log").read_text()[-2000:]
                    raise ControlPlaneError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{tail}")
            if check():
                return
            time.sleep(0.25)
        raise ControlPlaneError(f"timed out after {timeout:g} s waiting for {what}; logs:\n{self.log_paths()}")


def gpu_node() -> dict:
    """A node kwok keeps Ready: 8 GPUs, big enough for any test Job, labelled like a GPU node pool."""
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "1Ti"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": GPU_NODE, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"kubernetes.io/hostname": GPU_NODE, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok",
                                    "nvidia.com/gpu.present": "true"}},
            "spec": {},
            "status": {"capacity": capacity, "allocatable": capacity}}
