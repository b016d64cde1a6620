"""XTuner 0.2.0's side of bench/train_bench.py: runs in XTuner's own venv (transformers 4.48), never imported by
kubetune. Converts the tiny model to files transformers 4.48 loads, writes an XTuner config with literal paths (XTuner
configs cannot read the environment), and runs `xtuner.tools.train` through the CPU shim of shared notes §5."""

XT_MODEL = r'''
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
c = json.loads((src / "config.json").read_text())
cfg = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                  num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                  num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"], rms_norm_eps=c["rms_norm_eps"],
                  max_position_embeddings=c["max_position_embeddings"], rope_theta=c["rope_parameters"]["rope_theta"],
                  bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"], pad_token_id=c["pad_token_id"],
                  tie_word_embeddings=c["tie_word_embeddings"])
model = LlamaForCausalLM(cfg)
model.load_state_dict(load_file(str(src / "model.safetensors")))
model.save_pretrained(dst)
shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
tc = json.loads((src / "tokenizer_config.json").read_text())
tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # 4.48 cannot load the class name transformers 5 writes
tc["additional_special_tokens"] = tc.pop("extra_special_tokens", [])
tc.pop("backend", None)
(dst / "tokenizer_config.json").write_text(json.dumps(tc))
'''

# Same recipe as kubetune's side: LoRA r=8 on every linear layer but the head, fp32, packed to max_length (XTuner's
# default; without flash-attn on a CPU it packs without varlen attention), one epoch, the same samples per step.
XT_CONFIG = '''
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import OptimWrapper, CosineAnnealingLR
from peft import LoraConfig
from torch.optim import AdamW
from transformers import AutoModelForCausalLM, AutoTokenizer
from xtuner.dataset import process_hf_dataset
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.map_fns import alpaca_map_fn, template_map_fn_factory
from xtuner.engine.runner import TrainLoop
from xtuner.model import SupervisedFinetune
from xtuner.utils import PROMPT_TEMPLATE

path = {model!r}
tokenizer = dict(type=AutoTokenizer.from_pretrained, pretrained_model_name_or_path=path, padding_side="right")
model = dict(type=SupervisedFinetune, use_varlen_attn=False,
             llm=dict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=path, torch_dtype=torch.float32),
             lora=dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
train_dataset = dict(type=process_hf_dataset, dataset=dict(type=load_dataset, path="json", data_files=[{data!r}]),
                     tokenizer=tokenizer, max_length={max_length}, dataset_map_fn=alpaca_map_fn,
                     template_map_fn=dict(type=template_map_fn_factory, template=PROMPT_TEMPLATE.internlm2_chat),
                     remove_unused_columns=True, shuffle_before_pack=True, pack_to_max_length=True, use_varlen_attn=False)
train_dataloader = dict(batch_size=1, num_workers=0, dataset=train_dataset, sampler=dict(type=DefaultSampler, shuffle=True),
                        collate_fn=dict(type=default_collate_fn, use_varlen_attn=False))
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-4, betas=(0.9, 0.999), weight_decay=0),
                     clip_grad=dict(max_norm=1, error_if_nonfinite=False), accumulative_counts={accum})
param_scheduler = [dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=0, end=1, convert_to_iter_based=True)]
train_cfg = dict(type=TrainLoop, max_epochs=1)
default_hooks = dict(timer=dict(type=IterTimerHook), logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=1),
                     param_scheduler=dict(type=ParamSchedulerHook),
                     checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=100000, max_keep_ckpts=1),
                     sampler_seed=dict(type=DistSamplerSeedHook))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="gloo"))
visualizer = None
log_level = "WARNING"
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
log_processor = dict(by_epoch=False)
'''

XT_RUN = r'''
import json, resource, runpy, sys, torch
from pathlib import Path
if not hasattr(torch.cpu, "is_bf16_supported"):  # xtuner 0.2.0 calls it when no GPU is present
    torch.cpu.is_bf16_supported = lambda *a, **k: False
args = json.loads(sys.argv[1])
sys.argv = ["xtuner.tools.train", args["cfg"], "--work-dir", args["work"]]
runpy.run_module("xtuner.tools.train", run_name="__main__")
scalars = [json.loads(l) for l in next(Path(args["work"]).glob("*/vis_data/scalars.json")).read_text().splitlines()]
steps = [s for s in scalars if "time" in s]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": sum(s["time"] for s in steps), "steps": len(steps), "peak_rss_mb": peak}))
'''
