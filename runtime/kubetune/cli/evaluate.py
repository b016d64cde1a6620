"""`kubetune test CONFIG --checkpoint CKPT`: score a trained checkpoint (kubetune.train.evaluate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_cfg_options, load_config


def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description="The checkpoint's mean token loss and perplexity over the "
                       "config's dataset (or --data / --split), each sample alone, and the config's evaluation "
                       "prompts answered (XTuner's test mode). Results go to WORK_DIR/<timestamp>/test_results.json "
                       "and vis_data/eval_outputs_iter_N.txt.")
    p.add_argument("config", help="the FineTuneJob (YAML/JSON), XTuner config (.py) or predefined config name")
    p.add_argument("--checkpoint", required=True, help="an iter_N checkpoint directory, or a converted adapter/model")
    p.add_argument("--work-dir", default=None, help="where results go (default: ./work_dirs/<config name>/test)")
    p.add_argument("--data", default=None, help="score this dataset instead of the config's (same format)")
    p.add_argument("--split", default=None, help="the split of a hub dataset to score (e.g. test, validation)")
    p.add_argument("--max-samples", type=int, default=None, help="score at most this many samples")
    add_cfg_options(p)
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kubetune.train.evaluate import TestData, run as score

    job = load_config(args.config, list(args.cfg_options))
    name = job.metadata.name or Path(args.config).stem
    work = Path(args.work_dir or Path("work_dirs") / name / "test").resolve()
    data = TestData(uri=str(Path(args.data).resolve()) if args.data and "://" not in args.data else args.data,
                    split=args.split, max_samples=args.max_samples)
    checkpoint = Path(args.checkpoint).resolve()
    if not checkpoint.exists():  # XTuner's names for kubetune's checkpoints: iter_N.pth, epoch_N.pth
        from kubetune.storage import xtuner_checkpoint_alias

        checkpoint = xtuner_checkpoint_alias(checkpoint) or checkpoint
    result = score(job, checkpoint, work, data)
    print(f"test: {result['samples']} samples, {result['tokens']} labelled tokens of {result['data']}: "
          f"loss {result['loss']:.4f}, perplexity {result['perplexity']:.3f} (checkpoint {result['checkpoint']}); "
          f"results in {result['results']}")
    return 0
