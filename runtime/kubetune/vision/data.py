"""LLaVA data: rows of `image` + `conversations` → token ids with the `<image>` marker expanded into one placeholder
per image patch, labels on the answers only, and the image read when a batch needs it (images are never cached
in memory). Modality lengths (negative for text-only rows) feed the grouped sampler."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING

from kubetune.data.encode import IGNORE_INDEX
from kubetune.data.formats import FORMATS, RowError
from kubetune.data.source import DataError, files_of, load_rows
from kubetune.storage import StorageError, local_path

from .image import ImageError, ImageProcessor, open_image
from .tokens import IMAGE_INDEX, expand

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import DatasetSpec


@dataclass
class LlavaData:
    rows: list[dict[str, Any]]
    processor: ImageProcessor
    pad_to_square: bool
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        out = {"input_ids": row["input_ids"], "labels": row["labels"], "pixel_values": None}
        if row["image"] is not None:
            try:
                out["pixel_values"] = self.processor(open_image(row["image"], where=row["where"]), self.pad_to_square)
            except ImageError as exc:
                raise DataError(str(exc)) from None
        return out

    @property
    def modality_lengths(self) -> list[int]:
        return [len(r["input_ids"]) if r["image"] is not None else -len(r["input_ids"]) for r in self.rows]


def build(spec: DatasetSpec, tokenizer: Any, image_id: int, patches: int, processor: ImageProcessor,
          seed: int = 0) -> LlavaData:
    """`spec` is the DatasetSpec (format llava); `tokenizer` already knows `<image>` as `image_id`."""
    from kubetune.data.encode import Encoder
    from kubetune.data.templates import PROMPT_TEMPLATES, system_text

    if spec.concat:
        raise DataError("dataset.concat: format llava reads one source (merge the files into one directory)")
    files = files_of(spec.uri, spec.file_type.value)
    folder = _image_folder(spec, files)
    with tempfile.TemporaryDirectory(prefix="kubetune-llava-") as tmp:
        raw = load_rows(files, spec.file_type.value, cache_dir=tmp).to_list()
    where = str(files[0]) if len(files) == 1 else spec.uri
    if spec.max_samples and spec.max_samples < len(raw):
        import random

        raw = random.Random(seed).sample(raw, spec.max_samples)
    template_name = spec.prompt_template.value
    encoder = Encoder(tokenizer, None if template_name == "auto" else PROMPT_TEMPLATES[template_name], None,
                      auto=template_name == "auto")
    system = system_text(spec.system, spec.system_template.value if spec.system_template else None)
    conversations, images = [], []
    to_conversation = FORMATS[spec.format.value]  # llava or llava_image_only
    for n, row in enumerate(raw):
        try:
            conv = to_conversation(row)
        except RowError as exc:
            raise DataError(f"{where}: row {n}: {exc}") from None
        if system and not conv[0].get("system"):
            conv[0] = {**conv[0], "system": system}
        conversations.append(conv)
        images.append(_image_path(row.get("image"), folder, f"{where}: row {n}: image"))
    rows, cut, no_loss = [], 0, 0
    for n, (enc, image) in enumerate(zip(encoder.encode_batch(conversations), images)):
        ids, labels = expand(enc.input_ids, image_id, patches, enc.labels)
        assert labels is not None  # training rows are encoded with their labels
        if len(ids) > spec.max_length:
            if IMAGE_INDEX in ids[spec.max_length:]:
                cut += 1  # the image itself would be cut: nothing sensible to train on
                continue
            ids, labels = ids[:spec.max_length], labels[:spec.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            no_loss += 1
            continue
        rows.append({"input_ids": ids, "labels": labels, "image": image, "where": f"{where}: row {n}: image"})
    if not rows:
        raise DataError(f"{where}: no usable samples ({cut} cut by maxLength inside the image, {no_loss} with "
                        "nothing to learn)")
    report = {"rows": len(raw), "samples": len(rows), "with_image": sum(r["image"] is not None for r in rows),
              "dropped_image_cut": cut, "dropped_no_loss": no_loss, "image_folder": str(folder),
              "image_tokens": patches}
    return LlavaData(rows, processor, spec.pad_image_to_square, report)


def _image_folder(spec: DatasetSpec, files: list[Path]) -> Path:
    if spec.image_folder is None:
        return files[0].parent
    try:
        return local_path(spec.image_folder, repo_type="dataset")
    except StorageError as exc:
        raise DataError(f"dataset.imageFolder {exc}") from None


def _image_path(value: Any, folder: Path, where: str) -> str | None:
    if value in (None, ""):
        return None
    path = folder / value
    if not path.is_file():
        raise DataError(f"{where}: {value} not found in {folder} (dataset.imageFolder)")
    return str(path)


def collate(rows: list[dict[str, Any]], pad_token_id: int, blank: Any) -> dict[str, Any]:
    """Token tensors as for text, plus the batch's images stacked in row order (a blank one when it has none)."""
    import torch

    from kubetune.data.collate import collate as collate_text

    batch = collate_text(rows, pad_token_id=pad_token_id)
    images = [r["pixel_values"] for r in rows if r["pixel_values"] is not None]
    batch["pixel_values"] = torch.stack(images) if images else blank.unsqueeze(0)
    return batch
