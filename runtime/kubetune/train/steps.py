"""The named steps of `kubetune train` that are more than a line (main.py reads as their table of contents)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

from . import checkpoint
from .clock import Clock
from .hooks import (EvaluateChat, Hook, Metrics, ProgressBar, ProgressFile, SignalAfterStep, StopAfterStep,
                    TensorBoard, TextLog, megatron_tflops)
from .report import StatusReporter

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJobSpec


def pick_seed(spec: FineTuneJobSpec, resume_from: Path | None) -> int:
    if resume_from is not None:
        return int(json.loads((resume_from / checkpoint.STATE).read_text())["seed"])
    return spec.training.seed if spec.training.seed is not None else random.SystemRandom().randint(0, 2**31 - 1)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:  # as mmengine's set_random_seed(deterministic=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS refuses determinism without it
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def build_data(spec: FineTuneJobSpec, seed: int, say: Any) -> tuple[Any, Any]:
    from kubetune.data.pipeline import build, summary
    from kubetune.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec.model)
    if spec.model.vision:
        from kubetune.vision.train import build_data as build_llava_data

        data = build_llava_data(spec, tokenizer, seed)
        say("LLaVA data: " + ", ".join(f"{k} {v}" for k, v in data.report.items()))
        return tokenizer, data
    if spec.method.is_preference:
        from kubetune.data import preference

        sequences, _ = preference.build(spec.dataset, tokenizer, seed=seed,
                                        reward_token=preference.method_reward_token(spec.method, tokenizer), log=say)
        say(f"Num train sequences: {len(sequences)} (packed chosen/rejected pairs); sequence 0 decoded: "
            f"{tokenizer.decode(sequences[0]['input_ids'][:200])!r}")
        return tokenizer, sequences
    built = build(spec.dataset, tokenizer, seed=seed, log=lambda s: None)
    for line in summary(built.report).splitlines():
        say(line)
    sample = built.dataset[0]
    say(f"Num train sequences: {len(built.dataset)}; sequence 0 decoded: "
        f"{tokenizer.decode(sample['input_ids'][:200])!r}")
    return tokenizer, built.dataset


def save_policy(spec: FineTuneJobSpec, clock: Clock) -> Callable[[int], list[int]]:
    """Optimizer step -> the checkpoints due after it, named in the spec's unit; the run's end always has one."""
    every = spec.checkpoints.every_steps

    def due(step: int) -> list[int]:
        names = clock.epochs_due(step) if spec.checkpoints.by_epoch else clock.due(step, every or clock.total)
        if step == clock.steps and clock.total not in names:
            names.append(clock.total)
        return names
    return due


def collator(tokenizer: Any, spec: FineTuneJobSpec, data: Any):
    from kubetune.data.collate import collate

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if spec.model.vision:
        from kubetune.vision.data import collate as collate_images

        blank = data.processor.blank()
        return lambda rows: collate_images(rows, pad, blank)
    return lambda rows: collate(rows, pad_token_id=pad)


def sampling_order(spec: FineTuneJobSpec, data: Any, dp_world: int):
    """None (the sampler's plain shuffle) unless LLaVA's modality-length grouping is asked for."""
    if not (spec.model.vision and spec.dataset.group_by_modality_length):
        return None
    from kubetune.vision.train import modality_grouped_order

    lengths, group = data.modality_lengths, spec.training.batch_size * dp_world
    return lambda seed, epoch: modality_grouped_order(lengths, group, seed, epoch)


def hooks_for(rank: int, spec: FineTuneJobSpec, tokenizer: Any, work: Path, log: TextLog | None) -> list[Hook]:
    """Logging and metrics on rank 0. Every rank runs the evaluation: under ZeRO-3 a forward pass gathers weights
    from all ranks, so generation must run in lockstep everywhere (only rank 0 writes)."""
    hooks: list[Hook] = []
    if rank == 0:
        assert log is not None  # rank 0 always logs
        hooks += [log, ProgressFile(work), TensorBoard(log.dir / "vis_data"), ProgressBar()]
        port = os.environ.get("KUBETUNE_METRICS_PORT")
        if port:
            hooks.append(Metrics(int(port)))
        reporter = StatusReporter.from_env(work, spec.checkpoints.uri)
        if reporter is not None:
            hooks.append(reporter)
    if spec.evaluation.inputs and spec.method.type.value != "reward":  # a reward model scores, it does not chat
        hooks.append(EvaluateChat(spec, tokenizer, log.dir / "vis_data" if log is not None else work, log))
    if os.environ.get("KUBETUNE_SIGTERM_AFTER_STEP"):
        hooks.append(SignalAfterStep(int(os.environ["KUBETUNE_SIGTERM_AFTER_STEP"])))
    if os.environ.get("KUBETUNE_STOP_AFTER_STEP"):  # last: every other hook sees the step first
        hooks.append(StopAfterStep(int(os.environ["KUBETUNE_STOP_AFTER_STEP"])))
    return hooks


def report_throughput(model: Any, spec: FineTuneJobSpec, log: TextLog, work: Path) -> None:
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


def objective_for(spec: FineTuneJobSpec, model: Any, tokenizer: Any, seed: int, head: Any, forward: Any
                  ) -> tuple[Any, Any, Any]:
    """(model, objective, prepare) for a preference method: a reward model wraps the language model with its head;
    full-parameter DPO gets a frozen reference copy (adapters are disabled instead). SFT: (model, None, None), and
    the recipe builds the token objective over the same `forward` (packed or sequence-parallel)."""
    from .objectives import prepare_pairs, preference

    method = spec.method
    if not method.is_preference:
        return model, None, None
    reference = None
    if method.type.value == "reward":
        from kubetune.data.preference import method_reward_token

        from .reward import build_reward_model

        token = method_reward_token(method, tokenizer)
        assert token is not None  # a reward method always has its token
        model = build_reward_model(model, token, seed)
    elif method.type.value == "dpo" and method.scheme == "full":
        import copy

        reference = copy.deepcopy(model).eval()
        reference.requires_grad_(False)
    return model, preference(method, forward, reference, head), prepare_pairs
