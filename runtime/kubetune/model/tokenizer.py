"""Load the tokenizer of a ModelSpec from wherever its URI points."""

from __future__ import annotations

from typing import Any

from kubetune.errors import ModelLoadError
from kubetune.storage import StorageError, local_path

from .native import native_path

__all__ = ["ModelLoadError", "load_tokenizer"]


def load_tokenizer(model: Any) -> Any:
    from transformers import AutoTokenizer

    try:
        path = native_path(local_path(model.uri, repo_type="model"))
    except StorageError as exc:
        raise ModelLoadError(f"model.uri {exc}") from None
    try:
        # Right padding: the collator and the loss assume real tokens come first.
        override = {"eos_token": model.eos_token} if getattr(model, "eos_token", None) else {}
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=model.trust_remote_code,
                                             padding_side="right", **override)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError for unusable folders
        hint = " (this model needs trustRemoteCode: true)" if "trust_remote_code" in str(exc) else ""
        raise ModelLoadError(f"model.uri {model.uri}: cannot load a tokenizer from {path}: "
                             f"{' '.join(str(exc).split())[:300]}{hint}") from None
