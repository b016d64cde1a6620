"""RefCOCO grounding: `preprocess refcoco` turns the REFER annotations (`<ann>/<dataset>/refs(<splitBy>).p` and
`instances.json`) into LLaVA-format rows asking for the box of each referring sentence, answered as
`[x1, y1, x2, y2]` in 0-1 image coordinates; `eval_refcoco` asks a LLaVA those questions and counts a prediction
right when its box overlaps the truth with IoU ≥ 0.5 (Acc@0.5)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

from kubetune.errors import UserError

QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: "
DATASETS = (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"), ("refcocog", "google"))


class _PlainUnpickler(pickle.Unpickler):
    """refs(*.p) holds lists, dicts, strings and numbers only; anything else (code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: REFER refs files hold plain data only")


def load_refs(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open("rb") as handle:
            refs = _PlainUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise UserError(f"{path}: cannot read REFER refs ({exc})") from None
    if not isinstance(refs, list):
        raise UserError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def box_text(box: list[float], width: int, height: int) -> str:
    x, y, w, h = box
    coords = (x / width, y / height, (x + w) / width, (y + h) / height)
    return "[" + ", ".join(f"{min(max(c, 0.0), 1.0):.3f}" for c in coords) + "]"


def preprocess(ann_path: str, image_path: str, save_path: str) -> dict[str, int]:
    root, out = Path(ann_path), Path(save_path)
    found = [(d, s) for d, s in DATASETS if (root / d / f"refs({s}).p").is_file()]
    if not found:
        raise UserError(f"--ann-path {root}: no REFER annotations (expected e.g. {root}/refcoco/refs(unc).p and "
                        f"{root}/refcoco/instances.json)")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    train: list[dict[str, Any]] = []
    for dataset, split_by in found:
        instances_path = root / dataset / "instances.json"
        try:
            instances = json.loads(instances_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{instances_path}: {exc}") from None
        images = {img["id"]: img for img in instances.get("images", [])}
        boxes = {ann["id"]: ann["bbox"] for ann in instances.get("annotations", [])}
        by_split: dict[str, list[dict[str, Any]]] = {}
        for n, ref in enumerate(load_refs(root / dataset / f"refs({split_by}).p")):
            try:
                image, box = images[ref["image_id"]], boxes[ref["ann_id"]]
                sentences = ref["sentences"]
            except KeyError as exc:
                raise UserError(f"{root / dataset}/refs({split_by}).p: ref {n}: unknown or missing {exc}") from None
            answer = box_text(box, image["width"], image["height"])
            for sent in sentences:
                by_split.setdefault(ref["split"], []).append({
                    "id": f"{dataset}_{ref['ref_id']}_{sent.get('sent_id', len(by_split))}",
                    "image": image["file_name"], "bbox": box, "width": image["width"], "height": image["height"],
                    "conversations": [{"from": "human", "value": "<image>\n" + QUESTION + sent["sent"].strip()},
                                      {"from": "gpt", "value": answer}]})
        for split, rows in sorted(by_split.items()):
            name = f"{dataset}_{split_by}_{split}.json" if dataset == "refcocog" else f"{dataset}_{split}.json"
            (out / name).write_text(json.dumps(rows, ensure_ascii=False))
            written[name] = len(rows)
            if split == "train":
                train += rows
    if train:
        (out / "train.json").write_text(json.dumps(train, ensure_ascii=False))
        written["train.json"] = len(train)
    missing = sum(not (Path(image_path) / r["image"]).is_file() for r in train)
    if missing:
        print(f"warning: {missing} training rows name images not found under --image-path {image_path}")
    return written


def parse_box(text: str) -> list[float] | None:
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text)
    return [float(v) for v in numbers[:4]] if len(numbers) >= 4 else None


def iou(a: list[float], b: list[float]) -> float:
    """Boxes as [x1, y1, x2, y2]."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def run_eval(args: Any) -> int:
    from .evaluate import asker, results_dir, write_sheet
    from .image import ImageError, open_image

    if not args.data_path:
        raise UserError("eval_refcoco needs --data-path (a file written by `kubetune preprocess refcoco`)")
    path = Path(args.data_path)
    try:
        rows = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--data-path {path}: {exc}") from None
    folder = Path(args.image_folder) if getattr(args, "image_folder", None) else path.parent
    ask = asker(args)
    out = results_dir(args, path.stem)
    results, correct, unparsable = [], 0, 0
    for n, row in enumerate(rows):
        where = f"{path}: row {n}"
        try:
            image = open_image(folder / row["image"], where=f"{where}: image")
            question = row["conversations"][0]["value"].replace("<image>", "").strip()
            x, y, w, h = row["bbox"]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise UserError(f"{where}: not a preprocess refcoco row ({exc})") from None
        except ImageError as exc:
            raise UserError(str(exc)) from None
        prediction = ask.ask(image, question)
        box = parse_box(prediction)
        score = 0.0
        if box is None:
            unparsable += 1
        else:
            width, height = row.get("width", image.size[0]), row.get("height", image.size[1])
            score = iou([box[0] * width, box[1] * height, box[2] * width, box[3] * height], [x, y, x + w, y + h])
        correct += score >= 0.5
        results.append([row.get("id", n), question, prediction, json.dumps(box), json.dumps(row["bbox"]),
                        round(score, 4), score >= 0.5])
    summary = {"accuracy": correct / len(rows) if rows else 0.0, "correct": correct, "total": len(rows),
               "unparsable": unparsable, "iou_threshold": 0.5}
    write_sheet(out / "refcoco_result.xlsx", ["id", "question", "prediction", "box", "truth_xywh", "iou", "hit"],
                results)
    (out / "refcoco_result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"Acc@0.5: {summary['accuracy']:.4f} ({correct}/{len(rows)}; {unparsable} answers without a box)")
    print(f"results in {out}")
    return 0
