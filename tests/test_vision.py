"""LLaVA end to end on a tiny world: stage 1 then stage 2, exact resume, both saved formats, merge --is-clip,
chat --llava --image, mmbench, RefCOCO preprocessing and evaluation, the grouped sampler, clear data errors."""

import json
import pickle
import statistics

import pytest
import torch

from . import visionkit
from .test_train import kubetune, losses


def _main(capsys, *argv):
    """A non-training mode in this process: no interpreter and torch start-up per call."""
    from types import SimpleNamespace

    from kubetune.cli.main import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def _ok(out):
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return visionkit.build_world(tmp_path_factory.mktemp("llava-world"))


@pytest.fixture(scope="module")
def stages(world, tmp_path_factory):
    """Stage 1 (projector only), then stage 2 (QLoRA LLM + encoder LoRA) from stage 1's projector."""
    root = tmp_path_factory.mktemp("llava-runs")
    env = {"KUBETUNE_CACHE": str(root / "cache")}
    pre_cfg = visionkit.write_job(root / "pre.yaml", world, "pre", "pretrain", 16)
    pre = root / "pre"
    pre_out = _ok(kubetune("train", str(pre_cfg), "--work-dir", str(pre), env=env))
    ft_cfg = visionkit.write_job(root / "ft.yaml", world, "ft", "finetune", 8,
                                 model={"uri": str(world["llm"]), "vision": {
                                     "encoder": str(world["clip"]), "projector": str(pre / "iter_16")}},
                                 dataset={"padImageToSquare": True, "groupByModalityLength": True},
                                 training={"accumulativeCounts": 2, "batchSize": 2},
                                 checkpoints={"everySteps": 4, "keep": -1})
    ft = root / "ft"
    ft_out = _ok(kubetune("train", str(ft_cfg), "--work-dir", str(ft), env=env))
    return {"root": root, "env": env, "pre": pre, "pre_cfg": pre_cfg, "pre_log": pre_out.stdout, "ft": ft,
            "ft_cfg": ft_cfg, "ft_log": ft_out.stdout}


def _decreases(values):
    assert statistics.mean(values[-3:]) < statistics.mean(values[:3]), values


def test_stage1_trains_the_projector_alone_and_stage2_the_rest(stages):
    _decreases(losses(stages["pre"]))
    _decreases(losses(stages["ft"]))
    # Projector Linear(32->64) + GELU + Linear(64->64): 6,272 weights, nothing else, in stage 1.
    assert "6,272 trainable (full)" in stages["pre_log"]
    assert sorted(p.name for p in (stages["pre"] / "iter_16" / "model").iterdir()) == ["llava.json", "projector"]
    layout = sorted(p.name for p in (stages["ft"] / "iter_8" / "model").iterdir())
    assert layout == ["llava.json", "llm_adapter", "projector", "visual_encoder_adapter"]
    assert "with_image 24" in stages["ft_log"] and "image_tokens 4" in stages["ft_log"]


def test_stage2_starts_from_the_stage1_projector(stages, world):
    """The module `train` builds for stage 2 (with_vision, in this process) holds stage 1's trained projector."""
    from transformers import AutoModelForCausalLM

    from kubetune.api.loader import load_manifest
    from kubetune.train.model import resolve_precision
    from kubetune.vision import projector
    from kubetune.vision.train import with_vision

    spec = load_manifest(stages["ft_cfg"]).spec
    llm = AutoModelForCausalLM.from_pretrained(str(world["llm"]))
    model = with_vision(spec, llm, torch.device("cpu"), resolve_precision(spec, torch.device("cpu")), 0)
    trained = projector.load(stages["pre"] / "iter_16" / "model" / "projector")
    for a, b in zip(trained.parameters(), model.projector.parameters()):
        assert torch.equal(a, b)
    # Stage 2: the encoder's own weights stay frozen, its LoRA adapters train.
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.encoder.named_parameters())


def test_interrupted_stage2_resumes_exactly(stages):
    work = stages["root"] / "interrupted"
    first = kubetune("train", str(stages["ft_cfg"]), "--work-dir", str(work),
                     env={**stages["env"], "KUBETUNE_STOP_AFTER_STEP": "4"})
    assert first.returncode != 0 and (work / "iter_4").is_dir()
    second = _ok(kubetune("train", str(stages["ft_cfg"]), "--work-dir", str(work), "--resume", "auto",
                          env=stages["env"]))
    assert "resumed from" in second.stdout
    from safetensors.torch import load_file

    for part in ("projector/model.safetensors", "llm_adapter/adapter_model.safetensors",
                 "visual_encoder_adapter/adapter_model.safetensors"):
        a = load_file(str(stages["ft"] / "iter_8" / "model" / part))
        b = load_file(str(work / "iter_8" / "model" / part))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (part, key)


def _llava_logits(loaded, ids, pixels):
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits


def test_convert_both_formats_round_trip(stages, world, capsys):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from kubetune.vision.load import load_llava
    from kubetune.vision.tokens import IMAGE_INDEX

    config = next(stages["ft"].glob("*/config.json"))
    ours = stages["root"] / "export-kubetune"
    _ok(_main(capsys, "convert", "pth_to_hf", str(config), str(stages["ft"] / "iter_8"), str(ours), "--fp32"))
    assert sorted(p.name for p in ours.iterdir()) == ["kubetune_config.yaml", "llava.json", "llm_adapter",
                                                      "projector", "visual_encoder_adapter"]
    hf_dir = stages["root"] / "export-hf"
    _ok(_main(capsys, "convert", "pth_to_hf", str(config), str(stages["ft"] / "iter_8"), str(hf_dir), "--fp32",
                 "--save-format", "huggingface"))

    from_ckpt = load_llava(str(world["llm"]), str(stages["ft"] / "iter_8"), str(world["clip"]), None, dtype="fp32")
    converted = load_llava(str(world["llm"]), str(ours), None, None, dtype="fp32")  # encoder from the config
    picture = visionkit.image("blue", (40, 28))
    pixels = from_ckpt.processor(picture).unsqueeze(0)
    text = "USER: <image>\nWhat colour is this image? ASSISTANT:"
    ids = from_ckpt.expand(from_ckpt.tokenizer.encode(text, add_special_tokens=False))
    reference = _llava_logits(from_ckpt, ids, pixels)
    assert torch.allclose(_llava_logits(converted, ids, pixels), reference, atol=1e-5)

    hf = LlavaForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(hf_dir))
    inputs = processor(images=picture, text=text, return_tensors="pt")
    hf_ids = [hf.config.image_token_index if t == IMAGE_INDEX else t for t in ids]
    assert inputs["input_ids"][0].tolist() == hf_ids  # the processor expands <image> as we do
    assert torch.allclose(inputs["pixel_values"], pixels, atol=1e-5)  # and preprocesses the image as we do
    with torch.no_grad():
        logits = hf(**inputs).logits
    assert torch.allclose(logits[..., :reference.shape[-1]], reference, atol=1e-4)


def test_merge_is_clip_equals_peft(stages, world, tmp_path, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel

    adapter = stages["ft"] / "iter_8" / "model" / "visual_encoder_adapter"
    out = tmp_path / "merged-clip"
    _ok(_main(capsys, "convert", "merge", str(world["clip"]), str(adapter), str(out), "--is-clip"))
    assert (out / "preprocessor_config.json").is_file()
    base = CLIPVisionModel.from_pretrained(str(world["clip"]), dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().state_dict()
    merged = load_file(str(next(out.glob("*.safetensors"))))
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(merged[key].float(), value, atol=1e-6), key
    wrong = _main(capsys, "convert", "merge", str(world["llm"]), str(adapter), str(tmp_path / "x"), "--is-clip")
    assert wrong.returncode == 2 and "not a CLIP vision encoder" in wrong.stderr


def test_chat_llava_answers_about_the_image(stages, world, capsys):
    out = _ok(_main(capsys, "chat", str(world["llm"]), "--llava", str(stages["ft"] / "iter_8"), "--visual-encoder",
                       str(world["clip"]), "--image", str(world["images"] / "0.png"), "--prompt-template", "vicuna",
                       "--prompt", "What colour is this image?", "--max-new-tokens", "6", "--temperature", "0"))
    assert out.stdout.strip()
    missing = _main(capsys, "chat", str(world["llm"]), "--llava", str(stages["ft"] / "iter_8"), "--visual-encoder",
                       str(world["clip"]), "--image", "nope.png", "--prompt", "hi")
    assert missing.returncode == 2 and "--image nope.png: image not found" in missing.stderr


def test_mmbench_accuracy_is_what_its_predictions_imply(stages, world, tmp_path, capsys):
    from openpyxl import load_workbook

    tsv = visionkit.mmbench_tsv(tmp_path / "mmbench_dev.tsv")
    out = _ok(_main(capsys, "mmbench", str(world["llm"]), "--llava", str(stages["ft"] / "iter_8"), "--visual-encoder",
                       str(world["clip"]), "--prompt-template", "vicuna", "--data-path", str(tsv), "--work-dir",
                       str(tmp_path / "mm"), "--max-new-tokens", "4"))
    assert "Overall accuracy" in out.stdout
    run = next((tmp_path / "mm").iterdir())
    assert sorted(p.name for p in run.iterdir()) == ["args.json", "mmbench_result.json", "mmbench_result.xlsx"]
    summary = json.loads((run / "mmbench_result.json").read_text())
    sheet = load_workbook(run / "mmbench_result.xlsx").active
    header, *rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    rows = [dict(zip(header, r)) for r in rows]
    assert len(rows) == 20
    groups = {}
    for row in rows:
        hit = (row["predicted"] or "") == row["answer"]
        assert row["hit"] == hit
        groups.setdefault(int(row["index"]) % 1_000_000, []).append(row)
    implied = {k: all((r["predicted"] or "") == r["answer"] for r in members) for k, members in groups.items()}
    assert summary["questions"] == 16 and summary["rows"] == 20
    assert summary["Overall"] == pytest.approx(sum(implied.values()) / len(implied))
    for category in ("colour", "perception"):
        members = [k for k, m in groups.items() if m[0]["category"] == category]
        assert summary["category"][category] == pytest.approx(sum(implied[k] for k in members) / len(members))


def test_mmbench_reads_the_option_letter():
    from kubetune.vision.mmbench import accuracy, infer_letter

    options = {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
    assert infer_letter("B", options) == "B"
    assert infer_letter("(C) blue", options) == "C"
    assert infer_letter("The answer is D.", options) == "D"
    assert infer_letter("It is green.", options) == "B"
    assert infer_letter("A or B", options) is None
    assert infer_letter("no idea", options) is None
    rows = [{"index": "1", "hit": True, "category": "x"}, {"index": "1000001", "hit": False, "category": "x"},
            {"index": "2", "hit": True, "category": "y"}]
    assert accuracy(rows)["Overall"] == 0.5 and accuracy(rows)["category"] == {"x": 0.0, "y": 1.0}


def test_preprocess_refcoco_then_evaluate(stages, world, tmp_path, capsys):
    from kubetune.vision.refcoco import iou

    root = visionkit.refcoco_annotations(tmp_path / "refer")
    save = tmp_path / "refcoco_llava"
    out = _ok(_main(capsys, "preprocess", "refcoco", "--ann-path", str(root), "--image-path", str(root / "images"),
                       "--save-path", str(save)))
    assert "2 rows" in out.stdout
    assert sorted(p.name for p in save.iterdir()) == ["refcoco_testA.json", "refcoco_train.json",
                                                      "refcoco_val.json", "train.json"]
    train = json.loads((save / "train.json").read_text())
    assert [r["conversations"][1]["value"] for r in train] == ["[0.100, 0.100, 0.600, 0.600]"] * 2
    assert train[1]["conversations"][0]["value"].endswith("describes: car on the left")
    assert train[0]["image"] == "COCO_train2014_000000000001.jpg"
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)

    result = _ok(_main(capsys, "eval_refcoco", str(world["llm"]), "--llava", str(stages["ft"] / "iter_8"),
                          "--visual-encoder", str(world["clip"]), "--prompt-template", "vicuna", "--data-path",
                          str(save / "train.json"), "--image-folder", str(root / "images"), "--work-dir",
                          str(tmp_path / "ev"), "--max-new-tokens", "4"))
    assert "Acc@0.5" in result.stdout
    summary = json.loads(next((tmp_path / "ev").glob("*/refcoco_result.json")).read_text())
    assert summary["total"] == 2 and summary["correct"] + (summary["total"] - summary["correct"]) == 2

    evil = tmp_path / "evil" / "refcoco"
    evil.mkdir(parents=True)
    (evil / "instances.json").write_text("{}")
    (evil / "refs(unc).p").write_bytes(pickle.dumps(print))  # a reference to code, not data
    refused = _main(capsys, "preprocess", "refcoco", "--ann-path", str(evil.parent), "--save-path", str(tmp_path / "o"))
    assert refused.returncode == 2 and "refusing to load" in refused.stderr


def test_modality_grouped_order_keeps_each_step_to_one_modality():
    from kubetune.vision.train import modality_grouped_order

    lengths = [10, -5, 30, -7, 12, 40, -9, 8, 22, -3, 15, 11, -6]
    order = modality_grouped_order(lengths, 4, seed=3, epoch=0)
    assert sorted(order) == list(range(len(lengths)))
    assert order == modality_grouped_order(lengths, 4, seed=3, epoch=0)
    assert order != modality_grouped_order(lengths, 4, seed=3, epoch=1)
    whole = len([n for n in lengths if n > 0]) // 4 + len([n for n in lengths if n <= 0]) // 4
    for step in range(whole):
        group = [lengths[i] for i in order[step * 4:(step + 1) * 4]]
        assert all(n > 0 for n in group) or all(n <= 0 for n in group)
        assert [abs(n) for n in group] == sorted((abs(n) for n in group), reverse=True)


def test_bad_llava_data_names_the_row(world, tmp_path):
    rows = json.loads(world["data"].read_text())[:3]
    rows[1]["conversations"] = [{"from": "gpt", "value": "answer first"}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    cfg = visionkit.write_job(tmp_path / "bad.yaml", {**world, "data": bad}, "bad", "pretrain", 2)
    out = kubetune("train", str(cfg), "--work-dir", str(tmp_path / "w"))
    assert out.returncode == 2 and "row 1: conversations[0]: a gpt turn without a human turn" in out.stderr
    rows = json.loads(world["data"].read_text())[:3]
    rows[2]["image"] = "missing.png"
    bad.write_text(json.dumps(rows))
    out = kubetune("train", str(cfg), "--work-dir", str(tmp_path / "w"))
    assert out.returncode == 2 and "row 2: image: missing.png not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_zero2_with_two_processes_matches_the_plain_run(world, tmp_path):
    """LLaVA under DeepSpeed ZeRO-2 (the catalogue's setting), 2 processes x 1 sample = 1 process x 2 micro-batches:
    same losses and the same projector, LLM adapter and encoder adapter."""
    from safetensors.torch import load_file

    from .test_train_parallel import TWO, scalars

    cfg = visionkit.write_job(tmp_path / "ds.yaml", world, "ds", "finetune", 3,
                              method={"type": "lora"},
                              training={"batchSize": 1, "precision": "fp32", "optimizer": {"lr": 1e-3}})
    env = {"KUBETUNE_CACHE": str(tmp_path / "c")}
    plain, zero2 = tmp_path / "plain", tmp_path / "zero2"
    _ok(kubetune("train", str(cfg), "--work-dir", str(plain), "--cfg-options", "training.accumulativeCounts=2",
                 env=env))
    out = _ok(kubetune("train", str(cfg), "--work-dir", str(zero2), "--deepspeed", "zero2", env={**env, **TWO}))
    assert "DeepSpeed ZeRO-2" in out.stdout and "2 data-parallel rank(s)" in out.stdout
    for a, b in zip(scalars(plain), scalars(zero2)):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
    for part in ("projector/model.safetensors", "llm_adapter/adapter_model.safetensors",
                 "visual_encoder_adapter/adapter_model.safetensors"):
        wa, wb = (load_file(str(w / "iter_3" / "model" / part)) for w in (plain, zero2))
        assert wa.keys() == wb.keys()
        for key in wa:  # gloo's reduction order moves the last digits; Adam's update is ~lr whatever the gradient
            assert torch.allclose(wa[key], wb[key], atol=2e-6, rtol=0), (part, key)


def test_dataset_tools_understand_llava(world, tmp_path, capsys):
    cfg = visionkit.write_job(tmp_path / "d.yaml", world, "d", "pretrain", 1)
    check = _ok(_main(capsys, "check-custom-dataset", str(cfg)))
    assert "samples 25, with_image 24" in check.stdout
    log = _ok(_main(capsys, "log-dataset", str(cfg), "--show", "all"))
    assert "4 tokens per <image>" in log.stdout and "USER: <image>\nWhat colour is this image?" in log.stdout
