"""The names kubetune's specs and flags give weight dtypes, and the one place they become torch dtypes and
bitsandbytes quantization configs (training, chat, serve and LLaVA loading all come through here)."""

from __future__ import annotations

from typing import Any

NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def torch_dtype(name: str) -> Any:
    """`fp32`, `bf16` or `fp16` as a torch dtype."""
    import torch

    return getattr(torch, NAMES[name])


def dtype_name(dtype: Any, default: str = "fp32") -> str:
    """A torch dtype's name here (`default` for None or one without a name)."""
    return next((name for name in NAMES if dtype is not None and torch_dtype(name) == dtype), default)


def bitsandbytes_config(bits: int, quant_type: str = "nf4", double_quant: bool = True,
                        compute_dtype: Any = None, storage_dtype: Any = None) -> Any:
    """8-bit, or 4-bit with the given type, double quantization and compute dtype (bf16 on a GPU, fp32 on a CPU when
    not given)."""
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    extra = {"bnb_4bit_quant_storage": storage_dtype} if storage_dtype is not None else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype, **extra)
