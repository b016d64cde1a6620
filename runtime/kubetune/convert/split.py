"""`kubetune convert split SRC DST`: every tensor in its own shard, with a consistent index (XTuner's `split`, for
safetensors as well as .bin checkpoints)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .shards import is_weight_file, read_shard, shard_files


def split(src: Path, dst: Path) -> int:
    import torch

    files = shard_files(src)
    safe = files[0].suffix == ".safetensors"
    keys = [key for shard in files for key, _ in _keys(shard)]
    stem, ext = ("model", "safetensors") if safe else ("pytorch_model", "bin")
    dst.mkdir(parents=True, exist_ok=True)
    weight_map, total, i = {}, 0, 0
    for shard in files:
        for key, tensor in read_shard(shard):
            i += 1
            name = f"{stem}-{i:05d}-of-{len(keys):05d}.{ext}"
            if safe:
                from safetensors.torch import save_file

                save_file({key: tensor.contiguous()}, str(dst / name), metadata={"format": "pt"})
            else:
                torch.save({key: tensor.clone()}, str(dst / name))
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    (dst / f"{stem}.{ext}.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    for path in src.iterdir():
        if path.is_file() and not is_weight_file(path.name):
            shutil.copy2(path, dst / path.name)
    return len(keys)


def _keys(shard: Path):
    if shard.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(shard), framework="pt") as f:
            return [(k, None) for k in f.keys()]
    return [(k, None) for k, _ in read_shard(shard)]
