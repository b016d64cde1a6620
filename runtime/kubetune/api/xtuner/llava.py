"""XTuner's `LLaVAModel` configs → a FineTuneJob's `model.vision`, `method.vision` and LLaVA dataset. XTuner says what
trains with freeze flags and optional LoRA dicts; kubetune with a stage: pretrain (projector only, LLM and encoder
frozen) or finetune (projector and LLM, by method type, plus encoder LoRA). A combination that has no stage (a frozen
LLM beside a trained encoder, an encoder trained whole) is a problem; a 4-bit frozen LLM under the pretrain stage is a
note (kubetune keeps it in its dtype)."""

from __future__ import annotations

from typing import Any

from .common import DTYPES, Mapper, as_dict, quantization, read_all, to_uri
from .reader import Sym

# XTuner's LLaVAModel defaults (xtuner/model/llava.py).
DEFAULTS = {"freeze_llm": False, "freeze_visual_encoder": False, "visual_select_layer": -2, "projector_depth": 2}
FORMATS = {"llava_map_fn": "llava", "llava_image_only_map_fn": "llava_image_only"}


def _flag(m: Mapper, model: dict, name: str) -> Any:
    return m.value(model.get(name, DEFAULTS[name]), f"model.{name}", m.line("model"))


def _lora(m: Mapper, lora: dict) -> dict[str, Any]:
    out = {"r": lora.get("r", 8), "alpha": lora.get("lora_alpha", 8), "dropout": lora.get("lora_dropout", 0.0)}
    if lora.get("bias", "none") != "none":
        m.problem(m.line("model"), f"model: a LLaVA LoRA with bias={lora['bias']!r} (kubetune's LLaVA adapters "
                                   "have no bias)")
    if isinstance(lora.get("target_modules"), (list, tuple)):
        out["targetModules"] = list(lora["target_modules"])
    return out


def model_spec(m: Mapper, model: dict) -> dict[str, Any]:
    llm, encoder = as_dict(model.get("llm")), as_dict(model.get("visual_encoder"))
    line = m.line("model")
    out: dict[str, Any] = {"uri": to_uri(m.value(llm.get("pretrained_model_name_or_path"), "model.llm", line))}
    if llm.get("trust_remote_code"):
        out["trustRemoteCode"] = True
    dtype = llm.get("torch_dtype")
    if isinstance(dtype, Sym) and dtype.name in DTYPES:
        out["dtype"] = DTYPES[dtype.name]
    vision: dict[str, Any] = {
        "encoder": to_uri(m.value(encoder.get("pretrained_model_name_or_path"), "model.visual_encoder", line)),
        "selectLayer": _flag(m, model, "visual_select_layer"), "projectorDepth": _flag(m, model, "projector_depth")}
    if model.get("pretrained_pth"):
        vision["projector"] = to_uri(m.value(model["pretrained_pth"], "model.pretrained_pth", line))
    out["vision"] = vision
    return out


def method_spec(m: Mapper, model: dict) -> dict[str, Any]:
    line = m.line("model")
    llm, llm_lora, encoder_lora = as_dict(model.get("llm")), model.get("llm_lora"), model.get("visual_encoder_lora")
    quantized = isinstance(llm.get("quantization_config"), dict)
    freeze_llm, freeze_encoder = _flag(m, model, "freeze_llm"), _flag(m, model, "freeze_visual_encoder")
    if not freeze_encoder and not encoder_lora:
        m.problem(line, "model: freeze_visual_encoder=False trains the whole image encoder; kubetune trains it only "
                        "through LoRA (method.vision.encoderLora)")
    if freeze_llm and not llm_lora and not encoder_lora:
        if quantized:
            read_all(llm.get("quantization_config"))
            m.note(line, "model.llm.quantization_config: kubetune's pretrain stage keeps the frozen LLM in its dtype, "
                         "not 4-bit (more memory; the projector learns against the unquantized LLM)")
        return {"type": "full", "vision": {"stage": "pretrain"}}
    if freeze_llm and not llm_lora:
        m.problem(line, "model: a frozen LLM beside a trained encoder LoRA has no kubetune stage (finetune trains the "
                        "LLM fully or through method.lora)")
    scheme = "qlora" if llm_lora and quantized else "lora" if llm_lora else "full"
    vision: dict[str, Any] = {"stage": "finetune"}
    if isinstance(encoder_lora, dict):
        vision["encoderLora"] = _lora(m, encoder_lora)
    out: dict[str, Any] = {"type": scheme}
    if isinstance(llm_lora, dict):
        out["lora"] = _lora(m, llm_lora)
    if scheme == "qlora":
        out["quantization"] = quantization(m, llm["quantization_config"])
    out["vision"] = vision
    return out


def dataset_spec(m: Mapper, parts: list[tuple[dict, int]]) -> dict[str, Any]:
    """One LLaVADataset (or several sharing one image folder) → dataset with its images and template."""
    if not parts:
        return {}
    first, line = parts[0]
    if any(not isinstance(p.get("type"), Sym) or p["type"].name != "LLaVADataset" for p, _ in parts):
        m.problem(line, "dataset: a LLaVA model trains from LLaVADataset entries")
        return {}
    folders = {m.value(p.get("image_folder"), "dataset.image_folder", at) for p, at in parts}
    if len(folders) > 1:
        m.problem(line, "dataset: LLaVA datasets with different image folders (kubetune reads one dataset.imageFolder)")
        return {}
    fmts = []
    for p, at in parts:
        fn = p.get("dataset_map_fn")
        if isinstance(fn, Sym) and fn.name in FORMATS:
            fmts.append(FORMATS[fn.name])
        else:
            m.problem(at, f"dataset_map_fn: {getattr(fn, 'path', fn)} is not one of XTuner's LLaVA map fns")
            return {}
        if p.get("offline_processed_text_folder"):
            m.note(at, "offline_processed_text_folder: kubetune tokenizes data_path itself (and caches it)")
    sources = [{"uri": to_uri(m.value(p.get("data_path"), "dataset.data_path", at)), "format": f}
               for (p, at), f in zip(parts, fmts)]
    out: dict[str, Any] = dict(sources[0])
    if sources[1:]:
        out["concat"] = sources[1:]
    out["imageFolder"] = to_uri(folders.pop())
    template = as_dict(first.get("template_map_fn")).get("template") or m.get("prompt_template")
    if isinstance(template, Sym):
        out["promptTemplate"] = template.name
    out["maxLength"] = m.value(first.get("max_length"), "max_length", line)
    out["packToMaxLength"] = False
    out["padImageToSquare"] = bool(first.get("pad_image_to_square", False))
    sampler = as_dict(as_dict(m.get("train_dataloader")).get("sampler"))
    if isinstance(sampler.get("type"), Sym) and sampler["type"].name == "LengthGroupedSampler":
        out["groupByModalityLength"] = sampler.get("length_property") == "modality_length"
    return {k: v for k, v in out.items() if v is not None}
