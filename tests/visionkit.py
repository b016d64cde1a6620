"""A tiny LLaVA world built locally: a tiny Llama and CLIP encoder, solid-colour images, LLaVA-format data, an
MMBench TSV and RefCOCO annotations in REFER's layout."""

from __future__ import annotations

import base64
import io
import json
import pickle
import random
from pathlib import Path

import yaml

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def image(color: str, size: tuple[int, int] = (28, 28)):
    from PIL import Image

    return Image.new("RGB", size, COLORS[color])


def build_world(root: Path, rows: int = 24) -> dict[str, Path]:
    from kubetune import tiny

    root.mkdir(parents=True, exist_ok=True)
    tiny.build(root / "llm")
    tiny.build_vision_encoder(root / "clip")
    images = root / "images"
    images.mkdir(exist_ok=True)
    rng = random.Random(0)
    data = []
    for i in range(rows):
        color = list(COLORS)[i % len(COLORS)]
        image(color, rng.choice([(28, 28), (40, 28), (28, 36)])).save(images / f"{i}.png")
        data.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "What colour is this image?\n<image>"},
            {"from": "gpt", "value": f"It is {color}."}]})
    data.append({"id": "text", "conversations": [{"from": "human", "value": "Hello"},
                                                 {"from": "gpt", "value": "Hello world"}]})
    (root / "data.json").write_text(json.dumps(data))
    return {"llm": root / "llm", "clip": root / "clip", "images": images, "data": root / "data.json"}


def write_job(path: Path, world: dict[str, Path], name: str, stage: str, steps: int, **over) -> Path:
    method = {"type": "full", "vision": {"stage": "pretrain"}} if stage == "pretrain" else {
        "type": "qlora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "vision": {"encoderLora": {"r": 4, "alpha": 8, "dropout": 0.0}}}
    spec = {
        "model": {"uri": str(world["llm"]), "vision": {"encoder": str(world["clip"])}},
        "method": method,
        "dataset": {"uri": str(world["data"]), "format": "llava", "packToMaxLength": False,
                    "imageFolder": str(world["images"]), "promptTemplate": "vicuna", "maxLength": 128},
        "training": {"batchSize": 4, "accumulativeCounts": 1, "maxSteps": steps, "logEverySteps": 1, "seed": 0,
                     "warmupRatio": 0, "optimizer": {"lr": 0.02}},
        "checkpoints": {"everySteps": steps},
    }
    for key, value in over.items():
        spec[key] = {**spec.get(key, {}), **value}
    path.write_text(yaml.safe_dump({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": name}, "spec": spec}))
    return path


def mmbench_tsv(path: Path, questions: int = 20) -> Path:
    """Questions about an image's colour, options A-D, base64 PNGs, two categories; the last four rows repeat
    questions 0-3 with the options rotated (MMBench's circular evaluation: same index modulo 1e6)."""
    names = list(COLORS)
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    lines = ["\t".join(header)]
    for i in range(questions):
        base = i if i < questions - 4 else i - (questions - 4)
        color = names[base % 4]
        shift = 0 if i < questions - 4 else 1
        options = names[shift:] + names[:shift]
        buf = io.BytesIO()
        image(color).save(buf, format="PNG")
        index = base if shift == 0 else 1_000_000 + base
        hint = "Look closely." if i % 5 == 0 else "nan"
        lines.append("\t".join([str(index), "What colour is the image?", hint, *options,
                                "ABCD"[options.index(color)], "colour" if i % 2 else "perception",
                                "coarse" if i % 3 else "fine", base64.b64encode(buf.getvalue()).decode()]))
    path.write_text("\n".join(lines) + "\n")
    return path


def refcoco_annotations(root: Path) -> Path:
    """REFER's layout for one dataset: refcoco/instances.json and refcoco/refs(unc).p (two images, three refs)."""
    ann = root / "refcoco"
    ann.mkdir(parents=True, exist_ok=True)
    images = [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 200, "height": 100},
              {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "width": 50, "height": 50}]
    annotations = [{"id": 10, "image_id": 1, "bbox": [20, 10, 100, 50], "category_id": 1},
                   {"id": 11, "image_id": 2, "bbox": [0, 0, 25, 25], "category_id": 2},
                   {"id": 12, "image_id": 1, "bbox": [150, 50, 50, 50], "category_id": 1}]
    (ann / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    refs = [{"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train",
             "sentences": [{"sent_id": 0, "sent": "the red car"}, {"sent_id": 1, "sent": "car on the left"}]},
            {"ref_id": 1, "ann_id": 11, "image_id": 2, "split": "val", "sentences": [{"sent_id": 2, "sent": "dog"}]},
            {"ref_id": 2, "ann_id": 12, "image_id": 1, "split": "testA",
             "sentences": [{"sent_id": 3, "sent": "right box"}]}]
    (ann / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    for img in images:
        (root / "images").mkdir(exist_ok=True)
        from PIL import Image

        Image.new("RGB", (img["width"], img["height"]), (90, 90, 90)).save(root / "images" / img["file_name"])
    return root
