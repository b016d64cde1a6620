"""Read a dataset source (json, jsonl, parquet, arrow; a file or a folder; local, pvc://, hf://) as an Arrow-backed,
memory-mapped `datasets.Dataset`, with errors that name the file and the line."""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from kubetune.errors import DataError
from kubetune.storage import StorageError, local_path

SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}
# A row is materialised whole several times over (Python objects, Arrow, token ids per worker): one 100 MB row took
# a 24 GB machine down. Rows are measured while streaming, before anything is parsed.
MAX_ROW_BYTES = 16 << 20


def max_row_bytes() -> int:
    import os

    return int(os.environ.get("KUBETUNE_MAX_ROW_BYTES") or MAX_ROW_BYTES)




def files_of(uri: str, file_type: str = "auto") -> list[Path]:
    try:
        root = local_path(uri, repo_type="dataset")
    except StorageError as exc:
        raise DataError(str(exc)) from None
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise DataError(f"{uri}: no .json, .jsonl, .parquet or .arrow files in {root}")
    kinds = {_kind(p, file_type) for p in files}
    if len(kinds) != 1:
        raise DataError(f"{uri}: mixes file types {sorted(kinds)}; keep one type per source")
    return files


def _kind(path: Path, file_type: str) -> str:
    if file_type != "auto":
        return "json" if file_type in ("json", "jsonl") else file_type
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; set dataset.fileType")
    return SUFFIXES[path.suffix]


def fingerprint(files: list[Path]) -> str:
    """Content hash of the files (so a cache survives renames and touches, and notices edits). Text files are
    checked to be UTF-8 in the same pass: Arrow would store bad bytes and fail much later, far from the line."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.name).encode())
        text = path.suffix in (".json", ".jsonl")
        decoder = codecs.getincrementaldecoder("utf-8")()
        line = 1
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
                if text:
                    try:
                        decoder.decode(block)
                    except UnicodeDecodeError as exc:
                        where = line + block[:exc.start].count(b"\n")
                        raise DataError(f"{path}: line {where}: not valid UTF-8") from None
                    line += block.count(b"\n")
    return digest.hexdigest()


def load_rows(files: list[Path], file_type: str = "auto", cache_dir: str | None = None) -> Any:
    import datasets

    kind = _kind(files[0], file_type)
    datasets.disable_progress_bars() if not _verbose() else None
    try:
        if kind == "arrow":
            return datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in files])
        if kind != "json":
            return datasets.load_dataset(kind, data_files=[str(p) for p in files], split="train", cache_dir=cache_dir)
        with tempfile.TemporaryDirectory(prefix="kubetune-rows-") as scratch:
            work = Path(cache_dir) if cache_dir is not None else Path(scratch)
            inputs = [_as_json_lines(p, work) if _is_json_array(p) else _bounded_lines(p) for p in files]
            return datasets.load_dataset(kind, data_files=[str(p) for p in inputs], split="train",
                                         cache_dir=cache_dir)
    except DataError:
        raise
    except Exception as exc:  # datasets wraps parse errors in its own types; find the line ourselves
        if kind == "json":
            for path in files:
                _diagnose_json(path)
        raise DataError(f"{', '.join(map(str, files))}: cannot read as {kind}: {_short(exc)}") from None


def _too_big(path: Path, where: str, size: int, limit: int) -> DataError:
    return DataError(f"{path}: {where} is over {size / 2**20:.1f} MiB; rows over {limit / 2**20:g} MiB are refused "
                     "before loading (each would be held in memory whole, several times): split it into smaller "
                     "rows, or raise KUBETUNE_MAX_ROW_BYTES")


def _bounded_lines(path: Path, block: int = 1 << 20) -> Path:
    """`path`, once every line is known to be under the row limit (streamed: never more than a block in memory)."""
    limit, line, current = max_row_bytes(), 1, 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(block), b""):
            start = 0
            while (newline := chunk.find(b"\n", start)) >= 0:
                if current + newline - start > limit:
                    raise _too_big(path, f"line {line}", current + newline - start, limit)
                line, current, start = line + 1, 0, newline + 1
            current += len(chunk) - start
            if current > limit:
                raise _too_big(path, f"line {line}", current, limit)
    return path


def _is_json_array(path: Path, block: int = 1 << 16) -> bool:
    """Whether the first character after any amount of leading whitespace (and a UTF-8 byte-order mark) is `[`:
    padding must not turn an array into "lines" that escape the per-row bound."""
    with path.open("rb") as fh:
        head = fh.read(block).removeprefix(b"\xef\xbb\xbf")
        while head:
            stripped = head.lstrip()
            if stripped:
                return stripped[:1] == b"["
            head = fh.read(block)
    return False


_SKIP = re.compile(r"[\s,]*")


def _skip(text: str, pos: int) -> int:
    """Where the separators after `pos` end (the pattern matches the empty string too)."""
    match = _SKIP.match(text, pos)
    assert match is not None
    return match.end()


def _as_json_lines(path: Path, work: Path, block: int = 1 << 22) -> Path:
    """Stream a JSON array into JSON lines, one element at a time. `datasets` would `json.load` the whole array into
    Python objects (gigabytes for a large file; XTuner issues #443, #758); JSON lines are read in Arrow blocks."""
    work.mkdir(parents=True, exist_ok=True)
    target = work / f"{path.stem}-{abs(hash(str(path)))}.jsonl"
    decoder = json.JSONDecoder()
    line, index, limit = 1, 0, max_row_bytes()
    with path.open("r", encoding="utf-8-sig") as fin, target.open("w", encoding="utf-8") as fout:
        buf = fin.read(block)
        pos = _skip(buf, 0)
        while pos == len(buf) and buf:  # leading whitespace longer than a block
            line += buf.count("\n")
            buf = fin.read(block)
            pos = _skip(buf, 0)
        if buf[pos:pos + 1] != "[":
            raise DataError(f"{path}: expected a JSON array")
        line += buf.count("\n", 0, pos)
        pos += 1
        eof = False
        while True:
            skip = _skip(buf, pos)
            line += buf.count("\n", pos, skip)
            pos = skip
            if pos >= len(buf) or (not eof and len(buf) - pos < block // 2):
                more = fin.read(block)
                if more or pos:
                    buf, pos = buf[pos:] + more, 0  # compact only once per block, not once per row
                eof = not more
                if pos >= len(buf) and eof:
                    raise DataError(f"{path}: the JSON array is not closed (missing ']')")
                continue
            if buf[pos] == "]":
                return target
            try:
                row, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as exc:
                if len(buf) - pos > limit:  # the row is still open past the limit: never read the rest of it
                    raise _too_big(path, f"row {index} (from line {line})", len(buf) - pos, limit) from None
                if not eof:
                    more = fin.read(block)
                    buf, pos, eof = buf[pos:] + more, 0, not more
                    continue
                raise DataError(f"{path}: line {line + buf.count(chr(10), pos, exc.pos)}: not valid JSON: "
                                f"{exc.msg}") from None
            if end == len(buf) and not eof:  # a number or literal could continue in the next block
                more = fin.read(block)
                buf, pos, eof = buf[pos:] + more, 0, not more
                continue
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {index}: expected an object, got {type(row).__name__}")
            if end - pos > limit:
                raise _too_big(path, f"row {index} (from line {line})", end - pos, limit)
            fout.write(json.dumps(row, ensure_ascii=False))
            fout.write("\n")
            line += buf.count("\n", pos, end)
            pos = end
            index += 1


def _diagnose_json(path: Path) -> None:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not valid UTF-8 (byte {exc.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {i}: expected an object, got {type(row).__name__}")
        _check_same_types(path, rows)
        return
    rows = []
    for n, row_text in enumerate(text.splitlines(), 1):
        if not row_text.strip():
            continue
        try:
            row = json.loads(row_text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n}: not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {n}: expected an object, got {type(row).__name__}")
        rows.append(row)
    _check_same_types(path, rows)


def _check_same_types(path: Path, rows: list[dict[str, Any]]) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows):
        for key, value in row.items():
            kind = type(value).__name__ if value is not None else None
            if kind is None:
                continue
            if key in seen and seen[key][0] != kind:
                raise DataError(f"{path}: row {i}: field {key!r} is {kind} here but {seen[key][0]} in row "
                                f"{seen[key][1]}")
            seen.setdefault(key, (kind, i))


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _verbose() -> bool:
    import os

    return os.environ.get("KUBETUNE_PROGRESS", "1") != "0"
