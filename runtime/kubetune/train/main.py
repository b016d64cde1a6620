"""`kubetune train`: one fine-tuning run, read top to bottom as named steps."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from . import checkpoint, distributed
from .hooks import EvaluateChat, Metrics, ProgressFile, TextLog, megatron_tflops
from .loop import Run, train
from .model import build_model, count_parameters, resolve_precision, trainable_parameters
from .sampler import ResumableBatches
from .schedule import build_optimizer, build_scheduler


class TrainError(Exception):
    """A configuration this engine cannot run, explained in one line."""


def run(job: Any, work_dir: str | None, resume: str | None, config_name: str) -> int:
    spec = job.spec
    check_supported(spec)
    dist = distributed.init()
    try:
        return _run(job, spec, dist, work_dir, resume, config_name)
    finally:
        distributed.shutdown(dist)


def _run(job: Any, spec: Any, dist: distributed.Dist, work_dir: str | None, resume: str | None, name: str) -> int:
    import torch

    work = Path(work_dir or Path("work_dirs") / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    log = TextLog(work, stamp, spec.training.log_every_steps) if dist.rank == 0 else None
    say = log.write if log else (lambda line: None)
    resume_from = checkpoint.find_resume(work, resume)
    seed = pick_seed(spec, resume_from)
    seed_everything(seed)
    if dist.rank == 0:
        (work / stamp / "config.json").write_text(json.dumps({**job.to_dict(), "resolvedSeed": seed}, indent=2))
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")

    tokenizer, data = build_data(spec, seed, say)
    precision = resolve_precision(spec, device)
    model = build_model(spec, device, precision, seed)
    trainable, total = count_parameters(model)
    say(f"model {spec.model.uri}: {total:,} parameters, {trainable:,} trainable ({spec.method.type.value}); "
        f"device {device}, precision {spec.training.precision.value}")
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if device.type == "cuda" else None)

    batches = ResumableBatches(len(data), spec.training.batch_size, seed, dist.rank, dist.world)
    total_steps = plan_steps(spec, batches)
    optimizer = build_optimizer(trainable_parameters(model), spec.training)
    scheduler = build_scheduler(optimizer, total_steps, spec.training)
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None

    state = {"step": 0, "consumed": 0}
    if resume_from is not None:
        state = checkpoint.load(resume_from, model, optimizer, scheduler, scaler, dist.rank)
        say(f"resumed from {resume_from} at step {state['step']}")
    run_ = Run(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, batches=batches, dataset=data,
               collate=collator(tokenizer, spec), device=device, autocast=precision.autocast,
               accum=spec.training.accumulative_counts, max_norm=spec.training.max_norm, total_steps=total_steps,
               rank=dist.rank, world=dist.world, step=state["step"], consumed=state["consumed"],
               all_reduce=dist.all_reduce)
    run_.should_save = save_policy(spec, batches)
    run_.save = lambda step: checkpoint.save(work, step, model, optimizer, scheduler, scaler,
                                             {"consumed": run_.consumed, "seed": seed, "total_steps": total_steps},
                                             dist.rank, dist.world, spec.checkpoints.keep, dist.barrier)
    if dist.rank == 0:
        run_.hooks = rank0_hooks(spec, tokenizer, work, log)
        say(f"training {total_steps} steps ({spec.training.accumulative_counts} micro-batches of "
            f"{spec.training.batch_size} x {dist.world} rank(s) each) on {len(data)} sequences; work dir {work}")
    from kubetune.model.packed import packed_forward

    train(run_, packed_forward)
    if not run_.should_save(total_steps):
        run_.save(total_steps)
    if dist.rank == 0:
        report_throughput(model, spec, log, work)
        say(f"done: checkpoints in {work}; next: kubetune convert pth_to_hf "
            f"{work / stamp / 'config.json'} {checkpoint.checkpoints(work)[-1]} ./hf_out")
        log.close()
    return 0


def check_supported(spec: Any) -> None:
    if spec.training.deepspeed.value != "none":
        raise TrainError(f"training.deepspeed {spec.training.deepspeed.value}: DeepSpeed is not wired into the engine "
                         "yet (issue #4 continues); use deepspeed: none for plain data parallel")
    if spec.training.sequence_parallel_size > 1:
        raise TrainError("training.sequenceParallelSize > 1: sequence parallelism is not wired into the engine yet")


def pick_seed(spec: Any, resume_from: Path | None) -> int:
    if resume_from is not None:
        return int(json.loads((resume_from / checkpoint.STATE).read_text())["seed"])
    return spec.training.seed if spec.training.seed is not None else random.SystemRandom().randint(0, 2**31 - 1)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_data(spec: Any, seed: int, say: Any) -> tuple[Any, Any]:
    from kubetune.data.pipeline import build, summary
    from kubetune.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec.model)
    built = build(spec.dataset, tokenizer, seed=seed, log=lambda s: None)
    for line in summary(built.report).splitlines():
        say(line)
    sample = built.dataset[0]
    say(f"Num train sequences: {len(built.dataset)}; sequence 0 decoded: "
        f"{tokenizer.decode(sample['input_ids'][:200])!r}")
    return tokenizer, built.dataset


def plan_steps(spec: Any, batches: ResumableBatches) -> int:
    if spec.training.max_steps:
        return spec.training.max_steps
    per_epoch = max(1, batches.batches_per_epoch() // spec.training.accumulative_counts)
    return spec.training.max_epochs * per_epoch


def save_policy(spec: Any, batches: ResumableBatches):
    if spec.checkpoints.by_epoch:
        per_epoch = max(1, batches.batches_per_epoch() // spec.training.accumulative_counts)
        return lambda step: step % per_epoch == 0
    every = spec.checkpoints.every_steps
    return lambda step: step % every == 0


def collator(tokenizer: Any, spec: Any):
    from kubetune.data.collate import collate

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return lambda rows: collate(rows, pad_token_id=pad)


def rank0_hooks(spec: Any, tokenizer: Any, work: Path, log: TextLog) -> list[Any]:
    import os

    hooks: list[Any] = [log, ProgressFile(work)]
    port = os.environ.get("KUBETUNE_METRICS_PORT")
    if port:
        hooks.append(Metrics(int(port)))
    if spec.evaluation.inputs:
        hooks.append(EvaluateChat(spec, tokenizer, work, log))
    return hooks


def report_throughput(model: Any, spec: Any, log: TextLog, work: Path) -> None:
    scalars = (work / log.dir.name / "vis_data" / "scalars.json").read_text().splitlines()
    if not scalars:
        return
    rates = [json.loads(s)["tokens_per_second"] for s in scalars[len(scalars) // 2:]]
    tps = sum(rates) / len(rates)
    cfg = getattr(model, "module", model).config
    cfg = getattr(cfg, "text_config", cfg)
    tflops = megatron_tflops(cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, spec.dataset.max_length, tps,
                             spec.training.gradient_checkpointing)
    log.write(f"throughput: {tps:.0f} tokens/s, {tflops:.4f} TFLOP/s (Megatron formula)")
