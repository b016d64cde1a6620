"""Dataset modes: check-custom-dataset, log-dataset, list-dataset-format, preprocess."""

from __future__ import annotations

import argparse

from .common import add_cfg_options, load_config
from .errors import UserError


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description=summary)
    if mode == "list-dataset-format":
        p.set_defaults(func=list_formats)
        return
    if mode == "preprocess":
        pre = p.add_subparsers(dest="submode", metavar="SUBMODE", required=True)
        arxiv = pre.add_parser("arxiv", help="filter the Kaggle arXiv metadata into title-generation data")
        arxiv.add_argument("src_file", help="arxiv-metadata-oai-snapshot.json (JSON lines)")
        arxiv.add_argument("dst_file", help="output json")
        arxiv.add_argument("--categories", nargs="+", default=["cs.AI", "cs.CL", "cs.CV"], help="categories to keep")
        arxiv.add_argument("--start-date", default="2020-01-01", help="keep papers updated on or after this date")
        ref = pre.add_parser("refcoco", help="convert RefCOCO annotations to LLaVA format")
        ref.add_argument("--ann-path", default="data/refcoco_annotations", help="annotation directory")
        ref.add_argument("--image-path", default="data/llava_data/llava_images/coco/train2017", help="COCO images")
        ref.add_argument("--save-path", default="./", help="output directory")
        p.set_defaults(func=preprocess)
        return
    p.add_argument("config", help="FineTuneJob YAML/JSON or a predefined config name")
    if mode == "log-dataset":
        p.add_argument("--show", choices=["text", "masked_text", "input_ids", "labels", "all"], default="text",
                       help="what to print of the first sequence")
        p.add_argument("--index", type=int, default=0, help="which sequence to print")
    else:
        p.add_argument("--samples", type=int, default=10, help="rows whose stages are shown (all rows are checked)")
    add_cfg_options(p)
    p.set_defaults(func=check if mode == "check-custom-dataset" else log)


def list_formats(args: argparse.Namespace) -> int:
    from kubetune.api import DatasetFormat

    for fmt in DatasetFormat:
        print(fmt.value)
    return 0


def _llava_data(job):
    """LLaVA data through its own builder: every row's conversation and image path checked, `<image>` expanded."""
    from kubetune.model.tokenizer import load_tokenizer
    from kubetune.vision.train import build_data

    tokenizer = load_tokenizer(job.spec.model)
    return tokenizer, build_data(job.spec, tokenizer, job.spec.training.seed or 0)


def check(args: argparse.Namespace) -> int:
    job = load_config(args.config, args.cfg_options)
    if job.spec.model.vision:
        _, data = _llava_data(job)
        print("LLaVA data: " + ", ".join(f"{k} {v}" for k, v in data.report.items()))
        return 0
    from kubetune.data.inspect import check_custom_dataset
    from kubetune.model.tokenizer import load_tokenizer

    bad = check_custom_dataset(job.spec.dataset, load_tokenizer(job.spec.model), samples=args.samples)
    if bad:
        raise UserError(f"{bad} row(s) cannot be used (listed above)")
    return 0


def log(args: argparse.Namespace) -> int:
    job = load_config(args.config, args.cfg_options)
    from kubetune.data.inspect import log_sample
    from kubetune.data.pipeline import build
    from kubetune.model.tokenizer import load_tokenizer

    if job.spec.model.vision:
        from kubetune.vision.tokens import IMAGE_TOKEN, collapse

        tokenizer, data = _llava_data(job)
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        sequences = [dict(zip(("input_ids", "labels"), collapse(r["input_ids"], r["labels"], image_id)))
                     for r in data.rows]
        where = f"LLaVA rows ({data.report['image_tokens']} tokens per <image>), images in " \
                f"{data.report['image_folder']}"
    elif job.spec.method.is_preference:
        tokenizer = load_tokenizer(job.spec.model)  # packed chosen/rejected pairs, built in memory (no cache)
        from kubetune.data import preference

        sequences, _ = preference.build(job.spec.dataset, tokenizer, seed=job.spec.training.seed or 0,
                                        reward_token=preference.method_reward_token(job.spec.method, tokenizer),
                                        log=print)
        where = "packed chosen/rejected pairs"
    else:
        tokenizer = load_tokenizer(job.spec.model)
        built = build(job.spec.dataset, tokenizer, seed=job.spec.training.seed or 0)
        sequences, where = built.dataset, f"cache: {built.path}"
    if not 0 <= args.index < len(sequences):
        raise UserError(f"--index {args.index}: the dataset has {len(sequences)} sequences")
    print(f"Num train sequences: {len(sequences)} ({where})")
    log_sample(sequences[args.index], tokenizer, args.show)
    return 0


def preprocess(args: argparse.Namespace) -> int:
    if args.submode == "refcoco":
        from kubetune.vision.refcoco import preprocess as refcoco

        for name, count in refcoco(args.ann_path, args.image_path, args.save_path).items():
            print(f"{count} rows -> {args.save_path.rstrip('/')}/{name}")
        return 0
    from kubetune.data.arxiv import preprocess as run

    kept = run(args.src_file, args.dst_file, args.categories, args.start_date)
    print(f"wrote {kept} papers to {args.dst_file}")
    return 0
