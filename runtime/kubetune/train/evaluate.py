"""`kubetune test CONFIG --checkpoint CKPT`: XTuner's test mode for a fine-tune — the checkpoint's mean token loss
and perplexity over a dataset (the config's own, another split of it, or another file), each sample alone and
truncated to maxLength, and the config's evaluation prompts answered as during training."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TYPE_CHECKING

from kubetune.data.encode import IGNORE_INDEX

from .checkpoint import STATE
from .errors import TrainError
from .targets import token_loss_sum

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJob


@dataclass
class TestData:
    """Which rows are scored: the config's dataset unless `uri`/`split` say otherwise; at most `max_samples`."""

    uri: str | None = None
    split: str | None = None
    max_samples: int | None = None


def run(job: FineTuneJob, checkpoint: Path, work: Path, data: TestData, say: Any = print) -> dict[str, Any]:
    import torch

    from kubetune.data.pipeline import build
    from kubetune.model.load import load
    from kubetune.model.tokenizer import load_tokenizer

    from .hooks import EvaluateChat

    spec = job.spec
    if spec.method.is_preference or spec.model.vision:
        raise TrainError(f"test: {spec.method.type.value}{' (LLaVA)' if spec.model.vision else ''} checkpoints are "
                         "not scored here yet; test takes supervised fine-tunes (full, lora, qlora)")
    weights = _weights(checkpoint)
    dataset = _dataset(spec.dataset, data)
    tokenizer = load_tokenizer(spec.model)
    samples = build(dataset, tokenizer, seed=0, log=lambda s: None).dataset
    adapter = (weights / "adapter_config.json").is_file()
    bits = spec.method.quantization.bits if spec.method.scheme == "qlora" and spec.method.quantization else None
    model = load(spec.model.uri if adapter else str(weights), adapter=str(weights) if adapter else None, bits=bits,
                 trust_remote_code=spec.model.trust_remote_code).model
    device = next(model.parameters()).device
    loss_sum, tokens = 0.0, 0
    with torch.no_grad():
        for row in samples:
            ids = torch.tensor([row["input_ids"]], device=device)
            targets = torch.tensor(row["labels"][1:], device=device)
            loss_sum += float(token_loss_sum(model(input_ids=ids).logits[0, :-1], targets))
            tokens += int((targets != IGNORE_INDEX).sum())
    if not tokens:
        raise TrainError(f"test: {dataset.uri} has no labelled tokens to score")
    loss = loss_sum / tokens
    out = work / time.strftime("%Y%m%d_%H%M%S")
    (out / "vis_data").mkdir(parents=True, exist_ok=True)
    step = _step(checkpoint)
    result = {"checkpoint": str(checkpoint), "step": step, "data": dataset.uri, "split": dataset.split,
              "samples": len(samples), "tokens": tokens, "loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    (out / "test_results.json").write_text(json.dumps(result, indent=2) + "\n")
    if spec.evaluation.inputs:
        log = _Say(say)
        EvaluateChat(spec, tokenizer, out / "vis_data", log).run(_Context(model, device), step)
    return {**result, "results": str(out / "test_results.json")}


def _weights(checkpoint: Path) -> Path:
    for candidate in (checkpoint / "model", checkpoint):
        if (candidate / "adapter_config.json").is_file() or (candidate / "config.json").is_file():
            return candidate
    raise TrainError(f"--checkpoint {checkpoint}: not a kubetune checkpoint (iter_N with model/) or a Hugging Face "
                     "adapter/model directory")


def _dataset(spec: Any, data: TestData) -> Any:
    update: dict[str, Any] = {"pack_to_max_length": False, "max_packed_length": None}
    if data.uri:
        update.update(uri=data.uri, concat=[])
    if data.split:
        update["split"] = data.split
    if data.max_samples:
        update["max_samples"] = data.max_samples
    return spec.model_copy(update=update)


def _step(checkpoint: Path) -> int:
    state = checkpoint / STATE
    if state.is_file():
        return int(json.loads(state.read_text()).get("step", 0))
    return int(checkpoint.name[5:]) if checkpoint.name.startswith("iter_") and checkpoint.name[5:].isdigit() else 0


@dataclass
class _Context:
    model: Any
    device: Any
    rank: int = 0


@dataclass
class _Say:
    write: Any
