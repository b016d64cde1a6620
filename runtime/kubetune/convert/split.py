"""`kubetune convert split SRC DST`: every tensor in its own shard, with a consistent index (XTuner's `split`, for
safetensors as well as .bin checkpoints)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .shards import is_weight_file, read_shard, shard_files, shard_names, write_index


def split(src: Path, dst: Path) -> int:
    import torch

    files = shard_files(src)
    safe = files[0].suffix == ".safetensors"
    names = iter(shard_names(sum(len(_keys(shard)) for shard in files), safe))
    dst.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for shard in files:
        for key, tensor in read_shard(shard):
            name = next(names)
            if safe:
                from safetensors.torch import save_file

                save_file({key: tensor.contiguous()}, str(dst / name), metadata={"format": "pt"})
            else:
                torch.save({key: tensor.clone()}, str(dst / name))
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
    write_index(dst, weight_map, total, safe)
    for path in src.iterdir():
        if path.is_file() and not is_weight_file(path.name):
            shutil.copy2(path, dst / path.name)
    return len(weight_map)


def _keys(shard: Path) -> list[str]:
    if shard.suffix == ".safetensors":
        from .stream import read_header

        return [e.key for e in read_header(shard)[0]]
    return [k for k, _ in read_shard(shard)]
