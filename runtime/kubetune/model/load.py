"""Inference loading, for `chat`, `serve`, LLaVA and the evaluations: a model from any URI, optionally quantized,
with a LoRA adapter folded in (one forward per token afterwards, no adapter overhead) or, for a server, several
adapters kept beside the base weights (each request picks one), plus the defaults a converted adapter carries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.errors import ModelLoadError
from kubetune.storage import StorageError, local_path

from .dtypes import NAMES, bitsandbytes_config, torch_dtype
from .families import refuse_non_decoder_at
from .native import native_path


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    template: str | None  # from the adapter's kubetune_config.yaml, when there is one
    system: str | None
    # Served beside the base weights (PEFT adapter name → the template and system prompt it was trained with).
    adapters: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)


def load(uri: str, adapter: str | None = None, bits: int | None = None, dtype: str = "auto",
         offload_folder: str | None = None, trust_remote_code: bool = False) -> Loaded:
    adapter_path = _local(adapter, "adapter") if adapter else None
    model, tokenizer, path = _base(uri, adapter_path, bits, dtype, offload_folder, trust_remote_code)
    if adapter_path:
        model = _with_adapter(model, adapter_path)
        # Quantized weights cannot take the update exactly: keep the adapter beside them instead.
        model = model if bits else model.merge_and_unload()
    model.eval()
    template, system = trained_defaults(adapter_path or path)
    return Loaded(model, tokenizer, template, system)


def load_adapters(uri: str, adapters: dict[str, str], bits: int | None = None, dtype: str = "auto",
                  trust_remote_code: bool = False) -> Loaded:
    """The base model with every adapter loaded beside it, unmerged: PEFT applies to each row of a batch the adapter
    its request named (`adapter_names`), and the base weights answer the rest."""
    paths = {name: _local(a, f"adapter {name}") for name, a in adapters.items()}
    model, tokenizer, path = _base(uri, None, bits, dtype, None, trust_remote_code)
    for name, adapter_path in paths.items():
        model = _with_adapter(model, adapter_path, name)
    model.eval()
    template, system = trained_defaults(path)
    return Loaded(model, tokenizer, template, system, {n: trained_defaults(p) for n, p in paths.items()})


def _base(uri: str, adapter_path: Path | None, bits: int | None, dtype: str, offload_folder: str | None,
          trust_remote_code: bool) -> tuple[Any, Any, Path]:
    import warnings

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # A REPL and a server log: no weight-loading progress bars or library deprecation notices in between.
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    path = native_path(_local(uri, "model"))
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "low_cpu_mem_usage": True}
    if dtype in NAMES:
        kwargs["dtype"] = torch_dtype(dtype)
    elif not cuda:
        kwargs["dtype"] = torch.float32  # CPU kernels for half precision are slow or missing
    else:
        kwargs["dtype"] = "auto"
    if bits:
        kwargs["quantization_config"] = bitsandbytes_config(bits)
    if cuda:
        kwargs["device_map"] = "auto"
        if offload_folder:
            kwargs["offload_folder"] = offload_folder
    refuse_non_decoder_at(path, trust_remote_code, f"model {uri}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_path if _has_tokenizer(adapter_path) else path),
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        # The advice goes first: transformers' own message about remote code is long, and a cut one loses it.
        hint = "the repository ships its own code: pass --trust-remote-code to run it; " \
            if "trust_remote_code" in str(exc) and not trust_remote_code else ""
        raise ModelLoadError(f"{uri}: cannot load a model from {path}: {hint}"
                             f"{' '.join(str(exc).split())[:300]}") from None
    return model, tokenizer, path


def _local(uri: str, what: str) -> Path:
    try:
        return local_path(uri, repo_type="model")
    except StorageError as exc:
        raise ModelLoadError(f"{what} {exc}") from None


def _has_tokenizer(path: Path | None) -> bool:
    return path is not None and ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file())


def _with_adapter(model: Any, adapter: Path, name: str = "default") -> Any:
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise ModelLoadError(f"--adapter {adapter}: no adapter_config.json (convert a checkpoint with "
                             f"`kubetune convert pth_to_hf` first)")
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(adapter), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(adapter), adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # another base's adapter: shapes do not fit
        raise ModelLoadError(f"adapter {name} ({adapter}): cannot load over this model: "
                             f"{' '.join(str(exc).split())[:300]}") from None


def trained_defaults(path: Path) -> tuple[str | None, str | None]:
    """Prompt template and system prompt of the run that produced this adapter or model."""
    config = path / "kubetune_config.yaml"
    if not config.is_file():
        return None, None
    from kubetune.api.loader import load_finetunejob
    from kubetune.data.templates import system_text

    try:
        ds = load_finetunejob(config).spec.dataset
    except Exception:  # an old or hand-edited file must not stop serving; the flags still apply
        return None, None
    return ds.prompt_template.value, system_text(ds.system, ds.system_template.value if ds.system_template else None)
