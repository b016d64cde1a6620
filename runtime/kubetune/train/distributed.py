"""Process-group set-up, and XTuner's launch rule: NPROC_PER_NODE/NNODES/NODE_RANK/ADDR/PORT re-launch the same
command under torchrun (one pod per node is what the operator sets)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, MutableMapping

from kubetune.errors import RANKS_ENV, ExitCode, UserError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def shares_with_rank0(self, directory: Path) -> bool:
        """Whether `directory` here is rank 0's own (one file system: a shared work volume) rather than a disk of
        this node's: rank 0 leaves a file named by a fresh token, every rank looks for it."""
        token = self.all_gather_object(uuid.uuid4().hex if self.rank == 0 else None)[0]
        probe = directory / f".rank0-{token}"
        if self.rank == 0:
            probe.touch()
        self.barrier()
        seen = probe.exists()
        self.barrier()
        if self.rank == 0:
            probe.unlink()
        return seen

    def all_reduce(self, tensor: Any) -> Any:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor


def relaunch_command(argv: list[str]) -> list[str] | None:
    """The torchrun command to re-run `kubetune argv` under, or None when this process should train itself."""
    if "LOCAL_RANK" in os.environ:  # already a torchrun worker
        return None
    nproc = int(os.environ.get("NPROC_PER_NODE", "1"))
    nnodes = int(os.environ.get("NNODES", "1"))
    if nproc == 1 and nnodes == 1:
        return None
    port = os.environ.get("PORT")
    if not port:
        port = str(random.randint(20000, 29999))
        print(f"kubetune: PORT is not set; using random port {port} for the rendezvous", file=sys.stderr)
    return [sys.executable, "-m", "kubetune.train.torchrun", f"--nnodes={nnodes}",
            f"--node_rank={os.environ.get('NODE_RANK', '0')}", f"--nproc_per_node={nproc}",
            f"--master_addr={os.environ.get('ADDR', '127.0.0.1')}", f"--master_port={port}",
            "-m", "kubetune", *argv]


# The re-launching parent and its torchrun workers share a directory (RANKS_ENV): each worker leaves its pid (so the
# parent can pass SIGTERM straight to it: torchrun's agent would give it 30 s before a SIGKILL, too little for a
# checkpoint) and, when it fails for a classified reason, its exit code (kubetune.errors.say_failure).


def relaunch(argv: list[str]) -> int | None:
    """Run `argv` under torchrun; the exit code says why it failed (kubetune.api.errors.ExitCode), as a single process's
    would: the workers' failure is ours, never exit 0 after a crash."""
    command = relaunch_command(argv)
    if command is None:
        return None
    with tempfile.TemporaryDirectory(prefix="kubetune-ranks-") as ranks:
        proc = subprocess.Popen(command, env={**os.environ, RANKS_ENV: ranks})
        asked: list[int] = []

        def forward(signum: int, frame: Any) -> None:
            asked.append(signum)
            for pid in _worker_pids(Path(ranks)) or [proc.pid]:  # workers still starting: torchrun stops them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        return outcome(code, _recorded_exits(Path(ranks)), stopped=bool(asked))


def outcome(code: int, recorded: list[int], stopped: bool) -> int:
    """The gang's exit code: a rank's own classified failure first (a config, data or memory error is the cause;
    its peers only lost it), then a stop on request, else torchrun's."""
    if code == 0:
        return 0
    for cause in (ExitCode.USER_ERROR, ExitCode.OUT_OF_MEMORY):
        if cause in recorded:
            return cause
    if stopped or ExitCode.PREEMPTED in recorded:
        return ExitCode.PREEMPTED
    return code if code > 0 else ExitCode.ERROR


def register_worker() -> None:
    """A torchrun worker of `relaunch` leaves its pid for the parent."""
    ranks = os.environ.get(RANKS_ENV)
    if ranks and "LOCAL_RANK" in os.environ:
        (Path(ranks) / f"{os.environ['LOCAL_RANK']}.pid").write_text(str(os.getpid()))


def _worker_pids(ranks: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(ranks.glob("*.pid")) if p.read_text().strip().isdigit()]


def _recorded_exits(ranks: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(ranks.glob("*.exit")) if p.read_text().strip().isdigit()]


def from_slurm(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """`--launcher slurm` (an `srun` that starts one process per GPU): the torch.distributed variables from Slurm's,
    as mmengine's slurm launcher sets them for XTuner. RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK =
    SLURM_LOCALID, MASTER_ADDR = the first host of SLURM_NODELIST, MASTER_PORT = MASTER_PORT, PORT (XTuner's) or
    29500; variables already set are kept. Returns what was set."""
    env: MutableMapping[str, str] = os.environ if environ is None else environ
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_NODELIST") if not env.get(k)]
    if missing:
        raise UserError(f"--launcher slurm: {', '.join(missing)} not set; start the command with srun (one task per "
                        "GPU), or use --launcher none with NPROC_PER_NODE/NNODES")
    proc = int(env["SLURM_PROCID"])
    wanted = {"RANK": str(proc), "WORLD_SIZE": env["SLURM_NTASKS"],
              "LOCAL_RANK": env.get("SLURM_LOCALID") or str(proc % max(1, _gpus())),
              "MASTER_ADDR": first_host(env["SLURM_NODELIST"]),
              "MASTER_PORT": env.get("PORT") or "29500"}
    set_now = {k: v for k, v in wanted.items() if not env.get(k)}
    env.update(set_now)
    return set_now


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list ("gpu[07-09,12],cpu01" -> "gpu07"; "r[1-2]-n[003-004]" -> "r1-n003")."""
    first, depth = "", 0
    for ch in nodelist:
        if ch == "," and depth == 0:
            break
        depth += ch == "["
        depth -= ch == "]"
        first += ch
    host, rest = "", first
    while "[" in rest:
        head, _, tail = rest.partition("[")
        inner, _, rest = tail.partition("]")
        host += head + inner.split(",")[0].split("-")[0]
    return host + rest


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def init(deepspeed: bool = False) -> Dist:
    """Join the process group torchrun describes. DeepSpeed wants one even for a single process, created through
    its own `comm` layer (which its config checks read the world size from)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 and not deepspeed:
        return Dist()
    if world == 1:
        # A lone process: describe a one-member group, else DeepSpeed goes looking for MPI (mpi4py).
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                           ("MASTER_PORT", str(random.randint(20000, 29999)))):
            os.environ.setdefault(key, value)
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend)
    else:
        dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), local_rank=local_rank, world=dist.get_world_size())


def shutdown(d: Dist) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
