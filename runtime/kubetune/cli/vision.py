"""`kubetune mmbench` and `kubetune eval_refcoco`: flags (the evaluations are in kubetune.vision)."""

from __future__ import annotations

import argparse



def add_parser(sub, mode: str, summary: str) -> None:
    p = sub.add_parser(mode, help=summary, description=summary)
    p.add_argument("model_name_or_path", help="LLM (hf://, s3://, path)")
    p.add_argument("--data-path", required=False, default=None, help="evaluation data (MMBench TSV / RefCOCO json)")
    p.add_argument("--work-dir", default=None, help="where results go")
    p.add_argument("--llava", default=None, help="LLaVA directory")
    p.add_argument("--visual-encoder", default=None, help="CLIP vision encoder")
    p.add_argument("--visual-select-layer", type=int, default=None,
                   help="encoder layer whose features are used (default: the trained one, else -2)")
    p.add_argument("--prompt-template", default="auto", help="prompt template (default: the trained one)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--system-template", default=None, help="predefined system prompt")
    p.add_argument("--stop-words", nargs="+", default=[], help="stop words")
    p.add_argument("--torch-dtype", choices=["fp16", "bf16", "fp32", "auto"], default="fp16", help="weight dtype")
    p.add_argument("--bits", type=int, choices=[4, 8], default=None, help="load the LLM in 4 or 8 bits")
    p.add_argument("--bot-name", default="BOT", help="bot name")
    p.add_argument("--offload-folder", default=None, help="offload folder")
    p.add_argument("--max-new-tokens", type=int, default=100, help="longest answer")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none", help="job launcher")
    if mode == "eval_refcoco":
        p.add_argument("--image-folder", default=None, help="where the rows' images are (default: beside the data)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.mode == "mmbench":
        from kubetune.vision.mmbench import run as mmbench

        return mmbench(args)
    from kubetune.vision.refcoco import run_eval

    return run_eval(args)
