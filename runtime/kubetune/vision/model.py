"""The LLaVA module: image features from an encoder layer (CLS dropped), projected, then placed where the `<image>`
placeholders are in the LLM's input embeddings. Composes the three parts; never subclasses a transformers model, so
any causal LM (full, LoRA, 4-bit) plugs in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import projector as projector_io
from .tokens import IMAGE_INDEX

LAYOUT = "llava.json"
LLM_ADAPTER, LLM_FULL, ENCODER_ADAPTER, PROJECTOR = "llm_adapter", "llm", "visual_encoder_adapter", "projector"


def patches_of(encoder_config: Any) -> int:
    """Image tokens per image: the encoder's patch grid (its CLS feature is dropped)."""
    return (encoder_config.image_size // encoder_config.patch_size) ** 2


def build_llava(llm: Any, encoder: Any, projector: Any, select_layer: int) -> Any:
    import torch

    class LlavaModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm, self.encoder, self.projector = llm, encoder, projector
            self.select_layer = select_layer
            self.patches = patches_of(encoder.config)
            self.images = None  # chat: the conversation's image, used where a prompt has placeholders

        @property
        def config(self) -> Any:
            return self.llm.config

        def image_features(self, pixel_values: Any) -> Any:
            weight = next(self.encoder.parameters())
            out = self.encoder(pixel_values.to(device=weight.device, dtype=self.encoder.dtype),
                               output_hidden_states=True)
            features = out.hidden_states[self.select_layer][:, 1:]
            first = self.projector[0].weight
            return self.projector(features.to(first.dtype))

        def embed(self, input_ids: Any, pixel_values: Any) -> Any:
            placeholders = input_ids == IMAGE_INDEX
            embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(placeholders, 0))
            if pixel_values is None:
                return embeds
            features = self.image_features(pixel_values)
            wanted = int(placeholders.sum())
            if wanted == 0:
                # A text-only batch still runs the encoder on a blank image, so every rank's graph (and DDP's
                # gradient buckets) is the same.
                return embeds + 0 * features.sum().to(embeds.dtype)
            if wanted != features.shape[0] * features.shape[1]:
                raise ValueError(f"{wanted} image placeholders for {features.shape[0]} image(s) of "
                                 f"{features.shape[1]} features each")
            return embeds.masked_scatter(placeholders.unsqueeze(-1), features.to(embeds.dtype))

        def forward(self, input_ids: Any, pixel_values: Any = None, **kwargs: Any) -> Any:
            placeholders = bool((input_ids == IMAGE_INDEX).any())
            if pixel_values is None and not placeholders:
                return self.llm(input_ids=input_ids, **kwargs)
            if pixel_values is None:
                if self.images is None:
                    raise ValueError("the prompt has an image placeholder but no image was given")
                pixel_values = self.images
            return self.llm(inputs_embeds=self.embed(input_ids, pixel_values), **kwargs)

        def generate(self, **kwargs: Any) -> Any:  # text-only prompts (the training's evaluation inputs)
            return self.llm.generate(**kwargs)

        def save_pretrained(self, path: Path, safe_serialization: bool = True, state_dict: dict | None = None,
                            dtype: Any = None) -> None:
            save_layout(self, Path(path), state_dict, dtype)

    return LlavaModel()


def _part(state: dict | None, prefix: str) -> dict | None:
    if state is None:
        return None
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def save_layout(model: Any, path: Path, state: dict | None = None, dtype: Any = None) -> None:
    """kubetune's LLaVA layout: `projector/`, and what trained of the rest: `llm_adapter/` (LoRA) or `llm/` (full),
    `visual_encoder_adapter/`; `llava.json` says how the parts fit."""
    path.mkdir(parents=True, exist_ok=True)
    projector_io.save(model.projector, path / PROJECTOR, _part(state, "projector."), dtype)
    llm_state = _part(state, "llm.")
    if hasattr(model.llm, "peft_config"):
        model.llm.save_pretrained(path / LLM_ADAPTER, safe_serialization=True,
                                  **({"state_dict": llm_state} if llm_state else {}))
    elif any(p.requires_grad for p in model.llm.parameters()):  # stage finetune, full: the LLM trained too
        model.llm.save_pretrained(path / LLM_FULL, safe_serialization=True,
                                  **({"state_dict": llm_state} if llm_state else {}))
    if hasattr(model.encoder, "peft_config"):
        enc_state = _part(state, "encoder.")
        model.encoder.save_pretrained(path / ENCODER_ADAPTER, safe_serialization=True,
                                      **({"state_dict": enc_state} if enc_state else {}))
    (path / LAYOUT).write_text(json.dumps({"select_layer": model.select_layer, "patches": model.patches,
                                           "projector_depth": (len(model.projector) + 1) // 2}, indent=2) + "\n")


def load_trained(path: Path, model: Any) -> None:
    """Load a checkpoint's `model/` (the layout above) into a LLaVA module built for training."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    with torch.no_grad():
        trained = projector_io.load(path / PROJECTOR)
        model.projector.load_state_dict(trained.state_dict())
    if (path / LLM_ADAPTER).is_dir():
        set_peft_model_state_dict(model.llm, load_file(str(path / LLM_ADAPTER / "adapter_model.safetensors")))
    elif (path / LLM_FULL).is_dir():
        state: dict[str, Any] = {}
        for shard in sorted((path / LLM_FULL).glob("*.safetensors")):
            state.update(load_file(str(shard)))
        model.llm.load_state_dict(state, strict=False)
    if (path / ENCODER_ADAPTER).is_dir():
        set_peft_model_state_dict(model.encoder,
                                  load_file(str(path / ENCODER_ADAPTER / "adapter_model.safetensors")))


def is_llava_dir(path: Path) -> bool:
    return (Path(path) / LAYOUT).is_file() or (Path(path) / PROJECTOR / projector_io.CONFIG).is_file()
