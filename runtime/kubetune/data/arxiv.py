"""`kubetune preprocess arxiv`: the Kaggle arXiv metadata snapshot (JSON lines) → title-generation data.

Streams the input (the snapshot is several GB), keeps papers in the given categories updated on or after the start
date, and writes a JSON list with `abstract` and `title` (the fields the `arxiv` format reads) atomically.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

from .source import DataError


def preprocess(src: str, dst: str, categories: list[str], start_date: str) -> int:
    try:
        since = date.fromisoformat(start_date)
    except ValueError:
        raise DataError(f"--start-date {start_date!r}: expected YYYY-MM-DD") from None
    wanted = set(categories)
    src_path, dst_path = Path(src), Path(dst)
    if not src_path.is_file():
        raise DataError(f"{src}: no such file")
    tmp = dst_path.with_name(f".{dst_path.name}.tmp-{os.getpid()}")
    kept = 0
    try:
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        with src_path.open("rb") as fin, tmp.open("w", encoding="utf-8") as fout:
            fout.write("[")
            for n, raw in enumerate(fin, 1):
                if not raw.strip():
                    continue
                try:
                    paper = json.loads(raw.decode("utf-8"))
                    cats = set(str(paper["categories"]).split())
                    updated = date.fromisoformat(str(paper["update_date"]))
                except UnicodeDecodeError:
                    raise DataError(f"{src}: line {n}: not valid UTF-8") from None
                except json.JSONDecodeError as exc:
                    raise DataError(f"{src}: line {n}: not valid JSON: {exc.msg}") from None
                except KeyError as exc:
                    raise DataError(f"{src}: line {n}: missing field {exc.args[0]!r}") from None
                except ValueError:
                    raise DataError(f"{src}: line {n}: update_date is not YYYY-MM-DD") from None
                if cats & wanted and updated >= since:
                    fout.write(("," if kept else "") + "\n" + json.dumps(
                        {"id": paper.get("id"), "title": paper.get("title", ""), "abstract": paper.get("abstract", ""),
                         "categories": paper["categories"], "update_date": paper["update_date"]},
                        ensure_ascii=False))
                    kept += 1
            fout.write("\n]\n")
        os.replace(tmp, dst_path)
    except OSError as exc:
        raise DataError(f"{exc.filename or dst}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return kept
