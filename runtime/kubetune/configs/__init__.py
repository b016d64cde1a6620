"""Files that ship with kubetune: the DeepSpeed presets (XTuner's JSON, unchanged)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from kubetune.api.enums import DeepSpeedPreset

PRESETS = tuple(p.value for p in DeepSpeedPreset if p is not DeepSpeedPreset.NONE)


def deepspeed_preset(name: str) -> dict[str, Any]:
    """The DeepSpeed config of a preset (`zero2` or XTuner's `deepspeed_zero2`)."""
    preset = name.removeprefix("deepspeed_")
    if preset not in PRESETS:
        raise KeyError(f"unknown DeepSpeed preset {name!r}; one of {', '.join(PRESETS)}")
    return json.loads(resources.files(__package__).joinpath("deepspeed", f"{preset}.json").read_text())
