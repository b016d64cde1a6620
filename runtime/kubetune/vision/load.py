"""Load a trained LLaVA for chat, evaluation and conversion: the LLM (base, or `llm/` when it was fully trained)
with `llm_adapter/` merged in, the encoder with `visual_encoder_adapter/` merged in, the projector, and a tokenizer
that knows `<image>`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.model.tokenizer import ModelLoadError
from kubetune.storage import StorageError, local_path

from . import projector as projector_io
from .image import ImageProcessor
from .model import ENCODER_ADAPTER, LAYOUT, LLM_ADAPTER, LLM_FULL, PROJECTOR, build_llava
from .tokens import add_image_token, expand


@dataclass
class LoadedLlava:
    model: Any  # the LLaVA module (its `images` is what placeholders are filled from)
    tokenizer: Any
    processor: ImageProcessor
    image_id: int
    template: str | None
    system: str | None

    def expand(self, ids: list[int]) -> list[int]:
        return expand(ids, self.image_id, self.model.patches)[0]


def _local(uri: str, flag: str) -> Path:
    try:
        return local_path(uri, repo_type="model")
    except StorageError as exc:
        raise ModelLoadError(f"{flag} {exc}") from None


def llava_dir(uri: str) -> Path:
    path = _local(uri, "--llava")
    for candidate in (path, path / "model"):  # a converted directory, or a training checkpoint iter_N
        if (candidate / PROJECTOR / projector_io.CONFIG).is_file():
            return candidate
    raise ModelLoadError(f"--llava {uri}: no projector/ (pass a `convert pth_to_hf` output or a checkpoint iter_N)")


def encoder_source(llava: Path, visual_encoder: str | None) -> Path:
    """--visual-encoder, else a fully trained `visual_encoder/` in the LLaVA directory, else the training config's."""
    if visual_encoder:
        return _local(visual_encoder, "--visual-encoder")
    if (llava / "visual_encoder").is_dir():
        return llava / "visual_encoder"
    for config in (llava / "kubetune_config.yaml", llava.parent / "kubetune_config.yaml"):
        if config.is_file():
            from kubetune.api.loader import load_finetunejob

            vision = load_finetunejob(config).spec.model.vision
            if vision is not None:
                return _local(vision.encoder, "model.vision.encoder")
    raise ModelLoadError(f"--llava {llava}: pass --visual-encoder (the CLIP encoder it was trained with)")


def merged_llava_parts(llm_uri: str, encoder_uri: str | Path, llava: Path, dtype: Any = None,
                       bits: int | None = None) -> tuple[Any, Any, Any, int, Path]:
    """(LLM, encoder, tokenizer with `<image>`, its id, encoder dir), adapters merged (kept apart when 4/8-bit)."""
    import torch
    from transformers import CLIPVisionModel

    from kubetune.model.dtypes import dtype_name
    from kubetune.model.load import load

    llm_source = str(llava / LLM_FULL) if (llava / LLM_FULL).is_dir() else llm_uri
    adapter = str(llava / LLM_ADAPTER) if (llava / LLM_ADAPTER).is_dir() else None
    loaded = load(llm_source, adapter, bits, dtype_name(dtype))
    encoder_dir = encoder_uri if isinstance(encoder_uri, Path) else _local(encoder_uri, "--visual-encoder")
    try:
        encoder = CLIPVisionModel.from_pretrained(str(encoder_dir), dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"visual encoder {encoder_dir}: cannot load a CLIP vision model "
                             f"({' '.join(str(exc).split())[:200]})") from None
    if (llava / ENCODER_ADAPTER).is_dir():
        from peft import PeftModel

        encoder = PeftModel.from_pretrained(encoder, str(llava / ENCODER_ADAPTER)).merge_and_unload()
    tokenizer = loaded.tokenizer
    return loaded.model, encoder.eval(), tokenizer, add_image_token(tokenizer), encoder_dir


def load_llava(llm_uri: str, llava_uri: str, visual_encoder: str | None, select_layer: int | None,
               bits: int | None = None, dtype: str = "auto") -> LoadedLlava:
    import json

    import torch

    from kubetune.model.dtypes import NAMES, torch_dtype
    from kubetune.model.load import trained_defaults

    llava = llava_dir(llava_uri)
    encoder_dir = encoder_source(llava, visual_encoder)
    wanted = torch_dtype(dtype) if dtype in NAMES else None
    if wanted is None:
        wanted = torch.float32 if not torch.cuda.is_available() else torch.float16
    llm, encoder, tokenizer, image_id, _ = merged_llava_parts(llm_uri, encoder_dir, llava, wanted, bits)
    layout = json.loads((llava / LAYOUT).read_text()) if (llava / LAYOUT).is_file() else {}
    layer = select_layer if select_layer is not None else layout.get("select_layer", -2)
    projector = projector_io.load(llava / PROJECTOR).to(dtype=next(llm.parameters()).dtype)
    device = next(llm.parameters()).device
    model = build_llava(llm, encoder.to(device), projector.to(device), layer).eval()
    processor = ImageProcessor.from_encoder(encoder_dir, encoder.config.image_size)
    template, system = trained_defaults(llava)
    if template is None:
        template, system = trained_defaults(llava.parent)
    return LoadedLlava(model, tokenizer, processor, image_id, template, system)
