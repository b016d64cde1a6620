"""LLaVA checkpoints out of training: kubetune's layout (`projector/`, `llm_adapter/` or `llm/`,
`visual_encoder_adapter/`, cast to fp16 unless --fp32), or one transformers `LlavaForConditionalGeneration` with
the adapters merged in, a tokenizer that knows `<image>`, and the encoder's image processor."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, TYPE_CHECKING

from kubetune.vision import projector as projector_io
from kubetune.vision.model import ENCODER_ADAPTER, LAYOUT, LLM_ADAPTER, LLM_FULL, PROJECTOR

from .shards import ConvertError

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJob

FORMATS = ("kubetune", "xtuner", "huggingface")


def export(job: FineTuneJob, source: Path, out: Path, dtype: Any, max_shard_size: str, safe: bool, save_format: str) -> str:
    if save_format not in FORMATS:
        raise ConvertError(f"--save-format {save_format}: one of {', '.join(FORMATS)}")
    if save_format == "huggingface":
        return to_transformers(job, source, out, dtype, max_shard_size, safe)
    from .writers import write_adapter, write_full

    projector_io.save(projector_io.load(source / PROJECTOR), out / PROJECTOR, dtype=dtype)
    parts = ["projector"]
    if (source / LLM_ADAPTER).is_dir():
        write_adapter(source / LLM_ADAPTER, out / LLM_ADAPTER, dtype, safe)
        parts.append("LLM adapter")
    elif (source / LLM_FULL).is_dir():
        write_full(job, source / LLM_FULL, out / LLM_FULL, dtype, max_shard_size, safe)
        parts.append("LLM")
    if (source / ENCODER_ADAPTER).is_dir():
        write_adapter(source / ENCODER_ADAPTER, out / ENCODER_ADAPTER, dtype, safe)
        parts.append("encoder adapter")
    shutil.copy2(source / LAYOUT, out / LAYOUT)
    return "LLaVA " + ", ".join(parts)


def to_transformers(job: FineTuneJob, source: Path, out: Path, dtype: Any, max_shard_size: str, safe: bool) -> str:
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from kubetune.vision.load import merged_llava_parts

    layout = json.loads((source / LAYOUT).read_text())
    projector = projector_io.load(source / PROJECTOR)
    if len(projector) != 3:
        raise ConvertError(f"{source}: transformers' Llava projector has exactly 2 layers; this one has "
                           f"{(len(projector) + 1) // 2} (model.vision.projectorDepth): keep --save-format kubetune")
    vision = job.spec.model.vision
    assert vision is not None  # a LLaVA checkpoint comes from a spec with model.vision
    llm, encoder, tokenizer, image_id, processor_dir = merged_llava_parts(job.spec.model.uri, vision.encoder, source)
    llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    config = LlavaConfig(vision_config=encoder.config.to_dict(), text_config=llm.config.to_dict(),
                         image_token_index=image_id, vision_feature_layer=layout["select_layer"],
                         vision_feature_select_strategy="default", projector_hidden_act="gelu",
                         image_seq_length=layout["patches"], tie_word_embeddings=llm.config.tie_word_embeddings)
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(config)
    state = _llava_state(hf, llm, encoder, projector)
    hf.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        hf.tie_weights()
    hf.to(dtype)
    hf.save_pretrained(out, max_shard_size=max_shard_size, safe_serialization=safe)
    tokenizer.save_pretrained(out)
    _save_processor(out, tokenizer, processor_dir, encoder.config.patch_size)
    return "transformers LlavaForConditionalGeneration + tokenizer + processor"


def _llava_state(hf: Any, llm: Any, encoder: Any, projector: Any) -> dict[str, Any]:
    wanted = set(hf.state_dict())
    state: dict[str, Any] = {}
    for key, value in llm.state_dict().items():
        target = "lm_head.weight" if key == "lm_head.weight" else "model.language_model." + key.removeprefix("model.")
        state[target] = value
    vision_prefix = "model.vision_tower."
    nested = any(k.startswith(vision_prefix + "vision_model.") for k in wanted)
    for key, value in encoder.state_dict().items():
        state[vision_prefix + (key if nested else key.removeprefix("vision_model."))] = value
    for mine, theirs in ((0, "linear_1"), (2, "linear_2")):
        for kind in ("weight", "bias"):
            state[f"model.multi_modal_projector.{theirs}.{kind}"] = getattr(projector[mine], kind)
    state = {k: v.detach().float() for k, v in state.items() if k in wanted}
    missing = sorted(wanted - set(state))
    if missing and not (missing == ["lm_head.weight"] and hf.config.tie_word_embeddings):
        raise ConvertError(f"cannot map these weights into LlavaForConditionalGeneration: {missing[:5]}")
    return state


def _save_processor(out: Path, tokenizer: Any, encoder_dir: Path, patch_size: int) -> None:
    from transformers import AutoImageProcessor, LlavaProcessor

    image_processor = AutoImageProcessor.from_pretrained(str(encoder_dir))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=patch_size, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, image_token="<image>")
    processor.save_pretrained(out)
