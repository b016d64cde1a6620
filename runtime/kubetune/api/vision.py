"""`model.vision`: the image encoder and projector of a LLaVA model (its training stage is `method.vision`)."""

from __future__ import annotations

from pydantic import Field

from .base import KubeModel, Uri


class VisionModelSpec(KubeModel):
    """A LLaVA model: a CLIP-style image encoder whose patch features a projector maps into the LLM's embeddings."""

    encoder: Uri
    """The image encoder (a CLIP vision model with its `preprocessor_config.json`), e.g.
    `hf://openai/clip-vit-large-patch14-336`; same URI forms as `model.uri`."""
    select_layer: int = Field(default=-2, ge=-64, le=64)
    """Encoder layer whose patch features are used (negative counts from the last; the CLS feature is dropped)."""
    projector_depth: int = Field(default=2, ge=1, le=8)
    """Projector layers: `Linear [GELU Linear] x (depth - 1)`."""
    projector: Uri | None = None
    """Start from a trained projector: a pretrain-stage checkpoint (`.../iter_N`) or a converted LLaVA directory
    holding `projector/` (XTuner's `pretrained_pth`). Unset: a new, randomly initialised projector."""
