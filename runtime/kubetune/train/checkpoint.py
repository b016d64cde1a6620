"""Checkpoints: `work_dir/iter_N/` with the weights (the adapter only, for LoRA), optimizer, scheduler, scaler, every
rank's RNG state and the data position. Written to a temporary directory and renamed, so a half-written checkpoint
is never picked up; `last_checkpoint` names the newest; only the newest `keep` stay.

A checkpoint may come from a bucket or volume that someone else can write, so reading one runs no code: state is
read with `torch.load(weights_only=True)` (tensors and plain containers only), DeepSpeed's own files are scanned
against an allow-list before DeepSpeed reads them, and the manifest's sizes and sha256 are checked first."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kubetune.storage import sync, xtuner_checkpoint_alias
from kubetune.storage.archives import unbounded

from .errors import TrainError

STATE = "trainer_state.json"


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain numbers, so that it loads with weights_only=True."""
    import numpy as np
    import torch

    version, keys, gauss = random.getstate()
    legacy: Any = np.random.get_state()  # (kind, keys, pos, has_gauss, cached)
    kind, np_keys, pos, has_gauss, cached = legacy
    state = {"python": {"version": version, "state": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpointer:
    """What saving and restoring a run needs, in one place: where, how many stay, which rank this is, the
    DeepSpeed engine (it saves its own partitions) and whether only the adapters' weights are written."""

    work_dir: Path
    keep: int
    rank: int
    world: int
    barrier: Callable[[], None]
    seed: int
    total_steps: int
    adapters_only: bool = False  # LoRA: the consolidated DeepSpeed state holds just the trainable weights
    save_optimizer: bool = True  # checkpoints.saveOptimizer
    engine: Any = None
    ds_config: Any = None
    uploads: Any = None  # a CheckpointSync (rank 0, with a remote checkpoints.uri)
    gather: Callable[[Any], list[Any]] = lambda obj: [obj]  # every rank's object, in rank order (Dist)

    def save(self, run: Any, count: int | None = None) -> Path:
        """Checkpoint the run's state as `iter_<count>` (default: its optimizer step)."""
        path = _save(self, run, run.step if count is None else count)
        if self.uploads:
            self.uploads.submit(path)
        return path

    def restore(self, path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any) -> dict[str, Any]:
        return load(path, model, optimizer, scheduler, scaler, self.rank, self.engine)


def _save(ck: Checkpointer, run: Any, count: int) -> Path:
    """Every rank writes its RNG state (and, under DeepSpeed, its optimizer partition); rank 0 writes the rest and
    publishes the checkpoint. The work dir may be shared (one file system) or per node (a pod's emptyDir): then each
    node keeps its own ranks' files and its first rank publishes them."""
    import torch

    from . import ds

    final = ck.work_dir / f"iter_{count}"
    tmp = ck.work_dir / f".iter_{count}.tmp"
    if ck.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ck.barrier()
    try:
        tmp.mkdir(parents=True, exist_ok=True)  # on a node that does not share rank 0's file system
        # Every rank's generators, written by rank 0: what it publishes is the whole checkpoint even when each node
        # has its own disk (a pod's emptyDir), so a gang on fresh pods resumes every rank exactly.
        states = ck.gather(rng_state())
        if ck.rank == 0:
            for rank, state in enumerate(states):
                torch.save(state, tmp / f"rng_rank{rank}.pt")
        unwrapped = getattr(run.model, "module", run.model)
        whole = None
        if ck.engine is not None:
            ds.save(ck.engine, tmp / "deepspeed")
            whole = ds.consolidated_state_dict(ck.engine, ck.ds_config, trainable_only=ck.adapters_only)
        if ck.rank == 0:
            unwrapped.save_pretrained(tmp / "model", safe_serialization=True,
                                      **({"state_dict": whole} if whole is not None else {}))
            stable_adapter_configs(tmp / "model")
            if ck.engine is None and ck.save_optimizer:
                torch.save(run.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(run.scheduler.state_dict(), tmp / "scheduler.pt")
            if run.scaler is not None:
                torch.save(run.scaler.state_dict(), tmp / "scaler.pt")
            state = {"consumed": run.consumed, "seed": ck.seed, "total_steps": ck.total_steps, "step": run.step,
                     "world_size": ck.world, "epoch": run.epoch}  # the epoch: XTuner's epoch_N.pth names it
            (tmp / STATE).write_text(json.dumps(state, indent=2))
        ck.barrier()
        if ck.rank == 0:
            # Last, after every rank's files: what resume and the uploads check (on a per-node disk it lists this
            # node's).
            (tmp / sync.MANIFEST).write_text(json.dumps(sync.manifest(tmp), indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            (ck.work_dir / "last_checkpoint").write_text(str(final) + "\n")
            prune(ck.work_dir, ck.keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a save cut short (a full disk) must not keep what space it took
        raise
    ck.barrier()
    if ck.rank != 0 and os.environ.get("LOCAL_RANK", "0") == "0" and tmp.exists():  # another node's own copy
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        prune(ck.work_dir, ck.keep)
    return final


def stable_adapter_configs(directory: Path) -> None:
    """PEFT writes `target_modules` from a set, in an order that changes with each process's hash seed: sorted, the
    same run writes the same bytes (checkpoints and exports compare equal, here and in a cluster)."""
    for path in directory.rglob("adapter_config.json"):
        config = json.loads(path.read_text())
        modules = config.get("target_modules")
        if isinstance(modules, list) and modules != sorted(modules):
            config["target_modules"] = sorted(modules)
            path.write_text(json.dumps(config, indent=2, sort_keys=True))  # as PEFT writes it


def has_adapters(model: Any) -> bool:
    """Whether the trainable weights are adapters (a reward model or LLaVA wraps its language model)."""
    unwrapped = getattr(model, "module", model)
    return hasattr(getattr(unwrapped, "llm", unwrapped), "peft_config")


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
        for path in reversed(checkpoints(work_dir)):
            if (path / sync.MANIFEST).is_file() and sync.verify(path):
                return path
            print(f"kubetune: {path} has no {sync.MANIFEST} or does not match it (damaged); trying an older "
                  "checkpoint", flush=True)
        return None
    path = Path(resume)
    if not path.exists():
        path = xtuner_checkpoint_alias(path) or path
    if not complete(path):
        raise FileNotFoundError(f"--resume {resume}: not a complete kubetune checkpoint (no {STATE} or model/)")
    if not (path / sync.MANIFEST).is_file():  # the manifest is written last: without it nothing vouches for the rest
        raise TrainError(f"--resume {resume}: no {sync.MANIFEST} (a checkpoint cut before it was published, or "
                         "altered); resume from another one")
    if not sync.verify(path):
        raise TrainError(f"--resume {resume}: files differ from its {sync.MANIFEST} (sizes or sha256): the "
                         "checkpoint is damaged or was altered; resume from another one")
    return path


def load(path: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any, rank: int,
         engine: Any = None) -> dict[str, Any]:
    from safetensors import SafetensorError

    from . import ds

    try:
        if engine is not None:
            ds.load(engine, path / "deepspeed")  # trainable weights and optimizer partitions
        else:
            load_weights(path, getattr(model, "module", model))
            if (path / "optimizer.pt").exists():  # absent: written with checkpoints.saveOptimizer false
                optimizer.load_state_dict(read_state(path / "optimizer.pt"))
        scheduler.load_state_dict(read_state(path / "scheduler.pt"))
        if scaler is not None and (path / "scaler.pt").exists():
            scaler.load_state_dict(read_state(path / "scaler.pt"))
    except TrainError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as exc:
        # A manifest vouches for bytes, not for what they mean: a well-formed but wrong file still stops here.
        raise TrainError(f"{path}: cannot resume from it: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                         ) from None
    rng = path / f"rng_rank{rank}.pt"
    if rng.exists():
        set_rng_state(read_state(rng))
    return {**read_trainer_state(path), "optimizer_restored": engine is not None or (path / "optimizer.pt").exists()}


def read_state(path: Path) -> Any:
    """Tensors and plain containers only: a pickle that names any other global is refused, not run."""
    import pickle

    import torch

    why = unbounded(path)
    if why is not None:
        raise TrainError(f"{path}: {why}; refusing to resume from it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise TrainError(f"{path}: not loadable as plain tensors ({first}); refusing to resume from it (a "
                         "checkpoint from an older kubetune, a damaged file, or one that tries to run code)") from None


def read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / STATE).read_text())
    except ValueError as exc:
        raise TrainError(f"{path / STATE}: not JSON ({exc})") from None
    for key in ("step", "consumed"):
        if not isinstance(state.get(key), int) or isinstance(state.get(key), bool) or state[key] < 0:
            raise TrainError(f"{path / STATE}: {key} must be a non-negative integer, got {state.get(key)!r}")
    return state


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

        adapter = finite(load_file(str(weights / "adapter_model.safetensors")), weights)
        result = set_peft_model_state_dict(unwrapped, adapter)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise TrainError(f"{weights}: the adapter has weights this model's adapter does not ({unexpected[:3]}): "
                             "it was trained with another base model or other lora.targetModules")
    else:
        from safetensors.torch import load_file

        state: dict[str, Any] = {}
        for shard in sorted(weights.glob("*.safetensors")):
            if shard.name != "reward_head.safetensors":
                state.update(load_file(str(shard)))
        missing, unexpected = unwrapped.load_state_dict(finite(state, weights), strict=False)
        if unexpected:
            raise TrainError(f"{path}: unexpected weights {unexpected[:5]}")


def finite(state: dict[str, Any], where: Path) -> dict[str, Any]:
    import torch

    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise TrainError(f"{where}: weight {name} holds NaN or inf; refusing to resume from it")
    return state


def _fetch_remote(work_dir: Path, resume: str, remote: str | None) -> None:
    from kubetune.storage import s3

    if resume.startswith("s3://"):
        base, _, name = resume.rstrip("/").rpartition("/")
        if not (name.startswith("iter_") and name[5:].isdigit()):
            raise FileNotFoundError(f"--resume {resume}: expected s3://.../iter_N")
        if int(name[5:]) not in sync.remote_checkpoints(s3.S3Uri.parse(base)):
            raise FileNotFoundError(f"--resume {resume}: not a complete checkpoint (no matching manifest)")
        sync.download_checkpoint(s3.S3Uri.parse(base), int(name[5:]), work_dir)
        return
    assert remote is not None  # `auto` fetches only when there is a remote copy
    store = sync.store(remote)
    steps = store.steps()
    local = checkpoints(work_dir)
    if steps and (not local or int(local[-1].name[5:]) < steps[-1]):
        print(f"kubetune: fetching checkpoint iter_{steps[-1]} from {remote}", flush=True)
        store.fetch(steps[-1], work_dir)
