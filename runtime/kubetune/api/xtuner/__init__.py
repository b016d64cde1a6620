"""XTuner's Python configs as FineTuneJobs, read safely (as syntax trees, never executed)."""

from __future__ import annotations

from pathlib import Path

from .mapping import Imported, to_manifest
from .reader import read

__all__ = ["Imported", "import_config"]


def import_config(path: str | Path) -> Imported:
    """The FineTuneJob an XTuner config describes, with what could not be mapped (line, message) and notes.
    Raises OSError for a file that cannot be read and SyntaxError for one that is not Python."""
    source = Path(path)
    return to_manifest(read(source.read_text(encoding="utf-8"), str(source)), source)
