"""The projector: `Linear(vision → llm) [GELU, Linear(llm → llm)] × (depth − 1)`, saved as `projector/` with a
`config.json` and safetensors weights keyed like XTuner's ProjectorModel (`model.0.weight`, ...)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG = "config.json"
WEIGHTS = "model.safetensors"


def build(visual_hidden: int, llm_hidden: int, depth: int) -> Any:
    import torch

    layers: list[Any] = [torch.nn.Linear(visual_hidden, llm_hidden)]
    for _ in range(depth - 1):
        layers += [torch.nn.GELU(), torch.nn.Linear(llm_hidden, llm_hidden)]
    return torch.nn.Sequential(*layers)


def save(projector: Any, path: Path, state: dict[str, Any] | None = None, dtype: Any = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    first, last = projector[0], projector[-1]
    depth = (len(projector) + 1) // 2
    (path / CONFIG).write_text(json.dumps({
        "architectures": ["ProjectorModel"], "model_type": "projector", "visual_hidden_size": first.in_features,
        "llm_hidden_size": last.out_features, "depth": depth, "hidden_act": "gelu", "bias": True}, indent=2) + "\n")
    state = state if state is not None else projector.state_dict()
    save_file({f"model.{k}": (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous()
               for k, v in state.items()}, str(path / WEIGHTS))


def load(path: Path) -> Any:
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / CONFIG).read_text())
    projector = build(cfg["visual_hidden_size"], cfg["llm_hidden_size"], cfg["depth"])
    state = {k.removeprefix("model."): v.float() for k, v in load_file(str(path / WEIGHTS)).items()}
    projector.load_state_dict(state)
    return projector


def find(uri_path: Path) -> Path | None:
    """The projector directory inside a pretrain checkpoint (`iter_N/model/projector`) or a converted LLaVA
    directory (`projector/`), or the directory itself."""
    for candidate in (uri_path / "model" / "projector", uri_path / "projector", uri_path):
        if (candidate / CONFIG).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    return None
