"""`kubetune MODE [SUBMODE] ARGS`: the parser, the dispatch and the error policy.

Every mode is a function `run(args) -> int` in its own module, imported only when that mode runs, so
`kubetune --help` and `list-cfg` never pay for torch. Every failure exits non-zero (XTuner's CLI exits 0 even when
training crashed).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kubetune.errors import ExitCode, say_failure

from .errors import KubetuneError
from .quiet import silence_third_party

BANNER = """\
kubetune commands use the following syntax:

    kubetune MODE MODE_ARGS ARGS

    Where   MODE (required) is one of {modes}
            MODE_ARG (optional) is the argument for specific mode
            ARGS (optional) are the arguments for specific command

Some usages for kubetune commands: (See more by using -h for specific command!)

    1. List all predefined configs:
        kubetune list-cfg [-p PATTERN]
    2. Copy a predefined config (a FineTuneJob manifest) to a given directory:
        kubetune copy-cfg $CONFIG $SAVE_DIR
    3-1. Fine-tune an LLM on this machine (the same YAML runs in a cluster with `kubectl apply -f`):
        kubetune train $CONFIG
    3-2. Bring an XTuner config (.py, read without running it) as a FineTuneJob, or train from it directly:
        kubetune import-xtuner $XTUNER_CONFIG_PY -o job.yaml
        kubetune train $XTUNER_CONFIG_PY
    3-3. Fine-tune with several GPUs or nodes (re-launched under torchrun, or started by srun):
        NPROC_PER_NODE=$NGPUS NNODES=$NNODES NODE_RANK=$NODE_RANK PORT=$PORT ADDR=$ADDR kubetune train $CONFIG
        srun -n $NGPUS kubetune train $CONFIG --launcher slurm
    3-4. Score a checkpoint (loss, perplexity, the evaluation prompts):
        kubetune test $CONFIG --checkpoint $PATH_TO_CHECKPOINT [--data $DATA | --split test]
    4-1. Convert a checkpoint to a Hugging Face adapter or model:
        kubetune convert pth_to_hf $CONFIG $PATH_TO_CHECKPOINT $SAVE_PATH
    4-2. Merge a Hugging Face adapter into its base model:
        kubetune convert merge $LLM $ADAPTER $SAVE_PATH
        kubetune convert merge $CLIP $ADAPTER $SAVE_PATH --is-clip
    4-3. Split a Hugging Face model into the smallest shards:
        kubetune convert split $LLM $SAVE_PATH
    4-4. Run a ConvertJob manifest here (as its pod would):
        kubetune convert $CONVERTJOB_YAML [--config $FINETUNEJOB_YAML]
    5-1. Chat with an LLM and an adapter:
        kubetune chat $LLM --adapter $ADAPTER --prompt-template $PROMPT_TEMPLATE --system-template $SYSTEM_TEMPLATE
    5-2. Chat with a VLM (LLaVA):
        kubetune chat $LLM --llava $LLAVA --visual-encoder $VISUAL_ENCODER --image $IMAGE --prompt-template $PROMPT_TEMPLATE
    5-3. Serve an OpenAI-compatible API (or a ChatEndpoint manifest, as its pods would):
        kubetune serve $LLM --adapter $NAME=$ADAPTER [--adapter ...] --prompt-template $PROMPT_TEMPLATE
        kubetune serve $CHATENDPOINT_YAML [--host $HOST --port $PORT --api-key-file $FILE]
    6-1. Preprocess the arxiv dataset:
        kubetune preprocess arxiv $SRC_FILE $DST_FILE --start-date $START_DATE --categories $CATEGORIES
    6-2. Preprocess the refcoco dataset:
        kubetune preprocess refcoco --ann-path $RefCOCO_ANN_PATH --image-path $COCO_IMAGE_PATH --save-path $SAVE_PATH
    7-1. Log the processed dataset:
        kubetune log-dataset $CONFIG
    7-2. Verify a config for a custom dataset:
        kubetune check-custom-dataset $CONFIG
    8. MMBench evaluation:
        kubetune mmbench $LLM --llava $LLAVA --visual-encoder $VISUAL_ENCODER --prompt-template $PROMPT_TEMPLATE --data-path $MMBENCH_DATA_PATH
    9. RefCOCO evaluation:
        kubetune eval_refcoco $LLM --llava $LLAVA --visual-encoder $VISUAL_ENCODER --prompt-template $PROMPT_TEMPLATE --data-path $REFCOCO_DATA_PATH
    10. List all dataset formats:
        kubetune list-dataset-format
    11. Validate manifests, explain fields, write the CRDs:
        kubetune validate $FILE...      kubetune explain finetunejob.spec.training      kubetune crds

Run special commands:

    kubetune help
    kubetune version
"""

# mode → (module under kubetune.cli, one-line help)
MODES: dict[str, tuple[str, str]] = {
    "list-cfg": ("configs", "list the predefined configs"),
    "copy-cfg": ("configs", "copy a predefined config to a directory"),
    "import-xtuner": ("xtuner", "turn an XTuner config (.py) into a FineTuneJob, without running it"),
    "train": ("train", "fine-tune an LLM"),
    "test": ("evaluate", "score a checkpoint: loss and perplexity over a dataset, and the evaluation prompts"),
    "fetch": ("fetch", "download a job's models and datasets into the cache once"),
    "convert": ("convert", "pth_to_hf, merge or split a model"),
    "chat": ("chat", "chat with an LLM in the terminal"),
    "serve": ("chat", "serve an OpenAI-compatible chat API"),
    "gateway": ("gateway", "check API keys in front of another OpenAI-compatible server (vLLM)"),
    "check-custom-dataset": ("dataset", "check a config's custom dataset"),
    "log-dataset": ("dataset", "print the processed dataset"),
    "list-dataset-format": ("dataset", "list the dataset formats"),
    "preprocess": ("dataset", "preprocess arxiv or refcoco data"),
    "mmbench": ("vision", "evaluate a LLaVA model on MMBench"),
    "eval_refcoco": ("vision", "evaluate a LLaVA model on RefCOCO"),
    "validate": ("configs", "validate FineTuneJob/ConvertJob/ChatEndpoint files"),
    "explain": ("configs", "describe the fields of a resource, like kubectl explain"),
    "crds": ("configs", "write the CustomResourceDefinitions generated from the API models"),
    "version": ("configs", "print the version"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=BANNER.format(modes=tuple(MODES)), add_help=True)
    parser.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="also show third-party warnings kubetune silences (or KUBETUNE_VERBOSE=1)")
    sub = parser.add_subparsers(dest="mode", metavar="MODE")
    sub.add_parser("help", help="show this help")
    for mode, (module, summary) in MODES.items():
        importlib.import_module(f"kubetune.cli.{module}").add_parser(sub, mode, summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0] in ("help", "-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    verbose = argv[0] == "--verbose"
    argv = argv[1:] if verbose else argv
    if not argv:
        parser.print_help()
        return 2
    if argv[0] in ("-v", "--version"):
        argv = ["version"]
    silence_third_party(verbose)
    try:
        if argv[0] in MODES:  # `kubetune convert CONVERTJOB.yaml`, `kubetune serve ENDPOINT.yaml`
            route = getattr(importlib.import_module(f"kubetune.cli.{MODES[argv[0]][0]}"), "route", None)
            argv = route(argv) if route else argv
        args = parser.parse_args(argv)
        args.argv = argv  # the torchrun re-launch repeats the exact command
        return int(args.func(args) or 0)
    except KubetuneError as exc:  # every layer's user-facing failure, said in one line
        return say_failure(str(exc), exc.exit_code)
    except FileNotFoundError as exc:  # a path the user gave that is not there
        return say_failure(str(exc), ExitCode.USER_ERROR)
    except KeyboardInterrupt:
        print("kubetune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kubetune list-cfg | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
