"""The reward model: the language model's decoder (full, LoRA or QLoRA, as built for SFT) and a scalar head on the
hidden state of the reward token appended to prompt + response. Checkpoints keep the language model's usual layout
(`model/`: adapter or full weights) plus `reward_head.safetensors`; `convert pth_to_hf` turns them into a plain
transformers `...ForSequenceClassification` model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"


def build_reward_model(llm: Any, reward_token_id: int, seed: int) -> Any:
    import torch

    class RewardModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.llm = llm
            config = getattr(llm.config, "text_config", llm.config)
            torch.manual_seed(seed)  # the head's initial values are part of a reproducible run
            self.v_head = torch.nn.Linear(config.hidden_size, 1, bias=False,
                                          device=next(llm.parameters()).device)
            self.reward_token_id = reward_token_id

        @property
        def config(self) -> Any:
            return self.llm.config

        def forward(self, input_ids: Any, position_ids: Any, **_: Any) -> Any:
            decoder = _decoder(self.llm)
            hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
            return self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1)

        def save_pretrained(self, path: Path, safe_serialization: bool = True, state_dict: dict | None = None) -> None:
            from safetensors.torch import save_file

            path = Path(path)
            head = {"weight": self.v_head.weight.detach().float().cpu().contiguous()}
            llm_state = None
            if state_dict is not None:  # DeepSpeed's consolidated weights, keyed from this module
                head = {"weight": state_dict["v_head.weight"].float().cpu().contiguous()}
                llm_state = {k[len("llm."):]: v for k, v in state_dict.items() if k.startswith("llm.")}
            self.llm.save_pretrained(path, safe_serialization=safe_serialization,
                                     **({"state_dict": llm_state} if llm_state is not None else {}))
            save_file(head, str(path / HEAD_FILE))
            (path / CONFIG_FILE).write_text(json.dumps({"reward_token_id": self.reward_token_id}) + "\n")

    return RewardModel()


def _decoder(llm: Any) -> Any:
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return base.get_decoder()


def load_head(path: Path, model: Any) -> None:
    import torch
    from safetensors.torch import load_file

    with torch.no_grad():
        model.v_head.weight.copy_(load_file(str(Path(path) / HEAD_FILE))["weight"])


def is_reward_checkpoint(path: Path) -> bool:
    return (Path(path) / HEAD_FILE).is_file()
