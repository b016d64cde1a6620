"""`check-custom-dataset` and `log-dataset`: what the pipeline does to the data, stage by stage."""

from __future__ import annotations

import json
from typing import Any, Callable, TYPE_CHECKING

from .encode import Encoder, check_template
from .formats import FORMATS, RowError
from .pack import pack
from .pipeline import Source, sources_of
from .source import DataError, files_of, load_rows
from .show import banner, masked_text, report_bad
from .templates import PROMPT_TEMPLATES

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import DatasetSpec

def check_custom_dataset(spec: DatasetSpec, tokenizer: Any, out: Callable[[str], None] = print, samples: int = 10) -> int:
    """Print the first sample after each stage (as XTuner does), then check every row; return the bad-row count."""
    from .preference import PAIR_FORMATS, check

    if spec.format.value in PAIR_FORMATS:
        return check(spec, tokenizer, out)
    template_name = spec.prompt_template.value
    sources = sources_of(spec)
    template = None if template_name == "auto" else PROMPT_TEMPLATES[template_name]
    if not all(s.format == "pretrain" for s in sources):
        check_template(tokenizer, template_name, template)
    bad: list[str] = []
    for src in sources:
        src.files = files_of(src.uri, src.file_type)
        rows = load_rows(src.files, src.file_type)
        where = str(src.files[0]) if len(src.files) == 1 else src.uri
        effective = None if src.format == "pretrain" else template
        encoder = Encoder(tokenizer, effective, None if spec.pack_to_max_length else spec.max_length,
                          auto=template_name == "auto" and src.format != "pretrain")
        shown = src is not sources[0]
        convs: list[Any] = []
        for i, row in enumerate(rows):
            try:
                conv = FORMATS[src.format](row)
            except RowError as exc:
                bad.append(f"{where}: row {i}: {exc}")
                continue
            if conv and src.system and not conv[0].get("system"):
                conv[0] = {**conv[0], "system": src.system}
            if conv and len(convs) < samples:
                convs.append(conv)
            if conv and not shown:
                _show_stages(out, conv, effective, encoder)
                shown = True
        if spec.pack_to_max_length and convs and src is sources[0]:
            encoded = encoder.encode_batch(convs)
            _show_packed(out, [e.input_ids for e in encoded], [e.labels for e in encoded], spec.max_length)
    return report_bad(out, bad, [s.uri for s in sources])


def _show_stages(out, conv, template, encoder: Encoder) -> None:
    from .encode import apply_template

    out(banner("dataset after dataset_map_fn"))
    out(json.dumps({"conversation": conv}, ensure_ascii=False, indent=2))
    out(banner("dataset after adding templates"))
    templated = apply_template(conv, template) if template else conv
    if encoder.auto:
        templated = [{"text": "".join(text for kind, text, _ in encoder._auto_plan(conv) if kind == "text")}]
    out(json.dumps({"conversation": templated}, ensure_ascii=False, indent=2))
    enc = encoder.encode_batch([conv])[0]
    out(banner("encoded input_ids"))
    out(str(enc.input_ids))
    out(banner("encoded labels"))
    out(str(enc.labels))


def _show_packed(out, ids: list[list[int]], labels: list[list[int]], max_length: int) -> None:
    sequences = pack([len(x) for x in ids], max_length, shuffle=False)
    seq = sequences[0]
    packed_ids = [t for idx, s, e in seq for t in ids[idx][s:e]]
    packed_labels = [t for idx, s, e in seq for t in labels[idx][s:e]]
    out(banner("input_ids after packed to max_length"))
    out(str(packed_ids))
    out(banner("labels after packed to max_length"))
    out(str(packed_labels))
    out(f"sample lengths in this sequence: {[e - s for _, s, e in seq]}")


def log_sample(sample: dict[str, Any], tokenizer: Any, show: str, out: Callable[[str], None] = print) -> None:
    ids, labels = sample["input_ids"], sample["labels"]
    if show in ("text", "all"):
        out(banner("text"))
        out(tokenizer.decode(ids))
    if show in ("masked_text", "all"):
        out(banner("masked_text"))
        out(masked_text(tokenizer, labels))
    if show in ("input_ids", "all"):
        out(banner("input_ids"))
        out(str(ids))
    if show in ("labels", "all"):
        out(banner("labels"))
        out(str(labels))
    if len(sample.get("seq_lens") or []) > 1:
        out(f"packed: {len(sample['seq_lens'])} samples of lengths {list(sample['seq_lens'])}")


__all__ = ["check_custom_dataset", "log_sample", "masked_text", "DataError", "Source"]
