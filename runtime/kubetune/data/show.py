"""How `check-custom-dataset` and `log-dataset` print: banners, the bad-row list, labels with masked runs. Shared by
the supervised (inspect.py) and the preference (preference.py) checks."""

from __future__ import annotations

from typing import Any, Callable

from .encode import IGNORE_INDEX

MAX_LISTED = 20


def banner(title: str) -> str:
    return f"{'=' * 35} {title} {'=' * 35}"


def report_bad(out: Callable[[str], None], bad: list[str], uris: list[str]) -> int:
    """The rows that cannot be used (the first MAX_LISTED), or that all are usable; returns how many are bad."""
    if bad:
        out(banner("rows that cannot be used"))
        for line in bad[:MAX_LISTED]:
            out(line)
        if len(bad) > MAX_LISTED:
            out(f"... and {len(bad) - MAX_LISTED} more")
    else:
        out(f"all rows of {', '.join(uris)} are usable")
    return len(bad)


def masked_text(tokenizer: Any, labels: list[int]) -> str:
    """Decoded label tokens, with each run of masked positions shown as `[-100]×N`."""
    parts: list[str] = []
    run: list[int] = []
    masked = 0
    for token in labels:
        if token == IGNORE_INDEX:
            if run:
                parts.append(tokenizer.decode(run))
                run = []
            masked += 1
        else:
            if masked:
                parts.append(f"[-100]×{masked}")
                masked = 0
            run.append(token)
    if run:
        parts.append(tokenizer.decode(run))
    if masked:
        parts.append(f"[-100]×{masked}")
    return "".join(parts)
