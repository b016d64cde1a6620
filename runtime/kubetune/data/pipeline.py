"""Build the training data of a DatasetSpec: read → map fn → template → tokenize/mask → pack → cache.

The result is cached under a key made of the data's content hash, the tokenizer and every setting that changes the
output, so a restart or another rank reuses it. One process per node builds while the others wait on a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TYPE_CHECKING

from . import pack as packing
from .encode import IGNORE_INDEX, Encoder, check_template
from .formats import FORMATS, RowError
from .source import DataError, files_of, fingerprint, load_rows
from .templates import PROMPT_TEMPLATES, system_text

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import DatasetSpec

PIPELINE_VERSION = "2"  # bump when the output of the same inputs changes


def default_cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune")) / "datasets"


def default_num_proc() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


@dataclass
class Built:
    dataset: Any  # datasets.Dataset with input_ids, labels, seq_lens
    report: dict[str, Any]
    path: Path
    from_cache: bool = False


@dataclass
class Source:
    uri: str
    format: str
    file_type: str
    split: str
    system: str | None
    max_samples: int | None
    files: list[Path] = field(default_factory=list)


def sources_of(spec: DatasetSpec) -> list[Source]:
    out = []
    for src in [spec, *spec.concat]:
        system = system_text(src.system, src.system_template.value if src.system_template else None)
        out.append(Source(src.uri, src.format.value, src.file_type.value, src.split, system, src.max_samples))
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    digest.update(repr((tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(tokenizer, "chat_template", None)))
                  .encode())
    return digest.hexdigest()


def build(spec: DatasetSpec, tokenizer: Any, *, seed: int = 0, cache_root: Path | None = None, num_proc: int | None = None,
          log: Callable[[str], None] = print) -> Built:
    """The packed (or truncated) token sequences for `spec` (a kubetune.api DatasetSpec), cached."""
    template_name = spec.prompt_template.value
    template = None if template_name == "auto" else PROMPT_TEMPLATES[template_name]
    sources = sources_of(spec)
    if all(s.format == "pretrain" for s in sources):
        template = None  # pretraining text is used as is (XTuner's pretrain configs set no template_map_fn)
    else:
        check_template(tokenizer, template_name, template)
    for src in sources:
        src.files = files_of(src.uri, src.file_type)

    key = _cache_key(spec, sources, tokenizer, seed)
    root = cache_root or default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with _build_lock(root / f"{key}.lock", log):
        if (final / "report.json").exists():
            return _load(final, from_cache=True)
        for stale in root.glob(f"{key}.tmp-*"):  # a killed build's leftovers: under the lock, nobody else writes them
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f"{key}.tmp-{os.getpid()}"
        try:
            report = _build(spec, tokenizer, template_name, sources, seed,
                            num_proc or spec.num_proc or default_num_proc(), tmp, log)
            (tmp / "report.json").write_text(json.dumps(report, indent=2))
            os.replace(tmp, final)  # atomic: a half-built cache is never visible
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    built = _load(final, from_cache=False)
    log(summary(built.report))
    return built


def _cache_key(spec: DatasetSpec, sources: list[Source], tokenizer: Any, seed: int) -> str:
    digest = hashlib.sha256()
    settings = {"v": PIPELINE_VERSION, "template": spec.prompt_template.value, "max_length": spec.max_length,
                "pack": spec.pack_to_max_length, "budget": spec.max_packed_length, "shuffle": spec.shuffle_before_pack, "seed": seed,
                "sources": [(s.format, s.system, s.max_samples, s.split, fingerprint(s.files)) for s in sources],
                "tokenizer": tokenizer_fingerprint(tokenizer)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:24]


class _build_lock:
    """An exclusive file lock: the first process builds; the others wait (with a deadline) and then read the cache.

    A POSIX record lock (lockf), not flock: a flock belongs to the open file, which the tokenizing workers forked by
    `datasets` inherit, so after a kill -9 of the builder its orphaned workers held the lock and the next run waited
    an hour. A record lock belongs to the process and dies with it (and works on NFS too)."""

    def __init__(self, path: Path, log: Callable[[str], None]):
        self.path, self.log = path, log
        self.timeout = float(os.environ.get("KUBETUNE_DATASET_TIMEOUT", "60")) * 60

    def __enter__(self):
        self.fh = self.path.open("w")
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.lockf(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the platform reports a held lock
                if not told:
                    self.log(f"waiting for another process to build the dataset cache ({self.path.with_suffix('')})")
                    told = True
                if time.monotonic() > deadline:
                    raise DataError(f"gave up after {self.timeout / 60:g} min waiting for the dataset cache at "
                                    f"{self.path.with_suffix('')}; raise KUBETUNE_DATASET_TIMEOUT (minutes) if "
                                    "preprocessing is that slow") from None
                time.sleep(0.5)

    def __exit__(self, *exc):
        fcntl.lockf(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _load(path: Path, from_cache: bool) -> Built:
    import datasets

    return Built(datasets.Dataset.from_file(str(path / "data.arrow")), json.loads((path / "report.json").read_text()),
                 path, from_cache)


def _encoded_features():
    import datasets

    return datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                              "labels": datasets.List(datasets.Value("int32")), "length": datasets.Value("int32"),
                              "truncated": datasets.Value("bool"), "has_loss": datasets.Value("bool"),
                              "row": datasets.Value("int64")})


def encode_rows(batch: dict[str, list], indices: list[int], *, fmt: str, system: str | None, template_name: str,
                tokenizer: Any, max_length: int | None, where: str) -> Any:
    """datasets.map function: raw rows (decoded by datasets, so mixed-type JSON columns arrive as values) → token ids,
    labels and bookkeeping columns, returned as an Arrow table: building it from flat NumPy buffers is far cheaper
    than letting datasets convert Python lists."""
    import itertools

    import numpy as np
    import pyarrow as pa

    template = None if template_name in ("auto", "none") else PROMPT_TEMPLATES[template_name]
    encoder = Encoder(tokenizer, template, max_length, auto=template_name == "auto")
    conversations, kept = [], []
    keys = list(batch)
    for pos, values in enumerate(zip(*batch.values())):
        row = dict(zip(keys, values))
        try:
            conv = FORMATS[fmt](row)
        except RowError as exc:
            raise DataError(f"{where}: row {indices[pos]}: {exc}") from None
        if not conv:
            continue  # the format drops this row by design (alpaca <nooutput>, oasst1 without an answer)
        if system and not conv[0].get("system"):
            conv[0] = {**conv[0], "system": system}
        conversations.append(conv)
        kept.append(indices[pos])
    encoded = encoder.encode_batch(conversations)
    lengths = np.fromiter((len(e.input_ids) for e in encoded), dtype=np.int32, count=len(encoded))
    offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).astype(np.int32)
    total = int(offsets[-1])
    ids = np.fromiter(itertools.chain.from_iterable(e.input_ids for e in encoded), dtype=np.int32, count=total)
    labels = np.fromiter(itertools.chain.from_iterable(e.labels for e in encoded), dtype=np.int32, count=total)
    has_loss: Any = np.zeros(len(encoded), dtype=bool)
    if total:
        labelled = (labels != IGNORE_INDEX).astype(np.int64)
        has_loss = np.add.reduceat(labelled, offsets[:-1]) > 0 if len(encoded) else has_loss
        has_loss &= lengths > 0
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
        "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels)),
        "length": pa.array(lengths), "truncated": pa.array([e.truncated for e in encoded], type=pa.bool_()),
        "has_loss": pa.array(has_loss), "row": pa.array(kept, type=pa.int64()),
    })


def _build(spec, tokenizer, template_name, sources, seed, num_proc, out: Path, log) -> dict[str, Any]:
    import datasets

    if num_proc > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # forked map workers would deadlock otherwise
    # Our own cache is the only one: datasets' fingerprint cache would grow without bound and, for Arrow sources,
    # write next to the user's files; intermediates live in the build directory and vanish with it.
    datasets.disable_caching()
    out.mkdir(parents=True)
    parts: list[Any] = []
    per_source: list[Any] = []
    kept: list[Any] = []
    pack = spec.pack_to_max_length
    features = _encoded_features()
    for src in sources:
        where = src.uri if len(src.files) != 1 else str(src.files[0])
        raw = load_rows(src.files, src.file_type, cache_dir=str(out / "hf"))
        rows = len(raw)
        if src.max_samples and src.max_samples < rows:
            raw = raw.shuffle(seed=seed).select(range(src.max_samples))
        effective = "none" if src.format == "pretrain" else template_name
        enc = raw.map(encode_rows, batched=True, batch_size=512, with_indices=True, remove_columns=raw.column_names,
                      features=features,
                      num_proc=num_proc if num_proc > 1 and len(raw) >= 2 * num_proc * 512 else None,
                      desc=f"tokenizing {Path(where).name}",
                      fn_kwargs=dict(fmt=src.format, system=src.system, template_name=effective, tokenizer=tokenizer,
                                     max_length=None if pack else spec.max_length, where=where))
        has_loss = column(enc, "has_loss")
        no_loss = len(has_loss) - sum(bool(x) for x in has_loss)
        offset = sum(len(part) for part in parts)
        # Samples with nothing to learn are left out by index rather than with `filter`, which would add an indices
        # mapping and force a full copy of the encoded data before packing.
        kept += [offset + i for i, ok in enumerate(has_loss) if ok]
        per_source.append({"uri": src.uri, "format": src.format, "rows": rows, "used_rows": len(raw),
                           "dropped_by_format": len(raw) - len(enc), "dropped_no_loss": no_loss,
                           "samples": len(enc) - no_loss, "truncated": int(sum(column(enc, "truncated")))})
        parts.append(enc)
    data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    data = data.with_format(None)
    if not kept:
        raise DataError(f"{sources[0].uri}: no usable samples (every row was empty or had nothing to learn)")
    all_lengths = column(data, "length")
    lengths = [all_lengths[i] for i in kept]
    capacity = (spec.max_packed_length or spec.max_length) if pack else spec.max_length
    if pack:
        local = packing.pack(lengths, capacity, shuffle=spec.shuffle_before_pack, seed=seed,
                             piece_length=spec.max_length)
    else:
        local = [[(i, 0, n)] for i, n in enumerate(lengths)]
    sequences = [[(kept[i], s, e) for i, s, e in seq] for seq in local]
    pack_report = packing.report(lengths, local, capacity)
    gather(data, sequences, out / "data.arrow")
    shutil.rmtree(out / "hf", ignore_errors=True)
    return {
        "sources": per_source, "samples": len(lengths), "tokens": sum(lengths),
        "truncated": sum(s["truncated"] for s in per_source), "split": pack_report.split_samples,
        "sequences": pack_report.sequences, "max_length": spec.max_length, "packed": pack, "sequence_tokens": capacity,
        "padding_waste": round(pack_report.padding_waste, 6),
        "padding_waste_unpacked": round(packing.padded_waste(lengths, spec.max_length), 6),
        "template": template_name,
    }


def column(data: Any, name: str) -> list[Any]:
    """A whole column as a list, read through Arrow (iterating `data[name]` would decode row by row)."""
    return data.with_format("arrow")[name].to_pylist() if len(data) else []


def gather(data: Any, sequences: list[list[packing.Piece]], path: Path, chunk: int = 256) -> None:
    """Write the sequences to an Arrow file, assembled from token slices of the (memory-mapped) encoded samples.

    Only one block of output sequences is in memory at a time: the encoded samples are read through zero-copy
    NumPy views of their Arrow buffers, and each finished block is streamed to disk.
    """
    import numpy as np
    import pyarrow as pa

    if data._indices is not None:
        data = data.flatten_indices()  # gather needs the rows in storage order
    table = data.data.table  # memory-mapped: the slices below are views of the files, not copies
    columns = {}
    for name in ("input_ids", "labels"):
        chunks = [c for c in table.column(name).chunks if len(c)]
        columns[name] = [c.values.to_numpy(zero_copy_only=False) for c in chunks]
        offsets = [c.offsets.to_numpy(zero_copy_only=False) for c in chunks]
    first_row = np.cumsum([0] + [len(o) - 1 for o in offsets])
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                        ("seq_lens", pa.list_(pa.int32()))])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for lo in range(0, len(sequences), chunk):
            block = sequences[lo:lo + chunk]
            ids, labels, lens, seq_offsets = [], [], [], [0]
            for seq in block:
                for idx, start, end in seq:
                    c = int(np.searchsorted(first_row, idx, side="right")) - 1
                    base = int(offsets[c][idx - first_row[c]])
                    ids.append(columns["input_ids"][c][base + start:base + end])
                    labels.append(columns["labels"][c][base + start:base + end])
                    lens.append(end - start)
                seq_offsets.append(seq_offsets[-1] + sum(e - s for _, s, e in seq))
            lens_offsets = np.concatenate(([0], np.cumsum([len(seq) for seq in block]))).astype(np.int32)
            offs = np.asarray(seq_offsets, dtype=np.int32)
            writer.write_table(pa.table({
                "input_ids": pa.ListArray.from_arrays(offs, pa.array(np.concatenate(ids).astype(np.int32, copy=False))),
                "labels": pa.ListArray.from_arrays(offs, pa.array(np.concatenate(labels).astype(np.int32,
                                                                                                copy=False))),
                "seq_lens": pa.ListArray.from_arrays(lens_offsets, pa.array(np.asarray(lens, dtype=np.int32))),
            }, schema=schema))


def summary(report: dict[str, Any]) -> str:
    lines = [f"dataset: {report['samples']} samples, {report['tokens']} tokens → {report['sequences']} sequences of "
             f"≤{report.get('sequence_tokens', report['max_length'])} tokens "
             f"({'packed' if report['packed'] else 'not packed'})"]
    for src in report["sources"]:
        lines.append(f"  {src['uri']} ({src['format']}): {src['rows']} rows, {src['samples']} samples, "
                     f"{src['dropped_by_format']} dropped by the format, {src['dropped_no_loss']} without loss tokens")
    if report["truncated"]:
        lines.append(f"  {report['truncated']} samples longer than maxLength were truncated")
    if report["split"]:
        lines.append(f"  {report['split']} samples longer than maxLength were split into pieces of maxLength")
    lines.append(f"  padding waste: {report['padding_waste']:.1%} "
                 f"(padding each sample to maxLength would waste {report['padding_waste_unpacked']:.1%})")
    return "\n".join(lines)
