"""`kubetune mmbench`: MMBench's TSV (question, hint, options A-D, base64 image, answer, category, l2-category),
one greedy answer per question, the option letter read from it, and accuracy overall, per l2-category and per
category. Rows that repeat a question with its options rotated (index ≡ mod 1e6, MMBench's circular evaluation)
count as one question that is right only when every rotation is."""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from kubetune.errors import UserError

LETTERS = ("A", "B", "C", "D")
ANSWER_EN = "Answer with the option's letter from the given choices directly."
ANSWER_CN = "请直接回答选项字母。"


def read_tsv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are far beyond csv's default field limit
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError as exc:
        raise UserError(f"--data-path {path}: {exc.strerror}") from None
    needed = {"index", "question", "image", "A", "B"}
    if not rows or needed - set(rows[0]):
        raise UserError(f"--data-path {path}: an MMBench TSV needs the columns {sorted(needed)}; found "
                        f"{sorted(rows[0]) if rows else 'no rows'}")
    return rows


def _present(value: str | None) -> bool:
    return value is not None and value.strip() != "" and value.strip().lower() != "nan"


def options_of(row: dict[str, str]) -> dict[str, str]:
    return {letter: row[letter] for letter in LETTERS if _present(row.get(letter))}


def prompt_of(row: dict[str, str]) -> str:
    text = (row["hint"] + "\n" if _present(row.get("hint")) else "") + row["question"]
    for letter, option in options_of(row).items():
        text += f"\n{letter}. {option}"
    chinese = any("\u4e00" <= ch <= "\u9fff" for ch in row["question"])
    return text + "\n" + (ANSWER_CN if chinese else ANSWER_EN)


def infer_letter(prediction: str, options: dict[str, str]) -> str | None:
    """The option a free-text answer names: the one option letter standing alone in it ("B", "(B) cat", "The
    answer is B."), else the text of exactly one option; None when it names none or several."""
    text = prediction.strip()
    alone = {m for m in re.findall(r"(?<![A-Za-z])([A-D])(?![A-Za-z])", text) if m in options}
    if alone:
        return alone.pop() if len(alone) == 1 else None
    named = [letter for letter, option in options.items() if option.strip() and option.strip().lower() in text.lower()]
    return named[0] if len(named) == 1 else None


def accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall, per l2-category and per category, over circular groups (index mod 1e6)."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[int(float(row["index"])) % 1_000_000].append(row)
    hits = {key: all(r["hit"] for r in members) for key, members in groups.items()}
    result: dict[str, Any] = {"Overall": sum(hits.values()) / len(hits), "questions": len(hits), "rows": len(rows)}
    for column in ("l2-category", "category"):
        if column not in rows[0]:
            continue
        per: dict[str, list[bool]] = defaultdict(list)
        for key, members in groups.items():
            per[members[0][column]].append(hits[key])
        result[column] = {name: sum(values) / len(values) for name, values in sorted(per.items())}
    return result


def run(args: Any) -> int:
    from .evaluate import asker, results_dir, write_sheet
    from .image import ImageError, open_image

    if not args.data_path:
        raise UserError("mmbench needs --data-path (an MMBench TSV)")
    path = Path(args.data_path)
    rows = read_tsv(path)
    ask = asker(args)
    out = results_dir(args, path.stem)
    results = []
    for n, row in enumerate(rows):
        where = f"{path}: row {n + 1}: image"
        try:
            image = open_image(base64.b64decode(row["image"], validate=True), where=where)
        except binascii.Error:
            raise UserError(f"{where}: not base64 image data") from None
        except ImageError as exc:
            raise UserError(str(exc)) from None
        options = options_of(row)
        prediction = ask.ask(image, prompt_of(row))
        letter = infer_letter(prediction, options)
        results.append({**{k: v for k, v in row.items() if k != "image"}, "prediction": prediction,
                        "predicted": letter or "", "hit": letter is not None and letter == row.get("answer")})
        print(f"[{n + 1}/{len(rows)}] {row['index']}: {prediction!r} -> {letter or '?'}", flush=True)
    header = [k for k in results[0] if k != "hit"] + (["hit"] if "answer" in rows[0] else [])
    write_sheet(out / "mmbench_result.xlsx", header, [[r.get(k, "") for k in header] for r in results])
    summary: dict[str, Any] = accuracy(results) if "answer" in rows[0] else {"Overall": None, "note": "no answer column"}
    (out / "mmbench_result.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if summary["Overall"] is not None:
        print(f"Overall accuracy: {summary['Overall']:.4f} ({summary['questions']} questions)")
        for column in ("l2-category", "category"):
            for name, value in summary.get(column, {}).items():
                print(f"  {column} {name}: {value:.4f}")
    print(f"results in {out}")
    return 0 if not (summary["Overall"] is not None and math.isnan(summary["Overall"])) else 1
