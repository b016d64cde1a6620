"""Callbacks around the loop: each is a `Hook` and overrides only the events it needs.

Events: before_train(run), after_step(run, metrics), after_train(run); `run` is the loop's Run (loop.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TYPE_CHECKING

from kubetune.model.attention import generation_attention

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJobSpec


class Hook:
    """The events the loop calls, in the order the hooks were given; the defaults do nothing."""

    def before_train(self, ctx: Any) -> None:
        """Once, before the first step (after a resume, at the resumed step)."""

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        """After every optimizer step (and its checkpoint, when one is due)."""

    def after_train(self, ctx: Any) -> None:
        """Once, after the last step."""


class StopAfterStep(Hook):
    """Fault injection for tests and drills (KUBETUNE_STOP_AFTER_STEP=N): the process dies right after step N, once
    every other hook has seen it, as a preempted pod would (exit 143, no cleanup)."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        if ctx.step == self.step:
            import os

            os._exit(143)


class SignalAfterStep(Hook):
    """Preemption drill (KUBETUNE_SIGTERM_AFTER_STEP=N): right after step N the process gets SIGTERM, as a pod being
    preempted does; the stop request then ends the run after the next step, with a checkpoint (stop.py)."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        if ctx.step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


# What every objective reports; the rest (preference methods' rewards, accuracy, margins) is appended to the log line.
_STANDARD = {"step", "loss", "lr", "grad_norm", "epoch", "step_time", "data_time", "tokens_per_second", "eta",
             "peak_memory_bytes"}


class TextLog(Hook):
    """XTuner's layout: work_dir/<timestamp>/<timestamp>.log and vis_data/scalars.json (one JSON object per line)."""

    def __init__(self, work_dir: Path, stamp: str, every: int):
        self.dir = work_dir / stamp
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "vis_data").mkdir(exist_ok=True)
        self.log = (self.dir / f"{stamp}.log").open("a", encoding="utf-8")
        self.scalars = (self.dir / "vis_data" / "scalars.json").open("a", encoding="utf-8")
        self.every = every

    def write(self, line: str) -> None:
        stamped = f"{time.strftime('%Y/%m/%d %H:%M:%S')} - kubetune - INFO - {line}"
        print(stamped, flush=True)
        self.log.write(stamped + "\n")
        self.log.flush()

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        # XTuner's (mmengine's) keys beside kubetune's, for the scripts that read its scalars.json: iter, time,
        # data_time, and memory (MB allocated, on a GPU only, as mmengine logs it).
        clock = ctx.clock
        count = clock.count(metrics["step"])
        record = {**metrics, "iter": count, "time": metrics["step_time"]}
        if getattr(getattr(ctx, "device", None), "type", "cpu") == "cuda":
            record["memory"] = int(metrics["peak_memory_bytes"] / 2**20)
        self.scalars.write(json.dumps(record) + "\n")
        self.scalars.flush()
        if clock.due(metrics["step"], self.every) or metrics["step"] == ctx.total_steps:
            extra = "".join(f"  {k}: {v:.4f}" for k, v in metrics.items() if k not in _STANDARD)
            self.write(f"Iter(train) [{count:>6}/{clock.total}]  lr: {metrics['lr']:.4e}  "
                       f"eta: {metrics['eta']}  time: {metrics['step_time']:.4f}  "
                       f"data_time: {metrics.get('data_time', 0.0):.4f}  loss: {metrics['loss']:.4f}  "
                       f"tokens/s: {metrics['tokens_per_second']:.0f}  epoch: {metrics['epoch']:.3f}{extra}")

    def close(self) -> None:
        self.log.close()
        self.scalars.close()


class TensorBoard(Hook):
    """TensorBoard event files next to scalars.json (`tensorboard --logdir work_dir`)."""

    def __init__(self, directory: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if key not in ("step", "step_time", "eta"):
                self.writer.add_scalar(f"train/{key}", value, metrics["step"])

    def after_train(self, ctx: Any) -> None:
        self.writer.close()


class ProgressBar(Hook):
    """A tqdm bar with ETA on an interactive terminal; in a pod's log the text log already says it all."""

    def __init__(self, enabled: bool | None = None):
        import sys

        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def before_train(self, ctx: Any) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=ctx.total_steps, initial=ctx.step, unit="step", dynamic_ncols=True)

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", refresh=False)
            self.bar.update(1)

    def after_train(self, ctx: Any) -> None:
        if self.bar is not None:
            self.bar.close()


class ProgressFile(Hook):
    """`work_dir/progress.json`, the same fields report.StatusReporter patches into the FineTuneJob's status."""

    def __init__(self, work_dir: Path):
        self.path = work_dir / "progress.json"

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        payload = {"step": metrics["step"], "totalSteps": ctx.total_steps,
                   "stepDisplay": f"{metrics['step']}/{ctx.total_steps}", "epoch": round(metrics["epoch"], 4),
                   "loss": round(metrics["loss"], 6), "learningRate": metrics["lr"],
                   "tokensPerSecond": round(metrics["tokens_per_second"], 1), "eta": metrics["eta"]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(self.path)


class Metrics(Hook):
    """Prometheus gauges on KUBETUNE_METRICS_PORT (rank 0), named kubetune_train_*."""

    def __init__(self, port: int):
        from prometheus_client import Gauge, start_http_server

        try:
            start_http_server(port)
        except OSError as exc:  # a port taken on a hostNetwork node (node-exporter): metrics never stop training
            print(f"kubetune: cannot serve metrics on port {port}: {exc}; training goes on without them",
                  file=sys.stderr, flush=True)
        names = {"loss": "Mean loss of the last step", "learning_rate": "Learning rate",
                 "tokens_per_second": "Trained (non-padding) tokens per second, all ranks", "step": "Optimizer steps done",
                 "total_steps": "Optimizer steps in the run", "epoch": "Fractional epoch",
                 "peak_memory_bytes": "Peak memory of rank 0 (GPU when training on one, else RSS)"}
        self.gauges = {k: Gauge(f"kubetune_train_{k}", doc) for k, doc in names.items()}

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        for key in ("loss", "tokens_per_second", "step", "epoch"):
            self.gauges[key].set(metrics[key])
        self.gauges["learning_rate"].set(metrics["lr"])
        self.gauges["total_steps"].set(ctx.total_steps)
        self.gauges["peak_memory_bytes"].set(metrics.get("peak_memory_bytes", 0))


BEFORE_TRAIN_TOKENS = 50  # XTuner's EvaluateChatHook.before_train
# XTuner's EvaluateChatHook samples with these (its GenerationConfig), unless evaluation.greedy.
XTUNER_SAMPLING = {"do_sample": True, "temperature": 0.1, "top_p": 0.75, "top_k": 40}


class EvaluateChat(Hook):
    """Answer `evaluation.inputs` with the training template before training, every N steps and at the end; write
    `eval_outputs_iter_N.txt` into `out_dir` (XTuner's EvaluateChatHook: its system prompt, its sampling, its place:
    `<timestamp>/vis_data/` beside scalars.json)."""

    def __init__(self, spec: FineTuneJobSpec, tokenizer: Any, out_dir: Path, log: Any):
        self.inputs = list(spec.evaluation.inputs)
        self.every = spec.evaluation.every_steps
        self.max_new_tokens = spec.evaluation.max_new_tokens
        self.sampling = {"do_sample": False} if spec.evaluation.greedy else XTUNER_SAMPLING
        self.tokenizer, self.out_dir, self.log = tokenizer, out_dir, log
        self.prompts = [self._prompt(spec, text) for text in self.inputs]
        template = spec.dataset.prompt_template.value
        from kubetune.data.templates import PROMPT_TEMPLATES

        known = PROMPT_TEMPLATES[template].stop_words if template in PROMPT_TEMPLATES else ()
        self.stop_words = list(dict.fromkeys([*known, *spec.evaluation.stop_words]))

    def _prompt(self, spec: FineTuneJobSpec, text: str) -> list[int]:
        from kubetune.data.encode import special_ids
        from kubetune.data.templates import PROMPT_TEMPLATES, system_text

        ds, ev = spec.dataset, spec.evaluation
        system = system_text(ev.system, ev.system_template.value if ev.system_template else None) \
            or system_text(ds.system, ds.system_template.value if ds.system_template else None)
        name = ds.prompt_template.value
        if name == "auto":
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer.encode(rendered, add_special_tokens=False)
        bos, _ = special_ids(self.tokenizer)
        return bos + self.tokenizer.encode(PROMPT_TEMPLATES[name].render_input(text, system), add_special_tokens=False)

    def run(self, ctx: Any, step: int, max_new_tokens: int | None = None) -> None:
        if not self.inputs:
            return
        import torch

        model = getattr(ctx.model, "module", ctx.model)
        was_training = model.training
        model.eval()
        lines = []
        # Sampling draws from a forked RNG seeded by the step: the outputs repeat, and training's random stream is
        # the same with or without evaluation.
        with torch.no_grad(), generation_attention(model), torch.random.fork_rng(devices=_devices(ctx.device)):
            torch.manual_seed(step)
            for text, ids in zip(self.inputs, self.prompts):
                input_ids = torch.tensor([ids], device=ctx.device)
                stops = {"stop_strings": self.stop_words, "tokenizer": self.tokenizer} if self.stop_words else {}
                out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=max_new_tokens or self.max_new_tokens, use_cache=True,
                                     **self.sampling, **stops,
                                     pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
                answer = self.tokenizer.decode(out[0, len(ids):], skip_special_tokens=False)
                lines.append(f"Sample output:\n{text}\n{answer}\n")
        model.train(was_training)
        if ctx.rank != 0:
            return
        path = self.out_dir / f"eval_outputs_iter_{step}.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        self.log.write(f"eval outputs at step {step} written to {path}")

    def before_train(self, ctx: Any) -> None:
        # A first look, short as XTuner's (50 new tokens): the untrained model rarely stops by itself.
        self.run(ctx, ctx.clock.count(ctx.step), min(BEFORE_TRAIN_TOKENS, self.max_new_tokens))
        if ctx.step == 0:  # points inside the first accumulation window answer with the initial weights
            self.after_step(ctx, {"step": 0})

    def after_step(self, ctx: Any, metrics: dict[str, Any]) -> None:
        for count in ctx.clock.due(metrics["step"], self.every):
            if count != ctx.clock.total:
                self.run(ctx, count)

    def after_train(self, ctx: Any) -> None:
        self.run(ctx, ctx.clock.total)


def megatron_tflops(layers: int, hidden: int, vocab: int, seq_len: int, tokens_per_second: float,
                    gradient_checkpointing: bool) -> float:
    """Model TFLOP/s by the Megatron formula XTuner's ThroughputHook uses: 72·B·s·L·h²·(1 + s/(6h) + V/(16Lh)) FLOPs
    per iteration (96 with activation recomputation), here per token and times tokens/s. It ignores LoRA's smaller
    backward, so for adapters it is an upper bound, as in XTuner."""
    factor = 96 if gradient_checkpointing else 72
    per_token = factor * layers * hidden * hidden * (1 + seq_len / (6 * hidden) + vocab / (16 * layers * hidden))
    return per_token * tokens_per_second / 1e12


def _devices(device: Any) -> list[Any]:
    """The CUDA device whose RNG a forked generator must also restore (the CPU's is always)."""
    return [device] if getattr(device, "type", str(device)).startswith("cuda") else []
