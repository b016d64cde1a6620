"""`kubetune train CONFIG`: validate the config, re-launch under torchrun when asked, run the engine."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.configs import PRESETS as DEEPSPEED

from .common import add_cfg_options, announce_local_differences, load_config
from kubetune.errors import ExitCode, KubetuneError, OutOfMemory, Preempted

from .errors import UserError

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJob


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description="Fine-tune an LLM from a FineTuneJob manifest, a bare spec "
                       "or a predefined config name. Distributed: set NPROC_PER_NODE, NNODES, NODE_RANK, ADDR, PORT "
                       "or run under torchrun.")
    p.add_argument("config", help="FineTuneJob YAML/JSON (manifest or bare spec), or a predefined config name")
    p.add_argument("--work-dir", default=None, help="directory for logs and checkpoints "
                   "(default: ./work_dirs/<metadata.name>, or as XTuner, <the config file's stem> for a .py or a "
                   "predefined config)")
    p.add_argument("--deepspeed", default=None, metavar="PRESET|FILE",
                   help=f"DeepSpeed preset ({', '.join(DEEPSPEED)}, also as deepspeed_zero2 etc.) or a JSON file")
    p.add_argument("--resume", default=None, metavar="CKPT|auto",
                   help="resume from a checkpoint directory, or `auto` for the newest complete one (local or remote)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides training.seed)")
    p.add_argument("--no-export", action="store_true", help="skip spec.export after training (the operator's pods "
                   "do: its export ConvertJobs convert once the whole gang succeeded)")
    add_cfg_options(p)
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none",
                   help="how the processes were started: slurm reads SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and "
                   "SLURM_NODELIST (one srun task per GPU; MASTER_PORT or PORT, else 29500); pytorch is set by the "
                   "torchrun re-launch")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.train.stop import StopRequest

    stop = StopRequest().install()  # a pod stopped while it starts exits PREEMPTED, not as a crash
    overrides = list(args.cfg_options)
    deepspeed_file = None
    if args.deepspeed:
        preset = args.deepspeed.removeprefix("deepspeed_")
        if preset in DEEPSPEED:
            overrides.append(f"training.deepspeed={preset}")
        elif not args.deepspeed.endswith(".json"):
            raise UserError(f"--deepspeed {args.deepspeed}: not a preset ({', '.join(DEEPSPEED)}) or a .json file")
        else:
            deepspeed_file = str(Path(args.deepspeed).resolve())
            overrides.append(f"training.deepspeed={preset_of(deepspeed_file)}")
    if args.seed is not None:
        overrides.append(f"training.seed={args.seed}")
    job = load_config(args.config, overrides)  # validate before anything is launched
    from kubetune.train import distributed

    announce_local_differences(job)
    keep_config(job, args)
    if args.launcher == "slurm":  # srun started every rank: join them, no re-launch
        distributed.from_slurm()
    code = distributed.relaunch(getattr(args, "argv", None) or sys.argv[1:])
    if code is not None:
        stop.uninstall()
        if code != 0:
            raise _ranks_failed(code)
        return export(job, args)
    from kubetune.train.main import run as train

    try:
        train(job, args.work_dir, args.resume, _name(job, args), deepspeed_file, stop)
        stop.uninstall()
        return export(job, args)
    except OSError as exc:  # a full disk is the user's to fix; other OS errors are bugs or are said by their layer
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise _disk_full(exc) from None
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and _write_failed(exc):
            raise _disk_full(exc) from None
        if isinstance(exc, RuntimeError) and not _out_of_memory(exc):
            raise
        raise OutOfMemory(f"out of memory ({' '.join(str(exc).split())[:160] or type(exc).__name__}): lower "
                        "training.batchSize or dataset.maxLength, enable training.gradientCheckpointing, use method "
                        "qlora, or a DeepSpeed preset with offload (zero2_offload, zero3_offload)") from None


def keep_config(job: FineTuneJob, args: argparse.Namespace) -> None:
    """The config as given, copied into the work dir as XTuner does (`<work_dir>/<config file name>`; a predefined
    config's name gets its resolved manifest); `<timestamp>/config.json` beside the log is the resolved run."""
    if os.environ.get("RANK", "0") != "0":
        return
    from kubetune.train.main import work_path

    work = work_path(args.work_dir, _name(job, args))
    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.config)
    if source.is_file():
        if source.resolve() != (work / source.name).resolve():
            shutil.copyfile(source, work / source.name)
        return
    import yaml

    (work / f"{args.config}.yaml").write_text(yaml.safe_dump(job.to_dict(), sort_keys=False))


def _ranks_failed(code: int) -> KubetuneError:
    """The torchrun gang's failure, with the exit code that says why (each rank said its own error above)."""
    if code == ExitCode.PREEMPTED:
        return Preempted("stopped by SIGTERM: every rank finished its step and the checkpoint of it was written; "
                         "rerun with --resume auto to continue from it")
    failed = KubetuneError(f"training failed on at least one rank (exit code {code}; its error is above)")
    failed.exit_code = code
    return failed


def _name(job: FineTuneJob, args: argparse.Namespace) -> str:
    # An XTuner config or a predefined config's name: the work dir is named as XTuner names it (the config's stem,
    # underscores and all); a manifest names its run itself.
    if not args.config.endswith((".yaml", ".yml", ".json")):
        return Path(args.config).stem
    return job.metadata.name or Path(args.config).stem


def export(job: FineTuneJob, args: argparse.Namespace) -> int:
    """`spec.export`, once, by the process that saw the whole run succeed (rank 0, or torchrun's parent)."""
    first = os.environ.get("RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"  # one node's parent exports
    if args.no_export or not first or not (job.spec.export.adapter or job.spec.export.merge):
        return 0
    from kubetune.api.convert import export_specs

    if not export_specs(job.metadata.name or "local", job.spec):
        print("note: spec.export skipped: it needs checkpoints.uri (where the artifacts go), as in a cluster",
              file=sys.stderr)
        return 0
    from kubetune.convert.job import export_trained
    from kubetune.train.main import final_checkpoint

    written = export_trained(job, final_checkpoint(args.work_dir, _name(job, args)))
    print("exported: " + ", ".join(f"{which} {uri}" for which, uri in written.items()))
    return 0


def _write_failed(exc: RuntimeError) -> bool:
    # torch.save reports a full disk from its C++ writer, without an errno, and in words that depend on where the
    # write stopped (a record, the zip's central directory, the stream's final flush).
    text = str(exc)
    return any(words in text for words in ("No space left on device", "file write failed", "unexpected pos",
                                           "iostream error"))


def _disk_full(exc: BaseException) -> UserError:
    where = getattr(exc, "filename", None)
    return UserError(f"no space left on device{f' writing {where}' if where else ''}: free space or give --work-dir "
                     "(and KUBETUNE_CACHE) a larger volume, then resume with --resume auto; a checkpoint cut short "
                     "by this is never used (each is written aside and renamed when complete)")


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def preset_of(path: str) -> str:
    """The preset a DeepSpeed JSON file corresponds to (for the spec's validation rules); the file itself is used."""
    import json

    try:
        config = json.loads(Path(path).read_text())
        zero = config.get("zero_optimization", {})
        stage = int(zero.get("stage", 0))
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"--deepspeed {path}: not a readable DeepSpeed JSON object ({exc})") from None
    if stage not in (1, 2, 3):
        raise UserError(f"--deepspeed {path}: zero_optimization.stage must be 1, 2 or 3 (got {stage})")
    offload = "offload_optimizer" in zero or "offload_param" in zero
    return f"zero{stage}" + ("_offload" if offload and stage > 1 else "")
