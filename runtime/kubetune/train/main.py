"""`kubetune train`: one fine-tuning run, read top to bottom as named steps."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.model.attention import training_attention
from kubetune.model.packed import SPLIT, accepts_logits_mask, choose_packing, packed_forward
from kubetune.storage import local_destination
from kubetune.storage.sync import CheckpointSync

from . import checkpoint, distributed, ds, lm_head, sequence_parallel
from .errors import TrainError
from .hooks import TextLog
from .loop import Run, train
from .objectives import router_aux_coef, sft
from .profile import Phases
from .targets import with_targets
from .model import build_model, count_parameters, resolve_precision, trainable_parameters
from .sampler import ResumableBatches
from .schedule import build_optimizer, build_scheduler
from .stop import StopRequest, stopped
from .clock import Clock
from .steps import (build_data, collator, hooks_for, objective_for, pick_seed, report_throughput, sampling_order,
                    save_policy, seed_everything)

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJob, FineTuneJobSpec

__all__ = ["run", "final_checkpoint", "TrainError"]


def run(job: FineTuneJob, work_dir: str | None, resume: str | None, config_name: str,
        deepspeed_file: str | None = None, stop: StopRequest | None = None) -> int:
    spec = job.spec
    uses_deepspeed = spec.training.deepspeed.value != "none" or deepspeed_file is not None
    stop = stop or StopRequest().install()
    distributed.register_worker()
    dist = distributed.init(deepspeed=uses_deepspeed)
    try:
        return _run(job, spec, dist, work_dir, resume, config_name, uses_deepspeed, deepspeed_file, stop)
    finally:
        distributed.shutdown(dist)


def _run(job: FineTuneJob, spec: FineTuneJobSpec, dist: distributed.Dist, work_dir: str | None, resume: str | None, name: str,
         uses_deepspeed: bool, deepspeed_file: str | None, stop: StopRequest) -> int:
    import torch

    phases = Phases.from_env()
    # 1. Work dir, log, seed.
    work = work_path(work_dir, name)
    work.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d_%H%M%S")
    log = TextLog(work, stamp, spec.training.log_every_steps) if dist.rank == 0 else None
    say = log.write if log else (lambda line: None)
    remote = checkpoint_destination(spec.checkpoints.uri, work)
    # One download per file system: each node's first rank, unless the work dir is rank 0's too (a shared volume).
    shared = dist.shares_with_rank0(work)  # every rank takes part
    fetch = dist.local_rank == 0 and (dist.rank == 0 or not shared)
    resume_from = checkpoint.find_resume(work, resume, remote, fetch=fetch, barrier=dist.barrier)
    # Rank 0's: an unset seed is drawn once, or each rank would shuffle (and split sequences) its own way, as
    # XTuner's runner syncs its drawn seed.
    seed = dist.all_gather_object(pick_seed(spec, resume_from))[0]
    seed_everything(seed, spec.training.deterministic)
    if dist.rank == 0:
        # The resolved seed goes into the spec, so this file is a valid manifest that reruns the same run (and the
        # config `convert pth_to_hf` takes, as the last log line suggests).
        resolved = job.to_dict()
        resolved["spec"]["training"] = {**resolved["spec"].get("training", {}), "seed": seed}
        (work / stamp / "config.json").write_text(json.dumps(resolved, indent=2))
    device = torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    phases.device = device
    phases.mark("start-up: work dir, resume point, seed")

    # 2. Parallel layout: sequence-parallel groups, data-parallel rank, DeepSpeed config.
    sp_size = spec.training.sequence_parallel_size
    sp = sequence_parallel.setup(sp_size, dist.rank, dist.world) if sp_size > 1 else None
    dp_rank, dp_world = dist.rank // sp_size, dist.world // sp_size
    precision = resolve_precision(spec, device)
    ds_config = None
    if uses_deepspeed:
        ds_config = ds.resolve(ds.load_config(spec.training.deepspeed.value, deepspeed_file), spec.training,
                               precision.autocast, dist.world, say)
        precision = precision.handed_to_deepspeed()

    # 3. Tokenizer, data, model.
    tokenizer, data = build_data(spec, seed, say)
    phases.mark("start-up: tokenizer and data")
    zero3 = ds.zero3_init(ds_config) if ds_config else None  # partitions weights while they load
    attention = sequence_parallel.ATTENTION if sp else training_attention(spec.model.attn_implementation, device)
    model = build_model(spec, device, precision, seed, attn_implementation=attention, say=say)
    # The probe runs a forward: not over ZeRO-3's partitioned weights, nor with the sequence-parallel attention.
    packs = spec.dataset.pack_to_max_length or spec.method.is_preference  # a preference pair shares its row
    if choose_packing(model, model.config.model_type, say, zero3 is None and not sp, packs) == SPLIT and sp:
        raise TrainError(f"training.sequenceParallelSize {sp_size}: {model.config.model_type} has layers that carry "
                         "state along the sequence, which sequence parallel would cut between ranks; set it to 1")
    if spec.model.vision:  # LLaVA: the image encoder and projector join the LLM, frozen as the stage says
        from kubetune.vision.train import with_vision

        model = with_vision(spec, model, device, precision, seed)
    head = lm_head.choose(spec.training.loss_kernel, spec, model, device, say)
    forward = sequence_parallel.forward if sp else packed_forward
    model, objective, prepare_pairs = objective_for(spec, model, tokenizer, seed, head, forward)
    del zero3
    phases.mark("start-up: model")
    trainable, total = count_parameters(model)
    method = spec.method.type.value + (f", {spec.method.scheme}" if spec.method.is_preference else "")
    say(f"model {spec.model.uri}: {total:,} parameters, {trainable:,} trainable ({method}); "
        f"device {device}, precision {spec.training.precision.value}"
        + (f", DeepSpeed ZeRO-{ds.stage(ds_config)}" if ds_config else "")
        + (f", sequence parallel x{sp_size}" if sp else ""))

    # 4. Batches, optimizer, schedule; the data-parallel wrapper or the DeepSpeed engine.
    batches = ResumableBatches(len(data), spec.training.batch_size, seed, dp_rank, dp_world,
                               shuffle=spec.training.shuffle, order=sampling_order(spec, data, dp_world))
    clock = Clock.plan(spec, batches.batches_per_epoch())
    total_steps = clock.steps
    optimizer = build_optimizer(trainable_parameters(model), spec.training)
    scheduler = build_scheduler(optimizer, clock, spec.training)
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    engine = ds.initialize(model, optimizer, ds_config) if ds_config else None
    if engine is not None:
        model = engine
    elif dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if device.type == "cuda" else None)

    # 5. Resume: weights, optimizer, schedule, RNG and the data position, without replaying the data.
    checkpointer = checkpoint.Checkpointer(
        work, spec.checkpoints.keep, dist.rank, dist.world, dist.barrier, seed, total_steps,
        adapters_only=checkpoint.has_adapters(model), engine=engine, ds_config=ds_config,
        save_optimizer=spec.checkpoints.save_optimizer,
        uploads=CheckpointSync(remote, spec.checkpoints.keep, say) if remote and dist.rank == 0 else None,
        gather=dist.all_gather_object)
    state = {"step": 0, "consumed": 0}
    if resume_from is not None:
        state = checkpointer.restore(resume_from, model, optimizer, scheduler, scaler)
        if not 0 <= state["step"] <= total_steps:
            raise TrainError(f"{resume_from}: its step {state['step']} is outside this run's 0..{total_steps} "
                             "steps (raise training.maxSteps/epochs to train on, or resume another checkpoint)")
        say(f"resumed from {resume_from} at step {state['step']}" + (
            "" if state["optimizer_restored"] else " (no optimizer state in it, written with checkpoints."
            "saveOptimizer false: the optimizer starts afresh)"))

    phases.mark("start-up: optimizer, parallel wrapper, resume")

    # 6. The loop, its checkpoints and hooks.
    objective = objective or sft(forward, router_aux_coef(model), head)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep = accepts_logits_mask(getattr(model, "module", model))
    prepare = ((lambda b: sequence_parallel.shard_pairs(b, sp, pad, keep)) if sp and prepare_pairs
               else (lambda b: sequence_parallel.shard(b, sp, pad, keep)) if sp
               else (lambda b: prepare_pairs(b, keep)) if prepare_pairs else (lambda b: with_targets(b, keep)))
    run_ = Run(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, batches=batches, dataset=data,
               collate=collator(tokenizer, spec, data), prepare=prepare, objective=objective, device=device,
               autocast=precision.autocast, clock=clock, max_norm=spec.training.max_norm, rank=dist.rank,
               world=dist.world, step=state["step"], consumed=state["consumed"], checkpointer=checkpointer,
               saves=save_policy(spec, clock), hooks=hooks_for(dist.rank, spec, tokenizer, work, log),
               all_reduce=dist.all_reduce, engine=engine, stop=stop, phases=phases)
    if dist.rank == 0:
        say(f"training {total_steps} optimizer steps ({clock.iterations} micro-batches of "
            f"{spec.training.batch_size} x {dp_world} data-parallel rank(s), {spec.training.accumulative_counts} a "
            f"step) on {len(data)} sequences; work dir {work}")
    train(run_)
    if run_.stopped and clock.count(run_.step) not in run_.saves(run_.step):  # where the stop came, in the unit
        with phases("checkpoint"):
            checkpointer.save(run_, clock.count(run_.step))

    # 7. Finish uploads, report, point at the next step.
    if checkpointer.uploads:
        checkpointer.uploads.finish()
    if run_.stopped:  # every rank leaves once the checkpoint is published: a peer's exit must not cut it short
        dist.barrier()
        if log is not None:
            log.close()
        raise stopped(run_.step, total_steps, str(work / f"iter_{clock.count(run_.step)}"))
    if log is not None:  # rank 0
        report_throughput(model, spec, log, work)
        say(f"done: checkpoints in {work}; next: kubetune convert pth_to_hf "
            f"{work / stamp / 'config.json'} {checkpoint.checkpoints(work)[-1]} ./hf_out")
        log.close()
    phases.mark("finish: uploads, report")
    if dist.rank == 0:
        phases.write(run_.step)
    return 0


def work_path(work_dir: str | None, name: str) -> Path:
    return Path(work_dir or Path("work_dirs") / name).resolve()


def final_checkpoint(work_dir: str | None, name: str) -> Path:
    """The newest complete checkpoint of a finished run (the one the cluster's export converts)."""
    done = checkpoint.checkpoints(work_path(work_dir, name))
    if not done:
        raise TrainError(f"{work_path(work_dir, name)}: no complete checkpoint to export")
    return done[-1]


def checkpoint_destination(uri: str | None, work: Path) -> str | None:
    """Where checkpoints are copied besides the work dir: s3://, or a mounted directory (pvc://, file://, a path);
    None when that is the work dir itself."""
    if not uri:
        return None
    local = local_destination(uri)
    return None if local is not None and local.resolve() == work else uri
