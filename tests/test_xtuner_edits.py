"""The edits an XTuner user makes to a config, each imported by `import_config` (a syntax-tree read, milliseconds):
mapped to the FineTuneJob field that carries it, or refused with the line of the edit. Never an import that drops
it and returns the unedited manifest. The base is XTuner 0.2.0's own internlm2_chat_7b_qlora_oasst1_e3.py (the
usage document's model and dataset)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubetune.api import parse_manifest
from kubetune.api.xtuner import import_config

ROOT = Path(__file__).resolve().parents[1]
BASE = "internlm/internlm2_chat_7b/internlm2_chat_7b_qlora_oasst1_e3.py"

# (id, the text replaced, its replacement, the spec field and value it maps to)
MAPPED = [
    ("start-factor", "start_factor=1e-5,", "start_factor=0.1,", ("training", "warmupStartFactor"), 0.1),
    ("eta-min", "eta_min=0.0,", "eta_min=2e-5,", ("training", "minLrRatio"), pytest.approx(0.1)),
    ("literal-warmup-end", "warmup_ratio * max_epochs", "0.3", ("training", "warmupRatio"), pytest.approx(0.1)),
    ("constant-after-warmup", "type=CosineAnnealingLR,\n        eta_min=0.0,", "type='ConstantLR',\n        factor=1.0,",
     ("training", "lrSchedule"), "constant"),
    ("eps", "weight_decay=weight_decay),", "weight_decay=weight_decay, eps=1e-6),",
     ("training", "optimizer", "eps"), 1e-6),
    ("clip-grad-none", "clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),", "clip_grad=None,",
     ("training", "maxNorm"), 0),
    ("sampler-no-shuffle", "sampler=dict(type=sampler, shuffle=True)", "sampler=dict(type=sampler, shuffle=False)",
     ("training", "shuffle"), False),
    ("logger-interval", "interval=10),", "interval=5),", ("training", "logEverySteps"), 5),
    ("no-activation-checkpointing", "type=SupervisedFinetune,", "type=SupervisedFinetune,\n    "
     "use_activation_checkpointing=False,", ("training", "gradientCheckpointing"), False),
    ("deterministic", "deterministic=False", "deterministic=True", ("training", "deterministic"), True),
    ("max-dataset-length", "remove_unused_columns=True,", "remove_unused_columns=True,\n    max_dataset_length=100,",
     ("dataset", "maxSamples"), 100),
    ("stop-words", "prompt_template=prompt_template,\n    ),",
     "prompt_template=prompt_template,\n        stop_words=['<eoa>'],\n    ),", ("evaluation", "stopWords"), ["<eoa>"]),
    ("greedy-eval", "prompt_template=prompt_template,\n    ),",
     "prompt_template=prompt_template,\n        generation_kwargs=dict(do_sample=False),\n    ),",
     ("evaluation", "greedy"), True),
    ("sgd", "optim_type = AdamW", "from torch.optim import SGD\noptim_type = SGD", ("training", "optimizer", "type"),
     "SGD"),
    ("paged-adamw", "optim_type = AdamW", "from bitsandbytes.optim import PagedAdamW8bit\noptim_type = PagedAdamW8bit",
     ("training", "optimizer", "type"), "PagedAdamW8bit"),
    ("interval-minus-one", "interval=save_steps,", "interval=-1,", ("checkpoints", "everySteps"), 0),
    ("by-epoch-checkpoint", "by_epoch=False,\n        interval=save_steps,", "by_epoch=True,\n        interval=2,",
     ("checkpoints", "everySteps"), 0),
    ("save-steps-are-iterations", "save_steps = 500", "save_steps = 20", ("checkpoints", "everySteps"), 20),
    ("eos-token", 'padding_side="right",\n)', 'padding_side="right",\n    eos_token="<eoa>",\n)',
     ("model", "eosToken"), "<eoa>"),
]

# (id, the text replaced, its replacement, a fragment of the refusal)
REFUSED = [
    ("load-from", "load_from = None", "load_from = './work_dirs/x/iter_500.pth'", "load_from"),
    ("custom-hook", "custom_hooks = [", "from mmengine.hooks import EMAHook\ncustom_hooks = [dict(type=EMAHook),",
     "EMAHook is a hook kubetune does not run"),
    ("rslora", 'task_type="CAUSAL_LM",', 'task_type="CAUSAL_LM",\n        use_rslora=True,', "use_rslora=True"),
    ("dora", 'task_type="CAUSAL_LM",', 'task_type="CAUSAL_LM",\n        use_dora=True,', "use_dora=True"),
    ("modules-to-save", 'task_type="CAUSAL_LM",', 'task_type="CAUSAL_LM",\n        modules_to_save=["output"],',
     "modules_to_save"),
    ("wandb", "visualizer = None", "from mmengine.visualization import Visualizer, WandbVisBackend\n"
     "visualizer = dict(type=Visualizer, vis_backends=[dict(type=WandbVisBackend)])", "WandbVisBackend"),
    ("paramwise", "loss_scale=\"dynamic\",", "loss_scale=\"dynamic\",\n    paramwise_cfg=dict(norm_decay_mult=0.0),",
     "paramwise_cfg"),
    ("own-template-map-fn", "template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),",
     "template_map_fn=my_template,", "my_template is Python defined in the config"),
    ("static-loss-scale", "loss_scale=\"dynamic\",", "loss_scale=512.0,", "loss_scale 512.0"),
    ("cosine-not-to-the-end", "end=max_epochs,\n        convert_to_iter_based=True,",
     "end=max_epochs - 1,\n        convert_to_iter_based=True,", "kubetune's decay spans the rest of the run"),
    ("unknown-key", "pack_to_max_length=pack_to_max_length,",
     "pack_to_max_length=pack_to_max_length,\n    something_new=3,", "something_new = 3"),
    ("eval-sampling", "prompt_template=prompt_template,\n    ),",
     "prompt_template=prompt_template,\n        generation_kwargs=dict(temperature=0.7),\n    ),", "temperature"),
    ("validation", "load_from = None", "load_from = None\nval_dataloader = dict(batch_size=1)", "val_dataloader"),
    ("other-tokenizer", 'pretrained_model_name_or_path=pretrained_model_name_or_path,\n    trust_remote_code=True,\n'
     '    padding_side="right",', 'pretrained_model_name_or_path="other/tokenizer",\n    trust_remote_code=True,\n'
     '    padding_side="right",', "another tokenizer than the model's"),
]


@pytest.fixture(scope="module")
def base() -> str:
    configs = subprocess.run([str(ROOT / ".ci" / "xtuner-configs")], check=True, capture_output=True, text=True)
    return (Path(configs.stdout.strip()) / BASE).read_text()


def _edit(base: str, old: str, new: str, tmp_path: Path) -> tuple[Path, int]:
    """The config with every `old` replaced, and the first line that changed."""
    assert base.count(old) >= 1, old
    new_text = base.replace(old, new)
    if "my_template" in new:  # the user's own function, defined just before the dataset that uses it
        new_text = new_text.replace("train_dataset = dict(", "def my_template(example):\n    return example\n\n\n"
                                                            "train_dataset = dict(", 1)
    path = tmp_path / "edited.py"
    path.write_text(new_text)
    changed = next(i for i, (a, b) in enumerate(zip(base.splitlines(), new_text.splitlines()), 1) if a != b)
    return path, changed


def _field(spec: dict, where: tuple[str, ...]):
    for key in where:
        spec = spec[key]
    return spec


def test_the_unedited_base_imports(base, tmp_path):
    path = tmp_path / "base.py"
    path.write_text(base)
    result = import_config(path)
    assert not result.problems, result.problems
    parse_manifest(result.manifest)


@pytest.mark.parametrize("name, old, new, where, value", MAPPED, ids=[m[0] for m in MAPPED])
def test_an_edit_maps_to_its_field(base, tmp_path, name, old, new, where, value):
    path, _ = _edit(base, old, new, tmp_path)
    result = import_config(path)
    assert not result.problems, result.problems
    spec = result.manifest["spec"]
    assert _field(spec, where) == value
    parse_manifest(result.manifest)  # still a valid FineTuneJob


@pytest.mark.parametrize("name, old, new, fragment", REFUSED, ids=[r[0] for r in REFUSED])
def test_an_edit_without_a_field_is_refused_at_its_line(base, tmp_path, name, old, new, fragment):
    path, changed = _edit(base, old, new, tmp_path)
    result = import_config(path)
    hits = [(line, message) for line, message in result.problems if fragment in message]
    assert hits, result.problems
    # The line named is the edit's, or the statement that holds it (a multi-line dict names its first line).
    assert any(0 < line <= changed + 2 for line, _ in hits), (changed, hits)


def test_arithmetic_bombs_are_not_evaluated(base, tmp_path):
    """Issue 42 R7: nothing in a config runs, and nothing it asks the reader to compute may hang or allocate without
    bound: huge powers and products, strings doubled in a loop of statements, overflows and division by zero become
    values the importer does not evaluate, refused at their line when a setting uses them."""
    import time

    bombs = ["max_length = 9**9**9**9", "n = 10", *["n *= n"] * 12, "s = 'x'", *["s += s"] * 40,
             "overflow = 10.0 ** 400"]
    edited = base.replace("max_length = 2048", "\n".join(bombs), 1).replace("lr = 2e-4", "lr = 10**10**8", 1)
    edited = edited.replace("weight_decay = 0\n", "weight_decay = 1 / 0\n", 1)
    assert edited.count("10**10**8") == 1 and edited.count("1 / 0") == 1
    path = tmp_path / "bombs.py"
    path.write_text(edited)
    started = time.perf_counter()
    result = import_config(path)
    assert time.perf_counter() - started < 5
    line = edited.splitlines().index("max_length = 9**9**9**9") + 1
    problems = dict(result.problems)
    assert "too large to be a setting" in problems.get(line, ""), result.problems
    lr_line = edited.splitlines().index("lr = 10**10**8") + 1
    assert problems.get(lr_line, "").startswith("training.optimizer.lr: "), result.problems
    assert "training.optimizer.weightDecay: `1 Div 0`" in " ".join(problems.values())
