"""The baselines' side of bench/train_bench.py, each run as `python -c CODE PAYLOAD` in a fresh process, and the
wrapper that times any command as a whole process. Every worker prints one JSON line last."""

# Runs a command, timing it from spawn to exit (imports, data, model load, training, saving: what a user waits
# for) and reading its peak RSS; the wrapper itself imports nothing heavy.
WRAP = r'''
import json, resource, subprocess, sys, time
cmd, env_extra = json.loads(sys.argv[1]), json.loads(sys.argv[2])
import os
t0 = time.perf_counter()
out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env_extra))
wall = time.perf_counter() - t0
if out.returncode:
    raise SystemExit(out.stdout[-2000:] + out.stderr[-4000:])
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"process_seconds": wall, "peak_rss_mb": peak, "stdout_tail": out.stdout.strip().splitlines()[-1:]}))
'''

# Data through kubetune's pipeline without packing (the same token sequences and labels for every side; kubetune's
# tokenization is faster than either baseline's own, so this flatters their start-up, not ours).
_COMMON = r'''
import json, sys, time, torch
args = json.loads(sys.argv[1])
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig
from kubetune.api import DatasetSpec
from kubetune.data.pipeline import build
from pathlib import Path
tok = AutoTokenizer.from_pretrained(args["model"])
spec = DatasetSpec(uri=args["data"], format="alpaca", prompt_template="internlm2_chat", max_length=args["max_length"],
                   pack_to_max_length=False)
data = build(spec, tok, seed=0, cache_root=Path(args["cache"]), log=lambda s: None).dataset
data = data.remove_columns([c for c in data.column_names if c not in ("input_ids", "labels")])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(args["model"], dtype=torch.float32, attn_implementation="sdpa")
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
common = dict(output_dir=args["work"], num_train_epochs=1, learning_rate=2e-4, lr_scheduler_type="cosine",
              warmup_steps=0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
              dataloader_num_workers=0, gradient_checkpointing=False, bf16=False, fp16=False)
'''

# HF Trainer + PEFT: batches of 8 samples, each padded to its longest sample (dynamic padding).
HF = _COMMON + r'''
from peft import get_peft_model
from transformers import Trainer, TrainingArguments
model = get_peft_model(model, lora)
def collate(rows):
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id); labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"]); ids[i, :n] = torch.tensor(r["input_ids"]); labels[i, :n] = torch.tensor(r["labels"]); mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
targs = TrainingArguments(per_device_train_batch_size=8, remove_unused_columns=False, **common)
trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate)
result = trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"loop_seconds": result.metrics["train_runtime"], "steps": result.global_step, "losses": losses}))
'''

# TRL SFTTrainer with its padding-free packing (best-fit decreasing into rows of max_length, each batch flattened
# into one sequence with position ids that restart per sample): rows per step chosen for about 8 samples.
TRL = _COMMON + r'''
from trl import SFTConfig, SFTTrainer
cfg = SFTConfig(per_device_train_batch_size=args["trl_rows"], packing=True, packing_strategy="bfd",
                max_length=args["max_length"], dataset_num_proc=1, **common)
trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora)
result = trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"loop_seconds": result.metrics["train_runtime"], "steps": result.global_step, "losses": losses}))
'''
