"""Run by XTuner 0.2.0's own venv (.ci/xtuner-venv), not by pytest: every config file under the folder given, resolved
by XTuner's loader (mmengine's Config.fromfile, which runs the file), printed as one JSON line each with plain values:
classes and functions by name, dtypes by name, prompt templates by their PROMPT_TEMPLATE key, and the learning-rate
factor of every iteration of the run, as mmengine's schedulers compute it for a data loader of EPOCH batches
(tests/test_xtuner_differential.py compares kubetune's import with it)."""

import json
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402

if not hasattr(torch.cpu, "is_bf16_supported"):  # XTuner 0.2.0 calls it where no GPU is present
    torch.cpu.is_bf16_supported = lambda *a, **k: False

from mmengine.config import Config, ConfigDict  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402
from xtuner.utils import PROMPT_TEMPLATE  # noqa: E402

EPOCH = 100  # batches per epoch of the simulated loader (a warm-up of 0.03 x 3 epochs is 9 iterations)
MOST = 4000  # iterations simulated at most (longer runs: the first MOST)
NAMES = ("model", "train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler", "default_hooks",
         "custom_hooks", "randomness", "sequence_parallel_size", "load_from", "visualizer")


def plain(value):
    if isinstance(value, (ConfigDict, dict)):
        same = [key for key, template in PROMPT_TEMPLATE.items() if value == template]
        if same:  # several keys may name one template (mistral, mixtral and deepseek_moe)
            return {"$template": same}
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if name is not None:
        return {"$name": name.rsplit(".", 1)[-1]}
    return {"$repr": repr(value)[:100]}


def factors(cfg):
    """The lr factor of each iteration, or None where the schedule cannot be stepped by iterations here."""
    train = cfg.get("train_cfg") or {}
    total = train.get("max_iters") or int((train.get("max_epochs") or 0) * EPOCH)
    lr = cfg.optim_wrapper.optimizer.get("lr")
    phases = cfg.get("param_scheduler")
    if not total or not lr:
        return None
    param = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(optimizer=torch.optim.SGD([param], lr=lr))
    built = []
    for phase in phases if isinstance(phases, (list, tuple)) else [phases] if phases else []:
        phase = dict(phase)
        if phase.get("by_epoch", True) and not phase.get("convert_to_iter_based", False):
            return None  # stepped once per loop epoch: XTuner's loop has one
        built.append(PARAM_SCHEDULERS.build(phase, default_args=dict(optimizer=wrapper, epoch_length=EPOCH)))
    out = []
    for _ in range(min(total, MOST)):
        out.append(wrapper.optimizer.param_groups[0]["lr"] / lr)
        for scheduler in built:
            scheduler.step()
    return out


def main():
    root = Path(sys.argv[1])
    for path in sorted(p for p in root.rglob("*.py") if not p.name.startswith(("_", "."))):
        entry = {"name": path.stem, "path": str(path.relative_to(root.parent.parent))}
        try:
            cfg = Config.fromfile(str(path))
            entry["config"] = {k: plain(cfg.get(k)) for k in NAMES if k in cfg}
        except Exception as exc:  # noqa: BLE001 (a file XTuner itself cannot load is data here)
            entry["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(json.dumps(entry))
            continue
        try:
            entry["lr_factors"] = factors(cfg) if "optim_wrapper" in cfg else None
        except Exception as exc:  # noqa: BLE001
            entry["lr_error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
