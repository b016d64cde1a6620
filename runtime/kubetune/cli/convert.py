"""`kubetune convert {pth_to_hf,merge,split}` (XTuner's flags) or `kubetune convert CONVERTJOB.yaml`: both become a
ConvertJob spec run by kubetune.convert.job, as the ConvertJob's pod runs it."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_cfg_options, announce_local_differences, load_config
from .errors import UserError


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description=summary)
    conv = p.add_subparsers(dest="submode", metavar="SUBMODE", required=True)

    pth = conv.add_parser("pth_to_hf", help="convert a training checkpoint to a Hugging Face adapter or model")
    pth.add_argument("config", help="the FineTuneJob config the checkpoint was trained with")
    pth.add_argument("pth_model", help="checkpoint directory or file (plain or DeepSpeed)")
    pth.add_argument("save_dir", help="output directory, or s3://... (e.g. <checkpoints.uri>/export/adapter)")
    pth.add_argument("--fp32", action="store_true", help="save fp32 weights (default fp16)")
    pth.add_argument("--max-shard-size", default="2GB", help="largest shard (default 2GB)")
    pth.add_argument("--safe-serialization", action=argparse.BooleanOptionalAction, default=True,
                     help="write safetensors (default) or PyTorch .bin")
    pth.add_argument("--save-format", choices=["kubetune", "xtuner", "huggingface"], default="kubetune",
                     help="LLaVA checkpoints: kubetune's layout (llm_adapter/, visual_encoder_adapter/, projector/; "
                          "xtuner is the same) or one transformers LlavaForConditionalGeneration")
    add_cfg_options(pth)

    merge = conv.add_parser("merge", help="merge a LoRA adapter into its base model, shard by shard")
    merge.add_argument("model", help="base model (hf://, s3://, path)")
    merge.add_argument("adapter", help="adapter directory")
    merge.add_argument("save_dir", help="output directory, or s3://... (e.g. <checkpoints.uri>/export/merged)")
    merge.add_argument("--max-shard-size", default="2GB", help="largest shard (default 2GB)")
    merge.add_argument("--is-clip", action="store_true", help="the base is a CLIP vision encoder")
    merge.add_argument("--safe-serialization", action=argparse.BooleanOptionalAction, default=True,
                       help="write safetensors (default) or PyTorch .bin")
    merge.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to compute")

    split = conv.add_parser("split", help="rewrite a model so each tensor is its own shard")
    split.add_argument("src_dir", help="source model directory")
    split.add_argument("dst_dir", help="output directory")

    manifest = conv.add_parser("manifest", help="run a ConvertJob manifest here, as its pod runs it (also: "
                               "kubetune convert CONVERTJOB.yaml)")
    manifest.add_argument("manifest", help="ConvertJob YAML/JSON")
    manifest.add_argument("--config", default=None, help="pth_to_hf: the FineTuneJob the checkpoint was trained with")
    add_cfg_options(manifest)
    p.set_defaults(func=run)


def route(argv: list[str]) -> list[str]:
    """`kubetune convert CONVERTJOB.yaml` is the manifest submode."""
    if len(argv) > 1 and argv[1].endswith((".yaml", ".yml", ".json")):
        return [argv[0], "manifest", *argv[1:]]
    return argv


def run(args: argparse.Namespace) -> int:
    from kubetune.convert import job as conversion

    spec, source, config = _from_manifest(args) if args.submode == "manifest" else _from_flags(args)
    conversion.run(spec, source, config)
    return 0


def _from_flags(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """XTuner's positional form, as the ConvertJob spec it amounts to (defaults from the API model)."""
    from kubetune.api.convert import BaseModelRef, ConvertJobSpec, ConvertOperation, OutputSpec

    op = ConvertOperation(args.submode)
    fields: dict[str, Any] = {"operation": op}
    if op == ConvertOperation.SPLIT:
        source, fields["output"] = args.src_dir, OutputSpec.model_construct(uri=args.dst_dir)
        return ConvertJobSpec.model_construct(**fields), source, None
    fields |= {"output": OutputSpec.model_construct(uri=args.save_dir), "max_shard_size": args.max_shard_size,
               "safe_serialization": args.safe_serialization}
    if op == ConvertOperation.MERGE:
        fields |= {"base_model": BaseModelRef.model_construct(uri=args.model), "is_clip": args.is_clip,
                   "device": args.device}
        return ConvertJobSpec.model_construct(**fields), args.adapter, None
    fields |= {"fp32": args.fp32, "save_format": args.save_format}
    config = load_config(args.config, list(args.cfg_options))
    return ConvertJobSpec.model_construct(**fields), args.pth_model, config


def _from_manifest(args: argparse.Namespace) -> tuple[Any, str, Any]:
    """A ConvertJob manifest, run here as its pod would run it."""
    job = load_config(args.manifest, list(args.cfg_options), kind="ConvertJob")
    announce_local_differences(job)
    spec = job.spec
    if spec.source.fine_tune_job_ref:
        raise UserError(f"{args.manifest}: source.fineTuneJobRef names a FineTuneJob in a cluster; here set "
                        "source.checkpointUri to its checkpoint (an iter_N directory) and give --config with the "
                        "FineTuneJob it was trained with")
    config = None
    if spec.operation.value == "pth_to_hf":
        if not args.config:
            raise UserError(f"{args.manifest}: operation pth_to_hf needs the FineTuneJob the checkpoint was trained "
                            "with: --config JOB.yaml (in a cluster, fineTuneJobRef supplies it)")
        config = load_config(args.config)
    return spec, spec.source.checkpoint_uri, config
