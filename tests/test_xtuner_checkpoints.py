"""Real XTuner checkpoints: XTuner 0.2.0 in its own venv (.ci/xtuner-venv) trains the tiny model for 3 steps (LoRA
and full, mmengine's `iter_3.pth` file; LoRA under DeepSpeed ZeRO-2, its `iter_3.pth/` directory), XTuner's own
`pth_to_hf` converts each, and `kubetune convert pth_to_hf CONFIG.py iter_3.pth OUT` must write the same tensors.
kubetune reads the files with torch.load(weights_only=True) and an allow-list of inert placeholders: a checkpoint
holding anything else is refused without running it."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune.convert.xtuner_ckpt import INERT

ROOT = Path(__file__).resolve().parents[1]
# xtuner 0.2.0 calls torch.cpu.is_bf16_supported, which torch lacks, when no GPU is present; then XTuner's own
# entry module runs unchanged.
CPU_SHIM = """import runpy, sys, torch
if not hasattr(torch.cpu, "is_bf16_supported"):
    torch.cpu.is_bf16_supported = lambda *a, **k: False
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__")
"""
ZERO2_CPU = {"gradient_accumulation_steps": "auto", "train_micro_batch_size_per_gpu": "auto",
             "gradient_clipping": "auto", "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
             "zero_optimization": {"stage": 2}, "fp16": {"enabled": False}, "bf16": {"enabled": False}}
LORA = 'lora=dict(type=LoraConfig, r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))'


def _bench_xtuner():
    spec = importlib.util.spec_from_file_location("xtuner_train", ROOT / "bench" / "xtuner_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class XTuner:
    def __init__(self, python: str, home: Path):
        self.python, self.home = python, home
        (home / "xt_cpu.py").write_text(CPU_SHIM)

    def run(self, *args: str, env: dict | None = None) -> None:
        # The xtuner CLI spawns `python` from PATH: the venv's bin goes first.
        full = dict(os.environ, PATH=f"{Path(self.python).parent}:{os.environ['PATH']}", **(env or {}))
        out = subprocess.run([self.python, str(self.home / "xt_cpu.py"), *args], capture_output=True, text=True,
                             cwd=self.home, env=full, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


@pytest.fixture(scope="module")
def xtuner_runs(tiny_dir, tmp_path_factory):
    """Three real XTuner runs and XTuner's conversions of their checkpoints: {name: (config, checkpoint, xtuner's)}."""
    python = subprocess.run([str(ROOT / ".ci" / "xtuner-venv")], check=True, capture_output=True,
                            text=True).stdout.strip()
    home = tmp_path_factory.mktemp("xtuner")
    bench = _bench_xtuner()
    (home / "model.py").write_text(bench.XT_MODEL)
    subprocess.run([python, str(home / "model.py"), str(tiny_dir), str(home / "tiny-xt")], check=True,
                   capture_output=True, timeout=600)  # files transformers 4.48 loads
    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w} {w}."}
            for w in ["sea", "sky", "moon", "river", "snow", "rain", "sun", "star"] * 4]
    (home / "data.json").write_text(json.dumps(rows))
    lora = bench.XT_CONFIG.format(model=str(home / "tiny-xt"), data=str(home / "data.json"), max_length=64, accum=1)
    lora = lora.replace("train_cfg = dict(type=TrainLoop, max_epochs=1)",
                        "train_cfg = dict(type=TrainLoop, max_iters=3)").replace("interval=100000", "interval=3")
    assert LORA in lora
    (home / "lora.py").write_text(lora)
    (home / "full.py").write_text(lora.replace(LORA, ")"))
    (home / "zero2.json").write_text(json.dumps(ZERO2_CPU))
    xt = XTuner(python, home)
    single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"}
    runs = {"lora": ("lora.py", []), "full": ("full.py", []), "lora-zero2": ("lora.py", ["--deepspeed", "zero2.json"])}
    out = {}
    for name, (config, extra) in runs.items():
        work = home / f"work-{name}"
        xt.run("xtuner.tools.train", config, "--work-dir", str(work), *extra, env=single if extra else None)
        ckpt = work / "iter_3.pth"
        xt.run("xtuner.tools.model_converters.pth_to_hf", config, str(ckpt), str(home / f"xtuner-{name}"))
        out[name] = (home / config, ckpt, home / f"xtuner-{name}")
    return out


def _kubetune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", ["lora", "full", "lora-zero2"])
def test_an_xtuner_checkpoint_converts_to_what_xtuners_converter_writes(xtuner_runs, tmp_path, name):
    config, ckpt, theirs = xtuner_runs[name]
    assert ckpt.is_dir() == (name == "lora-zero2")  # DeepSpeed writes iter_3.pth/ as a directory
    out = _kubetune("convert", "pth_to_hf", str(config), str(ckpt), str(tmp_path / "ours"))
    assert out.returncode == 0, out.stderr[-3000:]
    weights = "adapter_model" if name.startswith("lora") else "pytorch_model"
    reference = torch.load(theirs / f"{weights}.bin", weights_only=True)
    ours = load_file(str(tmp_path / "ours" / f"{'adapter_model' if name.startswith('lora') else 'model'}"
                                             ".safetensors"))
    assert sorted(ours) == sorted(reference)
    diff = max((ours[k].float() - reference[k].float()).abs().max().item() for k in reference)
    print(f"{name}: {len(reference)} tensors, max abs diff {diff} (both fp16)")
    assert diff == 0.0 and all(ours[k].dtype == reference[k].dtype for k in reference)
    if name.startswith("lora"):
        mine, xtuners = (json.loads((d / "adapter_config.json").read_text()) for d in (tmp_path / "ours", theirs))
        for key in ("r", "lora_alpha", "lora_dropout", "bias", "task_type"):
            assert mine[key] == xtuners[key], key
        assert sorted(mine["target_modules"]) == sorted(xtuners["target_modules"])


def test_the_allow_list_is_exactly_what_xtuner_checkpoints_hold(xtuner_runs):
    """Each checkpoint's non-tensor globals are on the allow-list (a new XTuner or mmengine that adds one shows up
    here), and nothing on it runs: every name maps to an inert placeholder."""
    seen = set()
    for _, ckpt, _ in xtuner_runs.values():
        file = ckpt / "mp_rank_00_model_states.pt" if ckpt.is_dir() else ckpt
        seen |= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
    assert seen and seen <= set(INERT), seen - set(INERT)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(xtuner_runs, tmp_path):
    config, _, _ = xtuner_runs["lora"]
    bad = tmp_path / "iter_9.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": _Boom()}, bad)
    out = subprocess.run([sys.executable, "-m", "kubetune", "convert", "pth_to_hf", str(config), str(bad),
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 2 and "not on the allow-list" in out.stderr and "Traceback" not in out.stderr, \
        out.stderr[-2000:]
    assert "posix.system" in out.stderr and not (tmp_path / "pwned").exists()
    newer = tmp_path / "iter_11.pth"  # pickle protocol 5: torch's scanner does not read it; still nothing runs
    torch.save({"meta": _Boom()}, newer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    out = _kubetune("convert", "pth_to_hf", str(config), str(newer), str(tmp_path / "out"))
    assert out.returncode == 2 and "reads safely" in out.stderr and not (tmp_path / "pwned").exists()
    cut = tmp_path / "iter_10.pth"
    cut.write_bytes(b"PK\x03\x04 not a whole file")
    out = _kubetune("convert", "pth_to_hf", str(config), str(cut), str(tmp_path / "out"))
    assert out.returncode == 2 and "iter_10.pth" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
