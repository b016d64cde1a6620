"""A ConvertJob spec run on this machine: what its pod runs in a cluster, with the spec's own settings. Used by
`kubetune convert CONVERTJOB.yaml` and by the exports `kubetune train` writes after training (the ConvertJob specs
`kubetune.api.convert.export_specs` describes, the same the operator creates)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Callable, Iterator, TYPE_CHECKING

from kubetune.model.native import native_path
from kubetune.storage import local_destination, local_path

from .shards import ConvertError

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.convert import ConvertJobSpec
    from kubetune.api.finetune import FineTuneJob


@contextlib.contextmanager
def writing_to(uri: str, log: Callable[[str], None] = print) -> Iterator[Path]:
    """A local directory for the output at `uri`: the mounted or local directory itself, or (for s3://) a staging
    directory published with its manifest once everything is written, so a cut conversion is never half-published."""
    local = local_destination(uri)  # pvc:// and file:// name a mounted directory, never a local folder "pvc:"
    if local is not None:
        yield local
        return
    from kubetune.storage.sync import publish

    with tempfile.TemporaryDirectory(prefix="kubetune-export-") as staging:
        yield Path(staging)
        publish(Path(staging), uri, log=lambda line: None)
        log(f"published to {uri}")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(spec: ConvertJobSpec, source: str, config: FineTuneJob | None = None, log: Callable[[str], None] = print) -> str:
    """One conversion; `source` is the checkpoint, adapter or model the spec's `source` resolves to (the caller
    resolves a fineTuneJobRef), `config` the FineTuneJob a pth_to_hf checkpoint was trained with."""
    op = spec.operation.value
    with writing_to(spec.output.uri, log) as out:
        if op == "pth_to_hf":
            from .pth_to_hf import convert

            if config is None:
                raise ConvertError("pth_to_hf needs the FineTuneJob the checkpoint was trained with")
            convert(config, local_path(source), out, fp32=spec.fp32, max_shard_size=spec.max_shard_size,
                    safe=spec.safe_serialization, log=log, save_format=spec.save_format)
        elif op == "merge":
            from .merge import merge

            base = spec.base_model.uri if spec.base_model else None
            if base is None:
                raise ConvertError("operation merge needs baseModel.uri")
            if spec.is_clip:
                check_clip(local_path(base))
            written = merge(native_path(local_path(base)), local_path(source), out, spec.max_shard_size, spec.safe_serialization,
                            resolve_device(spec.device), log)
            log(f"merged model written to {spec.output.uri} ({len(written)} shard(s))")
        else:
            from .split import split

            count = split(local_path(source), out)
            log(f"{count} tensors written to {spec.output.uri}, one per shard")
    return spec.output.uri


def check_clip(base: Path) -> None:
    import json

    config = base / "config.json"
    kind = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if kind not in ("clip_vision_model", "clip", "siglip_vision_model", "siglip"):
        raise ConvertError(f"isClip: {base} is {kind or 'not a model directory'}, not a CLIP vision encoder")


def export_trained(job: FineTuneJob, final_checkpoint: Path, log: Callable[[str], None] = print) -> dict[str, str]:
    """`spec.export` after a local run: the ConvertJobs the operator would create (`export_specs`), run here in the
    same order, into the same `<checkpoints.uri>/export/` layout. Returns what was written, as status.artifacts."""
    from kubetune.api.convert import ConvertJobSpec, export_specs

    written = {}
    for which, raw in export_specs(job.metadata.name or "local", job.spec).items():
        spec = ConvertJobSpec.model_validate(raw)
        source = str(final_checkpoint) if which == "adapter" else spec.source.checkpoint_uri
        assert source is not None  # export_specs gives the merge its adapter's URI
        written[which] = run(spec, source, job, log)
    return written
