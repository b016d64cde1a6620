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

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        # The xtuner CLI spawns `python` from PATH: the venv's bin goes first. One thread each: the runs go side by
        # side, and most of each is Python importing XTuner's stack.
        full = dict(os.environ, PATH=f"{Path(self.python).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1",
                    **(env or {}))
        return subprocess.Popen([self.python, str(self.home / "xt_cpu.py"), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=self.home, env=full)

    @staticmethod
    def wait(processes: list[subprocess.Popen]) -> None:
        for process in processes:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, out[-2000:] + err[-4000:]


# XTuner's iterations: the full run steps every 4 micro-batches and saves every 8 of them (aligned); the LoRA run
# saves every 6 (inside a window) and ends on a window of 2; both warm up for 3 iterations, then a cosine.
UNITS = {"full": (4, 8, 16), "lora": (4, 6, 18), "lora-zero2": (1, 3, 3)}
SCHEDULE = ("param_scheduler = [dict(type=LinearLR, start_factor=1e-5, by_epoch=False, begin=0, end={warm}), "
            "dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin={warm}, end={iters})]")


def _config(bench, home: Path, name: str, data: Path) -> str:
    accum, every, iters = UNITS[name]
    text = bench.XT_CONFIG.format(model=str(home / "tiny-xt"), data=str(data), max_length=64, accum=accum)
    replace = {"train_cfg = dict(type=TrainLoop, max_epochs=1)": f"train_cfg = dict(type=TrainLoop, max_iters={iters})",
               "interval=100000, max_keep_ckpts=1": f"interval={every}, max_keep_ckpts=-1",
               "from mmengine.optim import OptimWrapper, CosineAnnealingLR":
                   "from mmengine.optim import OptimWrapper, CosineAnnealingLR, LinearLR",
               "log_processor = dict(by_epoch=False)": "log_processor = dict(by_epoch=False, window_size=1)"}
    text = text.replace(*[line for line in text.splitlines() if line.startswith("param_scheduler")],
                        SCHEDULE.format(iters=iters, warm=min(3, iters - 1)))
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    assert LORA in text
    if name == "full":  # one sample a micro-batch, every answer as long: XTuner's mean of means = kubetune's tokens
        text = text.replace(LORA, ")").replace("pack_to_max_length=True", "pack_to_max_length=False")
    return text


@pytest.fixture(scope="module")
def xtuner_runs(tiny_dir, tmp_path_factory):
    """Three real XTuner runs and XTuner's conversions of their last checkpoints: {name: (config, checkpoint,
    xtuner's conversion, work dir)}."""
    python = subprocess.run([str(ROOT / ".ci" / "xtuner-venv")], check=True, capture_output=True,
                            text=True).stdout.strip()
    home = tmp_path_factory.mktemp("xtuner")
    bench = _bench_xtuner()
    (home / "model.py").write_text(bench.XT_MODEL)
    subprocess.run([python, str(home / "model.py"), str(tiny_dir), str(home / "tiny-xt")], check=True,
                   capture_output=True, timeout=600)  # files transformers 4.48 loads
    words = ["sea", "sky", "moon", "river", "snow", "rain", "sun", "star"] * 4
    rows = [{"instruction": f"Say {w}.", "input": "", "output": f"{w} {w} {w}."} for w in words]
    (home / "data.json").write_text(json.dumps(rows))
    same = [{"instruction": f"Say {w} {i}.", "input": "", "output": "yes yes yes."} for i, w in enumerate(words)]
    (home / "same.json").write_text(json.dumps(same))
    for name in UNITS:
        (home / f"{name}.py").write_text(_config(bench, home, name, home / ("same.json" if name == "full"
                                                                              else "data.json")))
    (home / "zero2.json").write_text(json.dumps(ZERO2_CPU))
    xt = XTuner(python, home)
    single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"}
    out = {name: (home / f"{name}.py", home / f"work-{name}" / f"iter_{UNITS[name][2]}.pth", home / f"xtuner-{name}",
                  home / f"work-{name}") for name in UNITS}
    xt.wait([xt.start("xtuner.tools.train", f"{name}.py", "--work-dir", str(work),
                      *(["--deepspeed", "zero2.json"] if name == "lora-zero2" else []),
                      env=single if name == "lora-zero2" else None) for name, (_, _, _, work) in out.items()])
    xt.wait([xt.start("xtuner.tools.model_converters.pth_to_hf", f"{name}.py", str(ckpt), str(converted))
             for name, (_, ckpt, converted, _) in out.items()])
    return out


def _kubetune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("name", ["lora", "full", "lora-zero2"])
def test_an_xtuner_checkpoint_converts_to_what_xtuners_converter_writes(xtuner_runs, tmp_path, name):
    config, ckpt, theirs, _ = xtuner_runs[name]
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
    for _, ckpt, _, _ in xtuner_runs.values():
        file = ckpt / "mp_rank_00_model_states.pt" if ckpt.is_dir() else ckpt
        seen |= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
    assert seen and seen <= set(INERT), seen - set(INERT)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(xtuner_runs, tmp_path):
    config, _, _, _ = xtuner_runs["lora"]
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


def _scalars(work: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(work.glob("*/vis_data/scalars.json"))
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", ["full", "lora"])
def test_an_imported_config_trains_in_xtuners_iterations(xtuner_runs, tmp_path, name):
    """XTuner's units side by side: the same config imported and trained by kubetune writes the checkpoints XTuner
    wrote (same names), consumes the same micro-batches, and (full: no random initialisation, equal answer lengths)
    every optimizer step has XTuner's learning rate and the mean loss of XTuner's iterations in its window."""
    config, _, _, xt_work = xtuner_runs[name]
    accum, every, iters = UNITS[name]
    manifest = tmp_path / "job.yaml"
    out = _kubetune("import-xtuner", str(config), "-o", str(manifest))
    assert out.returncode == 0, out.stderr[-2000:]
    out = _kubetune("train", str(manifest), "--work-dir", str(tmp_path / "work"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    theirs = sorted(p.name for p in xt_work.glob("iter_*.pth"))
    mine = sorted(f"{p.name}.pth" for p in (tmp_path / "work").glob("iter_*") if p.is_dir())
    assert mine == theirs and len(theirs) >= 2, (mine, theirs)
    last = json.loads((tmp_path / "work" / f"iter_{iters}" / "trainer_state.json").read_text())
    assert last["consumed"] == iters and last["step"] == -(-iters // accum), last
    print(f"{name}: XTuner and kubetune wrote {mine}; {iters} micro-batches in {last['step']} optimizer steps")
    if name != "full":
        return
    xt = {s["iter"]: s for s in _scalars(xt_work) if "loss" in s}
    assert sorted(xt) == list(range(1, iters + 1))
    steps = [s for s in _scalars(tmp_path / "work") if "loss" in s]
    assert [s["iter"] for s in steps] == list(range(accum, iters + 1, accum))
    for s in steps:
        window = range(s["iter"] - accum + 1, s["iter"] + 1)
        assert s["lr"] == pytest.approx(xt[s["iter"]]["lr"], rel=1e-6, abs=1e-12), s["iter"]
        assert s["loss"] == pytest.approx(sum(xt[i]["loss"] for i in window) / accum, rel=2e-3), s["iter"]
    print(f"{name}: checkpoints {mine}; lr and loss of {len(steps)} steps equal XTuner's")
