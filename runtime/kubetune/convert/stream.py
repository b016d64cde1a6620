"""Safetensors in and out one tensor at a time.

A safetensors file is an 8-byte header length, a JSON header (name → dtype, shape, byte range) and the raw bytes.
Shapes and dtypes do not change in a merge, so the output headers are known before any weight is read: each tensor
is read with a plain positioned read (no memory map, so the page cache never counts against us), transformed and
written straight to its place. Peak memory is about the largest tensor, not a shard. Tensors are NumPy arrays (bf16
as its raw 16 bits, see `to_float32`/`from_float32`), so the merge does not even import torch.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .shards import shard_names, write_index

@dataclass
class Entry:
    source: Path
    key: str
    dtype: str
    shape: list[int]
    start: int  # absolute offset in the source file
    size: int


def read_header(path: Path) -> tuple[list[Entry], dict]:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", {}) or {}
    entries = [Entry(path, key, meta["dtype"], meta["shape"], 8 + length + meta["data_offsets"][0],
                     meta["data_offsets"][1] - meta["data_offsets"][0]) for key, meta in header.items()]
    return sorted(entries, key=lambda e: e.start), metadata


NUMPY = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16", "I64": "int64", "I32": "int32",
         "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool", "F8_E4M3": "uint8", "F8_E5M2": "uint8"}


def read_array(entry: Entry, handle: Any) -> Any:
    """The tensor as a NumPy array (bf16 and fp8 as their raw bits)."""
    import numpy as np

    array: Any = np.empty(entry.size, dtype=np.uint8)
    handle.seek(entry.start)
    handle.readinto(memoryview(array))
    return array.view(NUMPY[entry.dtype]).reshape(entry.shape)


def to_float32(array: Any, dtype: str) -> Any:
    import numpy as np

    if dtype == "BF16":  # bf16 is the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def from_float32(array: Any, dtype: str) -> Any:
    import numpy as np

    if dtype == "BF16":  # round to nearest even, as torch does
        bits = array.view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return array.astype(NUMPY[dtype])


def plan(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    shards: list[list[Entry]] = [[]]
    used = 0
    for entry in entries:
        if shards[-1] and used + entry.size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(entry)
        used += entry.size
    return shards


def write_shard(path: Path, entries: list[Entry], transform: Callable[[str, Any, str], Any], metadata: dict) -> None:
    import numpy as np

    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        header[e.key] = {"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.size]}
        offset += e.size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def load(e: Entry) -> Any:  # reads and NumPy math release the GIL: two tensors in flight while one is written
        with e.source.open("rb") as handle:
            array = np.ascontiguousarray(transform(e.key, read_array(e, handle), e.dtype))
        if array.nbytes != e.size:
            raise ValueError(f"{e.key}: transformed tensor has {array.nbytes} bytes, expected {e.size}")
        return array

    with path.open("wb") as out, ThreadPoolExecutor(max_workers=2) as pool:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        pending: deque = deque()
        for e in entries:
            pending.append(pool.submit(load, e))
            if len(pending) > 2:
                out.write(memoryview(pending.popleft().result().reshape(-1).view(np.uint8)))
        while pending:
            out.write(memoryview(pending.popleft().result().reshape(-1).view(np.uint8)))


def rewrite(files: list[Path], out_dir: Path, max_bytes: int, transform: Callable[[str, Any, str], Any],
            log: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Re-shard `files` into `out_dir` (model.safetensors, or model-0000i-of-0000n + index), transforming each
    array (`transform(key, array, safetensors_dtype)`); shapes and dtypes must not change."""
    entries: list[Entry] = []
    metadata: dict = {"format": "pt"}
    for path in files:
        found, meta = read_header(path)
        entries += found
        metadata.update(meta)
    shards = plan(entries, max_bytes)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = shard_names(len(shards))
    for i, (name, shard) in enumerate(zip(names, shards), start=1):
        tmp = out_dir / (name + ".tmp")
        write_shard(tmp, shard, transform, metadata)
        os.replace(tmp, out_dir / name)
        log(f"wrote {name} ({i}/{len(shards)})")
    if len(shards) > 1:
        write_index(out_dir, {e.key: name for name, shard in zip(names, shards) for e in shard},
                    sum(e.size for e in entries))
    return [out_dir / n for n in names]
