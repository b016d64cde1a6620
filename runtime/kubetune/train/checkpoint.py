"""Checkpoints: `work_dir/iter_N/` with the weights (the adapter only, for LoRA), optimizer, scheduler, scaler, every
rank's RNG state and the data position. Written to a temporary directory and renamed, so a half-written checkpoint
is never picked up; `last_checkpoint` names the newest; only the newest `keep` stay."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(work_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any, scaler: Any, state: dict[str, Any],
         rank: int, world: int, keep: int, barrier: Any, engine: Any = None, ds_config: Any = None) -> Path:
    """Every rank writes its RNG state (and, under DeepSpeed, its optimizer partition); rank 0 writes the rest and
    publishes the checkpoint. The work dir may be shared (one file system) or per node (a pod's emptyDir): then each
    node keeps its own ranks' files and its first rank publishes them."""
    import torch

    from . import ds

    final = work_dir / f"iter_{step}"
    tmp = work_dir / f".iter_{step}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    tmp.mkdir(parents=True, exist_ok=True)  # on a node that does not share rank 0's file system
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    unwrapped = getattr(model, "module", model)
    whole = None
    if engine is not None:
        ds.save(engine, tmp / "deepspeed")
        adapters = hasattr(getattr(unwrapped, "llm", unwrapped), "peft_config")  # a reward model wraps its LM
        whole = ds.consolidated_state_dict(engine, ds_config, trainable_only=adapters)
    if rank == 0:
        unwrapped.save_pretrained(tmp / "model", safe_serialization=True,
                                  **({"state_dict": whole} if whole is not None else {}))
        if engine is None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        (tmp / STATE).write_text(json.dumps({**state, "step": step, "world_size": world}, indent=2))
    barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (work_dir / "last_checkpoint").write_text(str(final) + "\n")
        prune(work_dir, keep)
    barrier()
    if rank != 0 and os.environ.get("LOCAL_RANK", "0") == "0" and tmp.exists():  # another node's own copy
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(work_dir, keep)
    return final


def complete(path: Path) -> bool:
    return (path / STATE).is_file() and (path / "model").is_dir()


def checkpoints(work_dir: Path) -> list[Path]:
    found = [p for p in work_dir.glob("iter_*") if p.is_dir() and p.name[5:].isdigit() and complete(p)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def prune(work_dir: Path, keep: int) -> None:
    if keep < 0:
        return
    for old in checkpoints(work_dir)[:-keep] if keep else []:
        shutil.rmtree(old, ignore_errors=True)


def find_resume(work_dir: Path, resume: str | None, remote: str | None = None, fetch: bool = True,
                barrier: Any = lambda: None) -> Path | None:
    """`auto` → the newest complete checkpoint, local or remote (a newer remote one is downloaded first; None when
    there is none); a path or s3:// URI → that one. Only `fetch` ranks download; the others wait at the barrier."""
    if not resume:
        return None
    if resume.startswith("s3://") or (resume == "auto" and remote):
        if fetch:
            _fetch_remote(work_dir, resume, remote)
        barrier()
        if resume.startswith("s3://"):
            resume = str(work_dir / resume.rstrip("/").rpartition("/")[2])
    if resume == "auto":
        found = checkpoints(work_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not complete(path):
        raise FileNotFoundError(f"--resume {resume}: not a complete kubetune checkpoint (no {STATE} or model/)")
    return path


def load(path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any, rank: int,
         engine: Any = None) -> dict[str, Any]:
    import torch

    from . import ds

    if engine is not None:
        ds.load(engine, path / "deepspeed")  # trainable weights and optimizer partitions
    else:
        load_weights(path, getattr(model, "module", model))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
    rng = path / f"rng_rank{rank}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    return json.loads((path / STATE).read_text())


def load_weights(path: Path, unwrapped: Any) -> None:
    weights = path / "model"
    if hasattr(unwrapped, "projector"):  # LLaVA: its own layout of projector, adapters or LLM
        from kubetune.vision.model import load_trained

        return load_trained(weights, unwrapped)
    if hasattr(unwrapped, "v_head"):  # a reward model: its head, then its language model as usual
        from .reward import load_head

        load_head(weights, unwrapped)
        unwrapped = unwrapped.llm
    if hasattr(unwrapped, "peft_config"):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(unwrapped, load_file(str(weights / "adapter_model.safetensors")))
    else:
        from safetensors.torch import load_file

        state: dict[str, Any] = {}
        for shard in sorted(weights.glob("*.safetensors")):
            if shard.name != "reward_head.safetensors":
                state.update(load_file(str(shard)))
        missing, unexpected = unwrapped.load_state_dict(state, strict=False)
        if unexpected:
            raise RuntimeError(f"{path}: unexpected weights {unexpected[:5]}")


def _fetch_remote(work_dir: Path, resume: str, remote: str | None) -> None:
    from kubetune.storage import s3, sync

    if resume.startswith("s3://"):
        base, _, name = resume.rstrip("/").rpartition("/")
        if not (name.startswith("iter_") and name[5:].isdigit()):
            raise FileNotFoundError(f"--resume {resume}: expected s3://.../iter_N")
        if int(name[5:]) not in sync.remote_checkpoints(s3.S3Uri.parse(base)):
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no matching manifest)")
        sync.download_checkpoint(s3.S3Uri.parse(base), int(name[5:]), work_dir)
        return
    steps = sync.remote_checkpoints(s3.S3Uri.parse(remote))
    local = checkpoints(work_dir)
    if steps and (not local or int(local[-1].name[5:]) < steps[-1]):
        print(f"kubetune: downloading checkpoint iter_{steps[-1]} from {remote}", flush=True)
        sync.download_checkpoint(s3.S3Uri.parse(remote), steps[-1], work_dir)
