"""Dataset modes: list-dataset-format now; check-custom-dataset, log-dataset and preprocess with issue #3."""

from __future__ import annotations

import argparse

from .common import add_cfg_options, load_config
from .errors import NotAvailable


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description=summary)
    if mode == "list-dataset-format":
        p.set_defaults(func=list_formats)
        return
    if mode == "preprocess":
        pre = p.add_subparsers(dest="submode", metavar="SUBMODE", required=True)
        arxiv = pre.add_parser("arxiv", help="filter the Kaggle arXiv metadata into title-generation data")
        arxiv.add_argument("src_file", help="arxiv-metadata-oai-snapshot.json")
        arxiv.add_argument("dst_file", help="output json")
        arxiv.add_argument("--categories", nargs="+", default=["cs.AI", "cs.CL", "cs.CV"], help="categories to keep")
        arxiv.add_argument("--start-date", default="2020-01-01", help="keep papers from this date on")
        ref = pre.add_parser("refcoco", help="convert RefCOCO annotations to LLaVA format")
        ref.add_argument("--ann-path", default="data/refcoco_annotations", help="annotation directory")
        ref.add_argument("--image-path", default="data/llava_data/llava_images/coco/train2017", help="COCO images")
        ref.add_argument("--save-path", default="./", help="output directory")
        p.set_defaults(func=run)
        return
    p.add_argument("config", help="FineTuneJob YAML/JSON or a predefined config name")
    if mode == "log-dataset":
        p.add_argument("--show", choices=["text", "masked_text", "input_ids", "labels", "all"], default="text",
                       help="what to print of the first sample")
    add_cfg_options(p)
    p.set_defaults(func=run)


def list_formats(args: argparse.Namespace) -> int:
    from kubetune.api import DatasetFormat

    for fmt in DatasetFormat:
        print(fmt.value)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.mode == "preprocess":
        issue = 10 if args.submode == "refcoco" else 3
        raise NotAvailable(f"preprocess {args.submode}", issue, "dataset preprocessing")
    load_config(args.config, args.cfg_options)  # a bad config is reported now, not after the pipeline lands
    raise NotAvailable(args.mode, 3, "the data pipeline")
