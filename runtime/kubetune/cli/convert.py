"""`kubetune convert {pth_to_hf,merge,split}`: flags now, the converters with issue #5."""

from __future__ import annotations

import argparse

from .common import add_cfg_options
from .errors import NotAvailable


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description=summary)
    conv = p.add_subparsers(dest="submode", metavar="SUBMODE", required=True)

    pth = conv.add_parser("pth_to_hf", help="convert a training checkpoint to a Hugging Face adapter or model")
    pth.add_argument("config", help="the FineTuneJob config the checkpoint was trained with")
    pth.add_argument("pth_model", help="checkpoint directory or file (plain or DeepSpeed)")
    pth.add_argument("save_dir", help="output directory")
    pth.add_argument("--fp32", action="store_true", help="save fp32 weights (default fp16)")
    pth.add_argument("--max-shard-size", default="2GB", help="largest shard (default 2GB)")
    pth.add_argument("--safe-serialization", action=argparse.BooleanOptionalAction, default=True,
                     help="write safetensors (default) or PyTorch .bin")
    add_cfg_options(pth)

    merge = conv.add_parser("merge", help="merge a LoRA adapter into its base model, shard by shard")
    merge.add_argument("model", help="base model (hf://, s3://, path)")
    merge.add_argument("adapter", help="adapter directory")
    merge.add_argument("save_dir", help="output directory")
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
    raise NotAvailable(f"convert {args.submode}", 5, "checkpoint conversion, merge and split")
