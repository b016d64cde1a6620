"""What every part of the XTuner mapping shares: the result, the mapper that records problems and notes by line,
and the small value helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .reader import Config, Local, Unknown

DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass
class Imported:
    manifest: dict[str, Any]
    problems: list[tuple[int, str]] = field(default_factory=list)  # would train differently: refused by default
    notes: list[tuple[int, str]] = field(default_factory=list)  # kept elsewhere or dropped on purpose


class Mapper:
    def __init__(self, config: Config, imported: Imported):
        self.c, self.out = config, imported

    def get(self, name: str, default: Any = None) -> Any:
        return self.c.values.get(name, default)

    def line(self, name: str) -> int:
        return self.c.lines.get(name, 0)

    def problem(self, line: int, message: str) -> None:
        self.out.problems.append((line, message))

    def note(self, line: int, message: str) -> None:
        self.out.notes.append((line, message))

    def value(self, value: Any, what: str, line: int) -> Any:
        """A plain value, or None with a problem for what the reader could not evaluate."""
        if isinstance(value, Unknown):
            self.problem(value.line, f"{what}: `{value.text}` is not a value the importer evaluates")
            return None
        if isinstance(value, Local):
            self.problem(value.line, f"{what}: {value.name} is Python defined in the config; kubetune does not run "
                                     "a config's code (use a dataset format, or convert the data first)")
            return None
        return value


def to_uri(path: Any) -> Any:
    """A hub id becomes hf://; a local path (absolute, ./, ~) or a URI stays."""
    if not isinstance(path, str) or "://" in path or path.startswith(("/", ".", "~")) or Path(path).exists():
        return path
    return f"hf://{path}" if re.fullmatch(r"[\w.-]+/[\w.-]+", path) else path


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
