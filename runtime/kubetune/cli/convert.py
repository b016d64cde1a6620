"""`kubetune convert {pth_to_hf,merge,split}`."""

from __future__ import annotations

import argparse

from pathlib import Path

from .common import add_cfg_options, load_config
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.convert.shards import ConvertError
    from kubetune.model.tokenizer import ModelLoadError
    from kubetune.storage import StorageError, local_destination, local_path

    import tempfile

    remote = args.save_dir if args.submode != "split" and args.save_dir.startswith("s3://") else None
    staging = tempfile.TemporaryDirectory(prefix="kubetune-export-") if remote else None
    try:
        if staging:
            args.save_dir = staging.name
        elif args.submode == "split":
            dst = local_destination(args.dst_dir)
            if dst is None:
                raise UserError(f"{args.dst_dir}: split writes a local, pvc:// or file:// directory, not s3://")
            args.dst_dir = str(dst)
        else:  # pvc:// and file:// name a mounted directory, never a local folder called "pvc:"
            args.save_dir = str(local_destination(args.save_dir))
        if args.submode == "pth_to_hf":
            from kubetune.convert.pth_to_hf import convert

            job = load_config(args.config, list(args.cfg_options))
            convert(job, local_path(args.pth_model), Path(args.save_dir), fp32=args.fp32,
                    max_shard_size=args.max_shard_size, safe=args.safe_serialization, save_format=args.save_format)
        elif args.submode == "merge":
            from kubetune.convert.merge import merge

            device = args.device
            if device == "auto":
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            if args.is_clip:
                _check_clip(local_path(args.model))
            written = merge(local_path(args.model), local_path(args.adapter), Path(args.save_dir),
                            args.max_shard_size, args.safe_serialization, device)
            print(f"merged model written to {args.save_dir} ({len(written)} shard(s))")
        else:
            from kubetune.convert.split import split

            count = split(local_path(args.src_dir), Path(args.dst_dir))
            print(f"{count} tensors written to {args.dst_dir}, one per shard")
        if remote:
            from kubetune.storage.sync import publish

            publish(Path(args.save_dir), remote)  # e.g. <checkpoints.uri>/export/adapter
            print(f"published to {remote}")
    except (ConvertError, StorageError, ModelLoadError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    finally:
        if staging:
            staging.cleanup()
    return 0


def _check_clip(base: Path) -> None:
    import json

    config = base / "config.json"
    kind = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if kind not in ("clip_vision_model", "clip", "siglip_vision_model", "siglip"):
        raise UserError(f"--is-clip: {base} is {kind or 'not a model directory'}, not a CLIP vision encoder")
