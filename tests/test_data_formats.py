"""Every dataset format maps rows to XTuner conversations; bad rows name the field."""

import pytest

from kubetune.api import DatasetFormat
from kubetune.data.formats import FORMATS, RowError
from kubetune.data.preference import PAIR_FORMATS
from kubetune.data.templates import SYSTEM_TEMPLATES as S


def test_every_format_is_implemented():
    assert set(FORMATS) | set(PAIR_FORMATS) == {f.value for f in DatasetFormat}
    assert not set(FORMATS) & set(PAIR_FORMATS)
    assert FORMATS["crime_kg_assitant"] is FORMATS["crime_kg_assistant"]  # XTuner's spelling of the same rows


CASES = [
    ("default", {"input": "q", "output": "a"}, [{"input": "q", "output": "a"}]),
    ("alpaca", {"instruction": "Do", "input": "this", "output": "done"}, [{"input": "Do\nthis", "output": "done"}]),
    ("alpaca", {"instruction": "Do", "input": "", "output": "<nooutput>"}, []),
    ("alpaca_zh", {"instruction_zh": "做", "input_zh": "这个", "output_zh": "好"}, [{"input": "做\n这个", "output": "好"}]),
    ("arxiv", {"abstract": "We study x.", "title": "On x"},
     [{"system": S["arxiv_gentile"], "input": "We study x.", "output": "On x"}]),
    ("code_alpaca", {"prompt": "sum", "completion": "def f(): pass"},
     [{"system": S["coder"], "input": "sum", "output": "def f(): pass"}]),
    ("colors", {"description": "Sky: a light clear blue", "color": "#87ceeb"},
     [{"system": S["colorist"], "input": "a light clear blue", "output": "#87ceeb"}]),
    ("crime_kg_assistant", {"input": "问", "output": "答"}, [{"system": S["lawyer"], "input": "问", "output": "答"}]),
    ("law_reference", {"question": "问", "answer": "答"}, [{"system": S["lawyer"], "input": "问", "output": "答"}]),
    ("medical", {"instruction": "i", "input": "x", "output": "o"}, [{"system": S["medical"], "input": "i\nx", "output": "o"}]),
    ("sql", {"context": "CREATE TABLE t (a INT)", "question": "all a", "answer": "SELECT a FROM t"},
     [{"system": S["sql"], "input": "CREATE TABLE t (a INT)\nall a", "output": "SELECT a FROM t"}]),
    ("tiny_codes", {"prompt": "p", "response": "r"}, [{"system": S["coder"], "input": "p", "output": "r"}]),
    ("openorca", {"system_prompt": "sys", "question": "q", "response": "r"}, [{"system": "sys", "input": "q", "output": "r"}]),
    ("stack_exchange", {"question": "q", "response": "r"}, [{"input": "q", "output": "r"}]),
    ("oasst1", {"text": "### Human: hi### Assistant: hello### Human: bye"}, [{"input": "hi", "output": "hello"}]),
    ("wizardlm", {"conversations": [{"from": "gpt", "value": "skip"}, {"from": "human", "value": "a"},
                                    {"from": "human", "value": "b"}, {"from": "gpt", "value": "c"}]},
     [{"input": "ab", "output": "c"}]),
    ("llava", {"image": "a.jpg", "conversations": [{"from": "human", "value": "What is it?\n<image>"},
                                                  {"from": "gpt", "value": "A cat."},
                                                  {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Grey."}]},
     [{"input": "<image>\nWhat is it?", "output": "A cat."}, {"input": "Colour?", "output": "Grey."}]),
    ("llava", {"conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello"}]},
     [{"input": "Hi", "output": "Hello"}]),
    ("pretrain", {"text": "  raw text \n"}, [{"input": "", "output": "raw text", "need_eos_token": False}]),
    ("openai", {"messages": [{"role": "assistant", "content": "dropped"}, {"role": "system", "content": "s"},
                             {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1", "loss": False},
                             {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]},
     [{"system": "s", "input": "u1", "output": "a1", "output_with_loss": False},
      {"system": "", "input": "u2", "output": "a2", "output_with_loss": True}]),
    ("xtuner", {"conversation": [{"system": "s", "input": "i", "output": "o", "output_with_loss": False, "sep": "|"},
                                 {"input": None, "output": "p", "need_eos_token": False}]},
     [{"system": "s", "input": "i", "output": "o", "output_with_loss": False, "sep": "|"},
      {"input": "", "output": "p", "need_eos_token": False}]),
]


@pytest.mark.parametrize("fmt,row,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_format(fmt, row, expected):
    assert FORMATS[fmt](row) == expected


def test_msagent_react():
    row = {"conversations": [
        {"from": "system", "value": 'tools:\n{"name": "weather", "description": "get weather"}'},
        {"from": "user", "value": "北京天气?"},
        {"from": "assistant", "value": 'Let me check.<|startofthink|>{"api_name": "weather", "parameters": '
                                       '{"city": "北京"}}<|endofthink|><|startofexec|>晴<|endofexec|>'},
        {"from": "user", "value": "谢谢"}, {"from": "assistant", "value": "不客气"}]}
    conv = FORMATS["msagent_react"](row)
    assert len(conv) == 2
    assert "weather" in conv[0]["system"] and conv[0]["input"] == "北京天气?"
    assert conv[0]["output"] == 'Thought:Let me check.\nAction:weather\nAction Input:{"city": "北京"}\nResponse:晴'
    assert conv[1]["output"] == "Thought:我不需要使用工具\nFinal Answer:不客气"


@pytest.mark.parametrize("fmt,row,field", [
    ("alpaca", {"instruction": "x", "input": ""}, "output"),
    ("alpaca", {"instruction": 3, "input": "", "output": "o"}, "instruction"),
    ("xtuner", {"conversation": []}, "conversation"),
    ("xtuner", {"conversation": [{"input": "i"}]}, "output"),
    ("xtuner", {"conversation": [{"input": "i", "output": "o", "output_with_loss": "yes"}]},
     "conversation[0].output_with_loss"),
    ("xtuner", {"text": "x"}, "conversation"),
    ("openai", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("openai", {"messages": [{"role": "user", "content": "x"}]}, "messages"),
    ("wizardlm", {"conversations": [{"from": "alien", "value": "x"}]}, "conversations[0].from"),
    ("sql", {"context": "c", "answer": "a"}, "question"),
    ("llava", {"image": "a.jpg"}, "conversations"),
    ("llava", {"image": 3, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     "image"),
    ("llava", {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "q2"}]},
     "conversations[1]"),
])
def test_bad_rows_name_the_field(fmt, row, field):
    with pytest.raises(RowError) as err:
        FORMATS[fmt](row)
    assert err.value.field == field
