"""The one place third-party noise is silenced: notices a kubetune user cannot act on (a missing optional CPU
kernel package of bitsandbytes, deprecations inside transformers/PEFT/TRL, DeepSpeed's accelerator auto-detection).
`kubetune --verbose MODE ...` or KUBETUNE_VERBOSE=1 shows them all; our own log lines and errors never pass here."""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "KUBETUNE_VERBOSE"


class _ErrorsOnly(logging.Filter):
    """A filter as well as a level: DeepSpeed resets its logger's level when it is imported (a filter stays), and a
    logger's filter does not see its children's records (their effective level is the parent's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def silence_third_party(verbose: bool = False) -> None:
    if verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        os.environ[VERBOSE_ENV] = "1"  # torchrun's re-launched workers inherit it
        return
    for name in ("bitsandbytes", "DeepSpeed", "torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger(name).addFilter(_ErrorsOnly())
    for module in ("transformers", "peft", "trl", "accelerate", "torch", "deepspeed", "datasets"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
