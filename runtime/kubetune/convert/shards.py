"""Reading and writing Hugging Face weight shards one at a time (safetensors or PyTorch .bin)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from kubetune.errors import ConvertError

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConvertError(f"--max-shard-size {text}: expected a size like 2GB, 500MB or 1GiB")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(number * scale)


def shard_files(model_dir: Path) -> list[Path]:
    """The weight files of a model directory, in index order."""
    for index in INDEXES:
        if (model_dir / index).is_file():
            weight_map = json.loads((model_dir / index).read_text())["weight_map"]
            return [model_dir / name for name in dict.fromkeys(weight_map.values())]
    for name in WEIGHTS:
        if (model_dir / name).is_file():
            return [model_dir / name]
    raise ConvertError(f"{model_dir}: no model.safetensors, pytorch_model.bin or shard index")


def read_shard(path: Path) -> Iterator[tuple[str, Any]]:
    """Tensors of one shard, lazily for safetensors (memory-mapped for .bin)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
    else:
        import torch

        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        for key in list(state):
            yield key, state.pop(key)


def shard_names(count: int, safe: bool = True) -> list[str]:
    """transformers' file names: model.safetensors, or model-0000i-of-0000n.safetensors (pytorch_model* for .bin)."""
    stem, ext = ("model", "safetensors") if safe else ("pytorch_model", "bin")
    if count == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i:05d}-of-{count:05d}.{ext}" for i in range(1, count + 1)]


def write_index(out_dir: Path, weight_map: dict[str, str], total_size: int, safe: bool = True) -> None:
    name = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / name).write_text(json.dumps(index, indent=2) + "\n")


def is_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", ".bin")) or name in INDEXES or name.endswith(".index.json")


class ShardWriter:
    """Writes tensors into shards of at most `max_bytes`, each shard to disk as soon as it is full; `close` names them
    `model-0000i-of-0000n` and writes the index (or a single `model.safetensors`)."""

    def __init__(self, out_dir: Path, max_bytes: int, safe: bool = True, metadata: dict | None = None):
        self.out, self.max, self.safe = out_dir, max_bytes, safe
        self.out.mkdir(parents=True, exist_ok=True)
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0
        self.metadata = metadata or {"format": "pt"}

    def add(self, key: str, tensor: Any) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max:
            self.flush()
        self.pending[key] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.out / f".shard-{len(self.written):05d}.tmp"
        if self.safe:
            from safetensors.torch import save_file

            save_file(self.pending, str(path), metadata=self.metadata)
        else:
            import torch

            torch.save(self.pending, str(path))
        self.written.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[Path]:
        self.flush()
        names = shard_names(len(self.written), self.safe)
        finals = []
        for name, (path, _) in zip(names, self.written):
            os.replace(path, self.out / name)
            finals.append(self.out / name)
        if len(names) > 1:
            write_index(self.out, {k: name for name, (_, keys) in zip(names, self.written) for k in keys}, self.total,
                        self.safe)
        return finals
