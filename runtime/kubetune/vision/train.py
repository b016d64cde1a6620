"""The LLaVA pieces of `kubetune train`: the encoder and its image processor, the data, the module to train (what is
frozen depends on the stage), and the grouped sampling order."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TYPE_CHECKING

from kubetune.model.tokenizer import ModelLoadError
from kubetune.storage import StorageError, local_path

from . import projector as projector_io
from .image import ImageProcessor
from .model import build_llava, patches_of
from .tokens import add_image_token

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import FineTuneJobSpec


def encoder_dir(uri: str, field: str = "model.vision.encoder") -> Path:
    try:
        return local_path(uri, repo_type="model")
    except StorageError as exc:
        raise ModelLoadError(f"{field} {exc}") from None


def encoder_config(path: Path, field: str = "model.vision.encoder") -> Any:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{field} {path}: not a vision encoder ({' '.join(str(exc).split())[:200]})") from None
    config = getattr(config, "vision_config", config)  # a whole CLIP model: its vision half
    if not hasattr(config, "patch_size"):
        raise ModelLoadError(f"{field} {path}: {config.model_type} is not a patch-based image encoder")
    return config


def build_data(spec: FineTuneJobSpec, tokenizer: Any, seed: int) -> Any:
    from . import data

    assert spec.model.vision is not None  # the spec's rules tie format llava to model.vision
    path = encoder_dir(spec.model.vision.encoder)
    config = encoder_config(path)
    processor = ImageProcessor.from_encoder(path, config.image_size)
    return data.build(spec.dataset, tokenizer, add_image_token(tokenizer), patches_of(config), processor, seed)


def load_encoder(path: Path, dtype: Any, field: str = "model.vision.encoder") -> Any:
    from transformers import CLIPVisionModel

    try:
        return CLIPVisionModel.from_pretrained(str(path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{field} {path}: cannot load a CLIP vision model "
                             f"({' '.join(str(exc).split())[:200]})") from None


def with_vision(spec: FineTuneJobSpec, llm: Any, device: Any, precision: Any, seed: int) -> Any:
    """The LLM as built for its scheme → the LLaVA module, frozen as the stage says."""
    import torch

    vision = spec.model.vision
    assert vision is not None
    encoder = load_encoder(encoder_dir(vision.encoder), precision.autocast or torch.float32)
    encoder.requires_grad_(False)
    lora = spec.method.vision.encoder_lora if spec.method.vision else None
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed + 1)
        encoder = get_peft_model(encoder, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias=lora.bias,
            target_modules=list(lora.target_modules) or "all-linear"))
    if spec.method.stage == "pretrain":
        llm.requires_grad_(False)
    hidden = getattr(llm.config, "text_config", llm.config).hidden_size
    torch.manual_seed(seed + 2)  # the projector's initial values are part of a reproducible run
    projector = projector_io.build(encoder.config.hidden_size, hidden, vision.projector_depth)
    if vision.projector:
        projector = _pretrained_projector(vision.projector, projector)
    model = build_llava(llm, encoder, projector.float(), vision.select_layer)
    encoder.to(device)
    projector.to(device)
    return model


def _pretrained_projector(uri: str, fresh: Any) -> Any:
    try:
        found = projector_io.find(local_path(uri, repo_type="model"))
    except StorageError as exc:
        raise ModelLoadError(f"model.vision.projector {exc}") from None
    if found is None:
        raise ModelLoadError(f"model.vision.projector {uri}: no projector/ (a pretrain checkpoint iter_N or a "
                             "converted LLaVA directory)")
    trained = projector_io.load(found)
    if [p.shape for p in trained.parameters()] != [p.shape for p in fresh.parameters()]:
        raise ModelLoadError(f"model.vision.projector {uri}: its shape does not match this encoder, LLM and "
                             "projectorDepth")
    return trained


def modality_grouped_order(lengths: list[int], group: int, seed: int, epoch: int) -> list[int]:
    """LLaVA's modality-length grouping: image and text-only samples are shuffled apart, cut into groups of
    `group` (= batch size x data-parallel ranks, one optimiser micro-step), each group sorted longest first, the
    groups shuffled together; the mixed leftovers go last. Every rank's batch then holds one modality and similar
    lengths (less padding), and the order stays a pure function of (seed, epoch)."""
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed + epoch)
    groups, leftovers = [], []
    for members in ([i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n <= 0]):
        shuffled = [members[k] for k in torch.randperm(len(members), generator=gen).tolist()]
        whole = len(shuffled) - len(shuffled) % group
        for start in range(0, whole, group):
            groups.append(sorted(shuffled[start:start + group], key=lambda i: -abs(lengths[i])))
        leftovers += shuffled[whole:]
    order = [i for k in torch.randperm(len(groups), generator=gen).tolist() for i in groups[k]]
    return order + sorted(leftovers, key=lambda i: -abs(lengths[i]))
