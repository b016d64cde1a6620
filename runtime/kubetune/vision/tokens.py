"""The `<image>` marker: one token in text, expanded into one placeholder id per image patch, whose embeddings the
projected image features replace."""

from __future__ import annotations

from typing import Any

from kubetune.data.encode import IGNORE_INDEX

IMAGE_TOKEN = "<image>"
# A negative id never reaches an embedding lookup by accident: it must be replaced, or indexing fails loudly.
IMAGE_INDEX = -200


def add_image_token(tokenizer: Any) -> int:
    """Make `<image>` a single (special) token of `tokenizer`; returns its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def expand(ids: list[int], image_id: int, patches: int, labels: list[int] | None = None
           ) -> tuple[list[int], list[int] | None]:
    """Each `<image>` token becomes `patches` placeholders (never labelled)."""
    out_ids: list[int] = []
    out_labels: list[int] | None = [] if labels is not None else None
    for k, token in enumerate(ids):
        if token == image_id:
            out_ids += [IMAGE_INDEX] * patches
            if out_labels is not None:
                out_labels += [IGNORE_INDEX] * patches
        else:
            out_ids.append(token)
            if out_labels is not None and labels is not None:
                out_labels.append(labels[k])
    return out_ids, out_labels


def collapse(ids: list[int], labels: list[int], image_id: int) -> tuple[list[int], list[int]]:
    """The inverse of `expand` for display: each run of placeholders back to one `<image>` token."""
    out_ids: list[int] = []
    out_labels: list[int] = []
    for k, token in enumerate(ids):
        if token == IMAGE_INDEX:
            if k and ids[k - 1] == IMAGE_INDEX:
                continue
            out_ids.append(image_id)
            out_labels.append(IGNORE_INDEX)
        else:
            out_ids.append(token)
            out_labels.append(labels[k])
    return out_ids, out_labels
