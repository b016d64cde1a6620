"""XTuner 0.2.0's predefined configs as kubetune sees them: every config file of its wheel read by the importer,
stored as one generated table (configs.json.gz) so the catalogue needs neither XTuner nor its files at run time.
tests/test_xtuner_catalog.py rebuilds the table from the wheel and fails when it differs
(`KUBETUNE_REGEN_XTUNER_TABLE=1` writes it)."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Any

from . import import_config

TABLE = Path(__file__).with_name("configs.json.gz")


@functools.cache
def table() -> dict[str, dict[str, Any]]:
    """Name → {"path": XTuner's file, then "manifest" (imported) or "refused" (why not), and "notes"}."""
    loaded: dict[str, dict[str, Any]] = json.loads(gzip.decompress(TABLE.read_bytes()))
    return loaded


def build(configs_dir: Path) -> dict[str, dict[str, Any]]:
    """Read every config XTuner's `list-cfg` lists (its .py files; the first of a repeated name, as the reference
    table keeps it), in name order."""
    root = configs_dir.parent.parent
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in configs_dir.rglob("*.py") if not p.name.startswith(("_", "."))):
        if path.stem in out:
            continue
        result = import_config(path)
        entry: dict[str, Any] = {"path": str(path.relative_to(root))}
        if result.problems:
            entry["refused"] = [f"line {line}: {message}" for line, message in result.problems]
        else:
            entry["manifest"] = result.manifest
        if result.notes:
            entry["notes"] = [f"line {line}: {message}" for line, message in result.notes]
        out[path.stem] = entry
    return dict(sorted(out.items()))


def encode(entries: dict[str, dict[str, Any]]) -> bytes:
    """The table file's bytes: the same entries give the same bytes (no timestamp in the gzip header)."""
    text = json.dumps(entries, sort_keys=True, ensure_ascii=False, indent=0)
    return gzip.compress(text.encode("utf-8"), mtime=0)
