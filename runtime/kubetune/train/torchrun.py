"""torchrun, as kubetune's re-launch runs it: `python -m torch.distributed.run` prints its own ChildFailedError
traceback after any rank fails, under the one-line error the failing rank already printed, so a user's mistake under
NPROC_PER_NODE>1 read as a crash. Here the launcher's failure is its exit code only; every rank still says its own
error, and a launcher that fails for its own reasons (a bad flag, a rendezvous it cannot reach) still raises."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as failed:
        _, first = failed.get_first_failure()
        return first.exitcode if first.exitcode > 0 else 1  # a rank killed by a signal: torchrun's own 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
