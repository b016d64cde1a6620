"""Every dataset format maps rows to XTuner conversations; bad rows name the field."""

import copy
import json
from pathlib import Path

import pytest

from kubetune.api import DatasetFormat
from kubetune.data.formats import FORMATS, RowError
from kubetune.data.preference import PAIR_FORMATS
from kubetune.data.templates import SYSTEM_TEMPLATES as S

from .conftest import REPO


def test_every_format_is_implemented():
    assert set(FORMATS) | set(PAIR_FORMATS) == {f.value for f in DatasetFormat}
    assert not set(FORMATS) & set(PAIR_FORMATS)
    assert FORMATS["crime_kg_assitant"] is FORMATS["crime_kg_assitan"] is FORMATS["crime_kg_assistant"]  # XTuner's spellings


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


def xtuner_map_fn(module: str, name: str):
    """One of XTuner 0.2.0's own map fns, loaded from its file. They import json, re and XTuner's constants; the
    constants module stands in for `xtuner.utils` (whose package would import torch and mmengine)."""
    import importlib.util
    import subprocess
    import sys
    import types

    configs = subprocess.run([str(REPO / ".ci" / "xtuner-configs")], check=True, capture_output=True, text=True)
    root = Path(configs.stdout.strip()).parent
    utils = types.ModuleType("xtuner.utils")
    exec((root / "utils" / "constants.py").read_text(), utils.__dict__)
    saved = {k: sys.modules.get(k) for k in ("xtuner", "xtuner.utils")}
    sys.modules.update({"xtuner": types.ModuleType("xtuner"), "xtuner.utils": utils})
    try:
        path = root / "dataset" / "map_fns" / "dataset_map_fns" / f"{module}.py"
        spec = importlib.util.spec_from_file_location(f"xtuner_{module}", path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return getattr(loaded, name)


def test_msagent_react_equals_xtuners_map_fn():
    """MSAgent-Bench rows (tests/data/msagent_react.jsonl: tool calls in code fences, a tool's result and the final
    answer, several turns, the list stored as a Python literal, and rows XTuner drops) give exactly the conversation
    XTuner's msagent_react_map_fn gives."""
    theirs = xtuner_map_fn("msagent_map_fn", "msagent_react_map_fn")
    rows = [json.loads(line) for line in (REPO / "tests" / "data" / "msagent_react.jsonl").read_text().splitlines()]
    kept = 0
    for row in rows:
        expected = theirs(copy.deepcopy(row))["conversation"]
        assert FORMATS["msagent_react"](copy.deepcopy(row)) == expected, row["id"]
        kept += bool(expected)
    assert kept == 4  # too-short, bad-call-json and two-execs are dropped by both
    tool_use = FORMATS["msagent_react"](rows[0])
    assert tool_use[0]["output"].startswith("Thought:我需要调用地址解析工具。\nAction:modelscope_text-address\n")
    assert tool_use[1]["output"] == "Final Answer:地址的元素是：浙江省、杭州市、余杭区、文一西路、969号。\n"


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


def test_llava_image_only_equals_xtuners_map_fn():
    theirs = xtuner_map_fn("llava_map_fn", "llava_image_only_map_fn")
    rows = [{"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nDescribe it."},
                                                 {"from": "gpt", "value": "A cat on a mat."}]},
            {"image": "b.jpg", "conversations": [{"from": "gpt", "value": "skipped"},
                                                 {"from": "human", "value": "What is this? <image>"},
                                                 {"from": "gpt", "value": "A dog."},
                                                 {"from": "human", "value": "<image> again"},
                                                 {"from": "gpt", "value": "Still a dog."}]}]
    for row in rows:
        assert FORMATS["llava_image_only"](copy.deepcopy(row)) == theirs(copy.deepcopy(row))["conversation"]
    with pytest.raises(RowError, match=r"conversations\[0\]\.value"):
        FORMATS["llava_image_only"]({"conversations": [{"from": "human", "value": "no image"},
                                                        {"from": "gpt", "value": "x"}]})
