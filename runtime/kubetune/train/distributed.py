"""Process-group set-up, and XTuner's launch rule: NPROC_PER_NODE/NNODES/NODE_RANK/ADDR/PORT re-launch the same
command under torchrun (one pod per node is what the operator sets)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

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
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--node_rank={os.environ.get('NODE_RANK', '0')}", f"--nproc_per_node={nproc}",
            f"--master_addr={os.environ.get('ADDR', '127.0.0.1')}", f"--master_port={port}",
            "-m", "kubetune", *argv]


def relaunch(argv: list[str]) -> int | None:
    command = relaunch_command(argv)
    if command is None:
        return None
    return subprocess.run(command).returncode  # the workers' failure is ours: never exit 0 after a crash


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
