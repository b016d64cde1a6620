"""The catalogue is XTuner's: the generated table equals XTuner 0.2.0's files read by the importer, and every row of
the reference table (tests/data/xtuner-v0.2.0-configs.jsonl, a copy of shared/notes' table, extracted from the same
files without the importer)
is in `list-cfg`, and its `copy-cfg` output carries the row's settings, or the name is refused with the reason
docs/configs.md lists. KUBETUNE_REGEN_XTUNER_TABLE=1 rewrites the table."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from kubetune.api import catalog, parse_manifest
from kubetune.api.xtuner import table
from kubetune.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "xtuner-v0.2.0-configs.jsonl"
DTYPES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}
# The one setting that differs on purpose in configs that run (docs/configs.md): kubetune's LLaVA pretrain stage
# keeps the frozen LLM in its dtype, XTuner's loads it in 4 bits.
ON_PURPOSE = {"quantization": "kubetune's pretrain stage keeps the frozen LLM in its dtype"}
# These set warmup_ratio = 0.03 but their param_scheduler is one CosineAnnealingLR from 0: XTuner trains them without
# a warm-up, and so does their import (warmupRatio 0).
UNUSED_WARMUP = {"deepseek_v2_chat_full_alpaca_e3", "deepseek_v2_lite_chat_full_alpaca_e3",
                 "deepseek_v2_lite_chat_full_alpaca_e3_32k_varlen"}


def rows() -> list[dict]:
    return [json.loads(line) for line in REFERENCE.read_text(encoding="utf-8").splitlines()]


def test_the_table_is_xtuners_files_read_by_the_importer():
    configs = Path(subprocess.run([str(ROOT / ".ci" / "xtuner-configs")], check=True, capture_output=True,
                                  text=True).stdout.strip())
    built = table.encode(table.build(configs))
    if os.environ.get("KUBETUNE_REGEN_XTUNER_TABLE"):
        table.TABLE.write_bytes(built)
    assert built == table.TABLE.read_bytes(), \
        "the importer reads XTuner's files differently now: KUBETUNE_REGEN_XTUNER_TABLE=1 pytest " \
        "tests/test_xtuner_catalog.py, then review docs/configs.md"


def _hub(value: str) -> str:
    return value if value.startswith(("/", ".", "~")) or "://" in value else f"hf://{value}"


def differences(row: dict, spec: dict) -> list[tuple[str, object, object]]:
    """Each reference setting against the FineTuneJob field that decides it: (setting, kubetune, XTuner)."""
    out: list[tuple[str, object, object]] = []
    model, method, training = spec["model"], spec["method"], spec["training"]
    data, ckpt, evaluation = spec.get("dataset", {}), spec.get("checkpoints", {}), spec.get("evaluation", {})

    def eq(key: str, got: object, want: object) -> None:
        if got != want:
            out.append((key, got, want))

    for key in ("pretrained_model_name_or_path", "llm_name_or_path"):
        if key in row:
            eq(key, model["uri"], _hub(row[key]))
    if "visual_encoder_name_or_path" in row:
        eq("visual_encoder_name_or_path", model["vision"]["encoder"], _hub(row["visual_encoder_name_or_path"]))
    if isinstance(row.get("max_length"), int):
        eq("max_length", data.get("maxLength"), row["max_length"])
    for key, field in (("batch_size", "batchSize"), ("max_norm", "maxNorm"), ("warmup_ratio", "warmupRatio"),
                       ("dataloader_num_workers", "dataloaderNumWorkers")):
        if key in row:
            eq(key, training.get(field), 0.0 if key == "warmup_ratio" and row["name"] in UNUSED_WARMUP else row[key])
    if "max_epochs" in row and "maxSteps" not in training:  # train_cfg's max_iters wins where a config sets it
        eq("max_epochs", training.get("maxEpochs"), row["max_epochs"])
    sp = row.get("sequence_parallel_size", 1)
    if "accumulative_counts" in row and training.get("accumulativeCounts") != row["accumulative_counts"] * sp:
        eq("accumulative_counts", training.get("accumulativeCounts"), row["accumulative_counts"])
    eq("sequence_parallel_size", training.get("sequenceParallelSize", 1), sp)
    eq("unit", training.get("stepUnit"), "iteration")  # save_steps, evaluation_freq, max_iters count micro-batches
    optimizer = training["optimizer"]
    for key, field in (("lr", "lr"), ("betas", "betas"), ("weight_decay", "weightDecay")):
        if key in row:
            eq(key, optimizer.get(field), list(row[key]) if key == "betas" else row[key])
    if "amp_dtype" in row:
        eq("amp_dtype", training.get("precision"), {"float16": "fp16", "bfloat16": "bf16"}[row["amp_dtype"]])
    if "torch_dtype" in row:
        eq("torch_dtype", model.get("dtype"), DTYPES[row["torch_dtype"]])
    if "save_total_limit" in row:
        eq("save_total_limit", ckpt.get("keep"), row["save_total_limit"])
    if (row.get("checkpoint_hook") or {}).get("interval") == "save_steps" and row.get("save_steps", -1) > 0:
        eq("save_steps", ckpt.get("everySteps"), row["save_steps"])
    if "prompt_template" in row:  # preference data is rendered with the chat template (XTuner's tokenize())
        eq("prompt_template", data.get("promptTemplate"), "auto" if row.get("model_type") in
           ("DPO", "ORPO", "RewardModel") else row["prompt_template"]["$ref"].rsplit(".", 1)[-1])
    if "use_varlen_attn" in row and "llm_name_or_path" not in row:
        eq("use_varlen_attn", data.get("varlenAttention", False), row["use_varlen_attn"])
    if "pack_to_max_length" in row and row.get("model_type") == "SupervisedFinetune":
        eq("pack_to_max_length", data.get("packToMaxLength"), row["pack_to_max_length"])
    if "shuffle_before_pack" in row:
        eq("shuffle_before_pack", data.get("shuffleBeforePack", True), row["shuffle_before_pack"])
    hook = row.get("eval_hook") or {}
    if "evaluation_inputs" in row and hook:
        eq("evaluation_inputs", evaluation.get("inputs"), row["evaluation_inputs"])
    if "evaluation_freq" in row and hook.get("every_n_iters") == "evaluation_freq":
        eq("evaluation_freq", evaluation.get("everySteps"), row["evaluation_freq"])
    if "SYSTEM" in row and "system" in hook:
        system = row["SYSTEM"]
        if isinstance(system, dict):
            eq("SYSTEM", evaluation.get("systemTemplate"), system["$ref"].rsplit(".", 1)[-1])
        else:
            eq("SYSTEM", evaluation.get("system"), system or None)
    if row.get("lora"):  # the LLM's and the image encoder's, in any order
        want = sorted((lora.get("r", 8), lora.get("lora_alpha", 8), lora.get("lora_dropout", 0.0))
                      for lora in row["lora"])
        mine = [method.get("lora"), method.get("vision", {}).get("encoderLora")]
        eq("lora", sorted((lo["r"], lo["alpha"], lo["dropout"]) for lo in mine if lo), want)
    if row.get("quantization"):
        q, mq = row["quantization"], method.get("quantization") or {}
        eq("quantization", (mq.get("bits"), mq.get("type"), mq.get("doubleQuant")),
           (4 if q.get("load_in_4bit") else 8, q.get("bnb_4bit_quant_type", "nf4"),
            bool(q.get("bnb_4bit_use_double_quant", False))))
    kinds = {"DPO": "dpo", "ORPO": "orpo", "RewardModel": "reward"}
    if row.get("model_type") in kinds:
        eq("model_type", method["type"], kinds[row["model_type"]])
    sources = [data, *data.get("concat", [])]
    hub_ids = row.get("load_dataset") or []
    if hub_ids and not set(hub_ids) & {"json", "jsonl", "csv", "parquet"}:
        eq("load_dataset", [s["uri"] for s in sources], [_hub(h) for h in hub_ids])
    if row.get("dataset_map_fn") and row.get("model_type") == "SupervisedFinetune":
        want_formats = ["xtuner" if fn in ("None", "template_map_fn") else fn.removesuffix("_map_fn")
                        for fn in row["dataset_map_fn"]]
        eq("dataset_map_fn", [s.get("format", "xtuner") for s in sources], want_formats)
    return out


def test_every_reference_row_is_listed_and_copies_with_xtuners_settings(tmp_path, capsys):
    reference = rows()
    assert len(reference) == 593
    assert main(["list-cfg"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:-1]
    names = list(dict.fromkeys(r["name"] for r in reference))
    xtuners = sorted([*names, *catalog.DEEPSPEED_NAMES])  # XTuner's list-cfg has its DeepSpeed JSON files too
    assert listed[:len(xtuners)] == xtuners, "list-cfg prints XTuner's names first, in XTuner's (sorted) order"
    docs = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    ran, refused, on_purpose, wrong = 0, 0, 0, []
    for row in reference:
        entry = catalog.xtuner_table()[row["name"]]
        if entry["path"] != row["path"]:  # a repeated name (4 in XTuner): the table keeps one file of the two
            assert any(r["path"] == entry["path"] for r in reference if r["name"] == row["name"])
            continue
        if "refused" in entry:
            refused += 1
            reason = re.sub(r"^line \d+: ", "", entry["refused"][0])
            assert f"**{reason}**" in docs and f"`{row['name']}`" in docs, (row["name"], reason)
            assert main(["copy-cfg", row["name"], str(tmp_path)]) == 2
            assert reason in capsys.readouterr().err
            continue
        assert main(["copy-cfg", row["name"], str(tmp_path)]) == 0
        capsys.readouterr()
        doc = yaml.safe_load((tmp_path / f"{row['name']}_copy.yaml").read_text(encoding="utf-8"))
        parse_manifest(doc, source=row["name"])
        ran += 1
        for key, got, want in differences(row, doc["spec"]):
            if key in ON_PURPOSE and any(ON_PURPOSE[key] in n for n in catalog.notes(row["name"])):
                on_purpose += 1
            else:
                wrong.append((row["name"], key, got, want))
    assert not wrong, wrong[:20]
    assert ran == 475 and refused == 114 and on_purpose == 8, (ran, refused, on_purpose)
    print(f"{ran} XTuner configs copy with XTuner's settings ({on_purpose} LLaVA pretrain LLMs unquantized on "
          f"purpose); {refused} refused with the reason docs/configs.md gives")


def test_an_unknown_name_and_a_refused_name_are_one_line_errors(tmp_path, capsys):
    assert main(["copy-cfg", "internvl_v2_phi3_4b_finetune", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "type=InternVL_V1_5" in err and "docs/configs.md" in err and "Traceback" not in err
    assert main(["copy-cfg", "internlm2_chat_7b_qlora_alpaka_e3", str(tmp_path)]) == 2
    assert "did you mean internlm2_chat_7b_qlora_alpaca_e3" in capsys.readouterr().err


def test_every_inert_key_is_documented_with_its_reason():
    from kubetune.api.xtuner.accounting import INERT

    docs = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    for pattern, why in INERT:
        assert f"| `{pattern}` | {why} |" in docs, pattern


def test_xtuners_deepspeed_names_are_listed_and_copied(tmp_path, capsys):
    assert main(["list-cfg", "-p", "deepspeed"]) == 0
    assert set(catalog.DEEPSPEED_NAMES) <= set(capsys.readouterr().out.split())
    assert main(["copy-cfg", "deepspeed_zero2", str(tmp_path)]) == 0
    copied = json.loads((tmp_path / "deepspeed_zero2_copy.json").read_text())
    assert copied["zero_optimization"]["stage"] == 2
