"""A reward-model checkpoint → a plain transformers `...ForSequenceClassification` (one label): the language model
(with its LoRA adapter merged, when it has one) as the backbone and the trained head as `score`. Score a text by
appending the reward token (`reward_config.json`, by default EOS) and reading the single logit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .shards import ConvertError

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJob


def export(job: FineTuneJob, source: Path, out: Path, fp32: bool, max_shard_size: str, safe: bool) -> str:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from kubetune.model.native import native_path
    from kubetune.model.tokenizer import load_tokenizer
    from kubetune.storage import local_path
    from kubetune.train.reward import CONFIG_FILE, HEAD_FILE

    trust = job.spec.model.trust_remote_code
    if (source / "adapter_config.json").is_file():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(native_path(local_path(job.spec.model.uri, repo_type="model"))),
                                                    dtype=torch.float32, trust_remote_code=trust)
        lm = PeftModel.from_pretrained(base, str(source)).merge_and_unload()
    else:
        lm = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, trust_remote_code=trust)
    tokenizer = load_tokenizer(job.spec.model)
    config = lm.config
    config.num_labels = 1
    config.architectures = None
    if config.pad_token_id is None:  # sequence classification finds each row's last token through the pad id
        config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    try:
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=trust)
    except ValueError as exc:
        raise ConvertError(f"{job.spec.model.uri}: transformers has no sequence-classification class for this "
                           f"model type ({' '.join(str(exc).split())[:200]})") from None
    if not hasattr(model, "score"):
        raise ConvertError(f"{type(model).__name__} has no `score` head to hold the reward head")
    with torch.no_grad():
        model.base_model.load_state_dict(lm.get_decoder().state_dict())
        model.score.weight.copy_(load_file(str(source / HEAD_FILE))["weight"])
    model = model.to(torch.float32 if fp32 else torch.float16)
    model.save_pretrained(out, safe_serialization=safe, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out)
    shutil.copy2(source / CONFIG_FILE, out / CONFIG_FILE)
    token = json.loads((source / CONFIG_FILE).read_text())["reward_token_id"]
    return f"reward model ({type(model).__name__}; append token id {token} before scoring)"
