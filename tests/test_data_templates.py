"""Golden tests: the rendered text of a two-turn conversation with a system prompt, for every XTuner template."""

import json
import os

import pytest

from kubetune.api import PromptTemplate, SystemTemplate
from kubetune.data.encode import render_text
from kubetune.data.templates import PROMPT_TEMPLATES, SYSTEM_TEMPLATES, system_text

from .conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "templates.json"
CONVERSATION = [
    {"system": "Be brief.", "input": "Hi there", "output": "Hello!"},
    {"input": "2+2?", "output": "4"},
]


def rendered_all() -> dict[str, str]:
    return {name: render_text([dict(t) for t in CONVERSATION], tpl) for name, tpl in PROMPT_TEMPLATES.items()}


def test_all_27_templates_and_8_system_templates():
    assert len(PROMPT_TEMPLATES) == 27
    assert set(PROMPT_TEMPLATES) | {"auto"} == {t.value for t in PromptTemplate}
    assert set(SYSTEM_TEMPLATES) == {t.value for t in SystemTemplate} and len(SYSTEM_TEMPLATES) == 8


def test_golden_rendering_of_every_template():
    actual = rendered_all()
    if os.environ.get("KUBETUNE_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n")
    assert actual == json.loads(GOLDEN.read_text())


# Hand-written expectations for representative templates, independent of the golden file.
HAND = {
    "internlm2_chat": "<BOS><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
                      "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                      "<|im_start|>assistant\n4<|im_end|>\n",
    "default": "<BOS><|System|>:Be brief.\n<|User|>:Hi there\n<|Bot|>:Hello!<EOS>\n<BOS><|User|>:2+2?\n<|Bot|>:4<EOS>\n",
    "llama3_chat": "<BOS><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
                   "<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!"
                   "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|><|start_header_id|>assistant"
                   "<|end_header_id|>\n\n4<|eot_id|>",
    "chatglm2": "<BOS>Be brief.\n[Round 1]\n\n问：Hi there\n\n答：Hello!<EOS>\n\n<BOS>[Round 2]\n\n问：2+2?\n\n答：4<EOS>\n\n",
    "gemma": "<BOS><start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi there<end_of_turn>\n"
             "<start_of_turn>model\nHello!<end_of_turn><EOS>\n<BOS><start_of_turn>user\n2+2?<end_of_turn>\n"
             "<start_of_turn>model\n4<end_of_turn><EOS>\n",
    "deepseek_v2": "<BOS>Be brief.\n\nUser: Hi there\n\nAssistant: Hello!<｜end▁of▁sentence｜>User: 2+2?\n\n"
                   "Assistant: 4<｜end▁of▁sentence｜>",
    "code_llama_chat": "<BOS>Be brief.\n[INST] Hi there [/INST]Hello!<EOS><BOS>[INST] 2+2? [/INST]4<EOS>",
    "minicpm": "<BOS><用户> Hi there <AI>Hello!<EOS>\n<BOS><用户> 2+2? <AI>4<EOS>\n",
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_written_renderings(name):
    assert render_text([dict(t) for t in CONVERSATION], PROMPT_TEMPLATES[name]) == HAND[name]


def test_template_fields_match_xtuner():
    t = PROMPT_TEMPLATES
    assert t["qwen_chat"].stop_words == ("<|im_end|>", "<|endoftext|>")
    assert t["gemma"].suffix_as_eos is False and t["gemma"].suffix == "<end_of_turn>"
    assert t["deepseekcoder"] == t["deepseek_coder"] and t["mistral"] == t["mixtral"] == t["deepseek_moe"]
    assert t["moss_sft"].stop_words == ("<eoc>", "<eom>")
    assert "DeepSeekCompany" in t["deepseek_coder"].system  # XTuner's spelling, kept byte for byte
    assert t["llama2_chat"].system.startswith("[INST] <<SYS>>\n You are a helpful, respectful and honest assistant.")


def test_system_templates():
    assert system_text(None, "moss_sft", bot_name="Ada").startswith("You are an AI assistant whose name is Ada.\n")
    assert system_text("mine", None) == "mine"
    assert SYSTEM_TEMPLATES["lawyer"].endswith("\n") and SYSTEM_TEMPLATES["sql"].startswith("If you are an expert in SQL")
