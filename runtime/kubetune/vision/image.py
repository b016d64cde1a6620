"""Images → the encoder's pixel tensors, as the encoder's `preprocessor_config.json` says (CLIP's resize of the
shortest edge, centre crop, rescale, normalise), with LLaVA's optional pad-to-square first."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.errors import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ImageError(DataError, ValueError):
    """An image that cannot be read, named by its path or row."""


def _side(value: Any, default: int) -> int:
    if isinstance(value, dict):
        return int(value.get("shortest_edge") or value.get("height") or default)
    return int(value) if value else default


@dataclass(frozen=True)
class ImageProcessor:
    size: int
    crop: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    rescale: float = 1 / 255
    center_crop: bool = True

    @classmethod
    def from_encoder(cls, encoder_dir: Path, image_size: int) -> "ImageProcessor":
        path = Path(encoder_dir) / "preprocessor_config.json"
        cfg = json.loads(path.read_text()) if path.is_file() else {}
        crop = _side(cfg.get("crop_size"), image_size)
        return cls(size=_side(cfg.get("size"), crop), crop=crop, mean=tuple(cfg.get("image_mean", CLIP_MEAN)),
                   std=tuple(cfg.get("image_std", CLIP_STD)), rescale=float(cfg.get("rescale_factor", 1 / 255)),
                   center_crop=bool(cfg.get("do_center_crop", True)))

    def __call__(self, image: Any, pad_to_square: bool = False) -> Any:
        import numpy as np
        import torch
        from PIL import Image

        if pad_to_square:
            image = expand_to_square(image, tuple(int(m * 255) for m in self.mean))
        w, h = image.size
        scale = self.size / min(w, h)
        image = image.resize((max(self.crop, round(w * scale)), max(self.crop, round(h * scale))),
                             Image.Resampling.BICUBIC)
        if self.center_crop:
            w, h = image.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            image = image.crop((left, top, left + self.crop, top + self.crop))
        else:
            image = image.resize((self.crop, self.crop), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) * self.rescale
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())

    def blank(self) -> Any:
        """An all-zero image: what a text-only batch feeds the encoder so every rank runs the same graph."""
        import torch

        return torch.zeros(3, self.crop, self.crop)


def expand_to_square(image: Any, background: tuple[int, ...]) -> Any:
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


def open_image(source: str | Path | bytes, where: str = "") -> Any:
    """A path or raw bytes → an RGB PIL image, or ImageError naming `where`."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(source, bytes):
            return Image.open(io.BytesIO(source)).convert("RGB")
        return Image.open(source).convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{where or str(source)}: image not found") from None  # bytes never get here
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError(f"{where or str(source)[:80]}: not a readable image ({exc})") from None
