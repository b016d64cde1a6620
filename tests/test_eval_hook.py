"""The evaluation hook as XTuner's EvaluateChatHook: its own system prompt (never the training data's), its sampling
(temperature 0.1, top-p 0.75, top-k 40) unless greedy, outputs that repeat for a step, and training's random stream
left as it was."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kubetune.api import parse_manifest
from kubetune.train.hooks import XTUNER_SAMPLING, EvaluateChat


class Log:
    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)


def _hook(tiny_dir, tmp_path, **evaluation):
    from transformers import AutoTokenizer

    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "e"},
           "spec": {"model": {"uri": str(tiny_dir)}, "dataset": {"uri": "/d.jsonl", "promptTemplate": "default"},
                    "evaluation": {"inputs": ["Tell me about the sea."], "maxNewTokens": 12, **evaluation}}}
    spec = parse_manifest(doc).spec
    return EvaluateChat(spec, AutoTokenizer.from_pretrained(str(tiny_dir)), tmp_path, Log())


@pytest.fixture(scope="module")
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)


def test_the_evaluation_system_prompt_is_the_evaluations_own(tiny_dir, tmp_path):
    hook = _hook(tiny_dir, tmp_path, systemTemplate="alpaca")
    rendered = hook.tokenizer.decode(hook.prompts[0])
    assert "Below is an instruction that describes a task" in rendered and "Tell me about the sea." in rendered
    assert "Below is an instruction" not in hook.tokenizer.decode(_hook(tiny_dir, tmp_path).prompts[0])


def test_xtuners_sampling_repeats_for_a_step_and_leaves_trainings_rng_alone(tiny_dir, tmp_path, model):
    hook = _hook(tiny_dir, tmp_path)
    assert hook.sampling == XTUNER_SAMPLING == {"do_sample": True, "temperature": 0.1, "top_p": 0.75, "top_k": 40}
    ctx = SimpleNamespace(model=model, device=torch.device("cpu"), rank=0)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    hook.run(ctx, 7)
    first = (tmp_path / "eval_outputs_iter_7.txt").read_text()
    assert torch.equal(torch.rand(3), expected_next)  # the hook drew from a forked generator
    hook.run(ctx, 7)
    assert (tmp_path / "eval_outputs_iter_7.txt").read_text() == first


def test_greedy_on_request_equals_generate(tiny_dir, tmp_path, model):
    hook = _hook(tiny_dir, tmp_path, greedy=True)
    assert hook.sampling == {"do_sample": False}
    hook.run(SimpleNamespace(model=model, device=torch.device("cpu"), rank=0), 3)
    ids = torch.tensor([hook.prompts[0]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         pad_token_id=hook.tokenizer.pad_token_id or hook.tokenizer.eos_token_id)
    answer = hook.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)
    assert (tmp_path / "eval_outputs_iter_3.txt").read_text() == f"Sample output:\nTell me about the sea.\n{answer}\n"
