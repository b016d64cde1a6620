"""Row layouts → XTuner's `conversation` (a list of turns), one function per format, as XTuner's map fns do.

A turn is `{"input", "output"}` plus the optional `system`, `output_with_loss`, `need_eos_token`, `sep`. A bad row
raises RowError naming the field, which the pipeline turns into `file: row N: field: problem`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from .templates import SYSTEM_TEMPLATES

Turn = dict[str, Any]
Conversation = list[Turn]


class RowError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def _text(row: dict[str, Any], key: str, optional: bool = False) -> str:
    if key not in row or row[key] is None:
        if optional:
            return ""
        raise RowError(key, "missing")
    value = row[key]
    if not isinstance(value, str):
        raise RowError(key, f"expected text, got {type(value).__name__}")
    return value


def xtuner(row: dict[str, Any]) -> Conversation:
    turns = row.get("conversation")
    if not isinstance(turns, list):
        raise RowError("conversation", "missing, or not a list of turns")
    if not turns:
        raise RowError("conversation", "is empty")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"conversation[{i}]", "expected a mapping with input and output")
        clean: Turn = {"input": _text(turn, "input", optional=True), "output": _text(turn, "output")}
        for key in ("system", "sep"):
            if turn.get(key) is not None:
                clean[key] = _text(turn, key)
        for key in ("output_with_loss", "need_eos_token"):
            if turn.get(key) is not None:
                if not isinstance(turn[key], bool):
                    raise RowError(f"conversation[{i}].{key}", "expected true or false")
                clean[key] = turn[key]
        out.append(clean)
    return out


def openai(row: dict[str, Any]) -> Conversation:
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise RowError("messages", "missing, or not a list of messages")
    conversation, system, text = [], "", ""
    started = False
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise RowError(f"messages[{i}].role", "expected system, user or assistant")
        content = _text(msg, "content") if msg.get("content") is not None else ""
        if msg["role"] == "assistant" and not started:
            continue  # a leading assistant message has no prompt to answer (XTuner drops it too)
        started = True
        if msg["role"] == "system":
            system = content
        elif msg["role"] == "user":
            text += content
        else:
            loss = msg.get("loss", True)
            conversation.append({"system": system, "input": text, "output": content,
                                 "output_with_loss": str(loss).lower() == "true"})
            system, text = "", ""
    if not conversation:
        raise RowError("messages", "has no assistant message to learn from")
    return conversation


def _single(system: str | None, input_text: str, output: str) -> Conversation:
    turn: Turn = {"input": input_text, "output": output}
    if system:
        turn["system"] = system
    return [turn]


def default(row):
    return _single(None, _text(row, "input"), _text(row, "output"))


def alpaca(row):
    if row.get("output") == "<nooutput>":
        return []
    return _single(None, f"{_text(row, 'instruction')}\n{_text(row, 'input', optional=True)}", _text(row, "output"))


def alpaca_zh(row):
    return _single(None, f"{_text(row, 'instruction_zh')}\n{_text(row, 'input_zh', optional=True)}",
                   _text(row, "output_zh"))


def arxiv(row):
    return _single(SYSTEM_TEMPLATES["arxiv_gentile"], _text(row, "abstract"), _text(row, "title"))


def code_alpaca(row):
    return _single(SYSTEM_TEMPLATES["coder"], _text(row, "prompt"), _text(row, "completion"))


def colors(row):
    desc = ":".join(_text(row, "description").split(":")[1:]).strip()
    return _single(SYSTEM_TEMPLATES["colorist"], desc, _text(row, "color"))


def crime_kg_assistant(row):
    return _single(SYSTEM_TEMPLATES["lawyer"], _text(row, "input"), _text(row, "output"))


def law_reference(row):
    return _single(SYSTEM_TEMPLATES["lawyer"], _text(row, "question"), _text(row, "answer"))


def medical(row):
    return _single(SYSTEM_TEMPLATES["medical"], f"{_text(row, 'instruction')}\n{_text(row, 'input', optional=True)}",
                   _text(row, "output"))


def sql(row):
    return _single(SYSTEM_TEMPLATES["sql"], f"{_text(row, 'context')}\n{_text(row, 'question')}", _text(row, "answer"))


def tiny_codes(row):
    return _single(SYSTEM_TEMPLATES["coder"], _text(row, "prompt"), _text(row, "response"))


def openorca(row):
    return _single(_text(row, "system_prompt", optional=True), _text(row, "question"), _text(row, "response"))


def stack_exchange(row):
    return _single(None, _text(row, "question"), _text(row, "response"))


def oasst1(row):
    data = []
    for sentence in _text(row, "text").strip().split("###"):
        sentence = sentence.strip()
        if sentence.startswith("Human:"):
            data.append(sentence[6:].strip())
        elif sentence.startswith("Assistant:"):
            data.append(sentence[10:].strip())
    if len(data) % 2:
        data.pop()  # a trailing question without an answer carries no loss
    return [{"input": data[i], "output": data[i + 1]} for i in range(0, len(data), 2)]


_HUMAN, _GPT = ("human", "user"), ("gpt", "assistant", "chatgpt", "bing", "bard")


def wizardlm(row):
    messages = row.get("conversations")
    if not isinstance(messages, list):
        raise RowError("conversations", "missing, or not a list of {from, value}")
    conversation, text, system = [], "", ""
    roles = [m.get("from") if isinstance(m, dict) else None for m in messages]
    start = 0
    while start < len(roles) and roles[start] in _GPT:
        start += 1
    for i in range(start, len(messages)):
        role = roles[i]
        value = _text(messages[i], "value") if isinstance(messages[i], dict) else None
        if role in _HUMAN:
            text += value
        elif role in _GPT:
            turn: Turn = {"input": text, "output": value}
            if system:
                turn["system"] = system
            conversation.append(turn)
            text, system = "", ""
        elif role == "system":
            system = value
        else:
            raise RowError(f"conversations[{i}].from", f"expected human or gpt, got {role!r}")
    return conversation


# XTuner's msagent_react_map_fn, rule for rule (tests/test_data_formats.py runs XTuner's own function on the same
# rows and compares): the tool list and the ReAct instructions in Chinese, Python reprs where XTuner formats dicts,
# the tool's result and the final answer as a turn of their own; a row XTuner would drop is dropped (and counted).
_THINK_TURN = re.compile(r"(.*?)(<\|startofthink\|\>)(.*?)(<\|endofthink\|\>)", re.S)
_EXEC_TURN = re.compile(r"(<\|startofexec\|\>)(.*?)(<\|endofexec\|\>)(.*?)$", re.S)
REACT_HEAD = "你是一个可以调用外部工具的助手，可以使用的工具包括：\n"
REACT_RULES = ("如果使用工具请遵循以下格式回复：\n```\nThought:思考你当前步骤需要解决什么问题，是否需要使用工具\n"
               "Action:工具名称，你的工具必须从 [{names}] 选择\nAction Input:工具输入参数\n```\n"
               "工具返回按照以下格式回复：\n```\nResponse:调用工具后的结果\n```\n如果你已经知道了答案，或者你不需要工具，"
               "请遵循以下格式回复\n```\nThought:给出最终答案的思考过程\nFinal Answer:最终答案\n```\n开始!\n")


class _Dropped(Exception):
    """A row XTuner's map fn turns into an empty conversation."""


def msagent_react(row):
    """MSAgent-Bench tool-use dialogues in ReAct form (Thought / Action / Action Input / Response / Final Answer)."""
    messages = row.get("conversations")
    if isinstance(messages, str):  # some dumps hold the list as a Python literal; XTuner eval()s it, this parses it
        import ast

        try:
            messages = ast.literal_eval(messages)
        except (ValueError, SyntaxError):
            raise RowError("conversations", "a string that is not a list literal of {from, value}") from None
    if not isinstance(messages, list):
        raise RowError("conversations", "missing, or not a list of {from, value}")
    if len(messages) < 2:
        return []
    try:
        return _react_turns(messages)
    except _Dropped:
        return []


def _react_turns(messages: list[Any]) -> list[dict[str, str]]:
    conversation: list[dict[str, str]] = []
    system, text = "", ""
    for i, msg in enumerate(messages):
        role, value = msg.get("from"), _text(msg, "value")
        if role == "system":
            tools = _tool_descriptions(value)
            system += REACT_HEAD + f"{tools}\n" + REACT_RULES.format(names=str(list(tools.keys())))
        elif role == "user":
            text += f"{value}\n"
        elif role == "assistant":
            said, result = _split_exec(value)
            try:
                said, thoughts = _THINK_TURN.subn(_thought, said)
            except (ValueError, KeyError, TypeError):
                raise _Dropped from None
            conversation.append({"system": system, "input": text,
                                 "output": f"{said}\n" if thoughts else f"Final Answer:{said}\n"})
            system, text = "", ""
            if result is not None:
                conversation += _result_turn(result)
        else:
            raise RowError(f"conversations[{i}].from", f"expected system, user or assistant, got {role!r}")
    return conversation


def _split_exec(value: str) -> tuple[str, str | None]:
    if "<|startofexec|>" not in value:
        return value, None
    parts = value.split("<|startofexec|>")
    if len(parts) != 2:
        raise _Dropped
    return parts[0], "<|startofexec|>" + parts[1]


def _result_turn(result: str) -> list[dict[str, str]]:
    """The tool's response, then the final answer as its own turn (XTuner ignores a response it cannot parse)."""
    try:
        result, _ = _EXEC_TURN.subn(_response, result)
    except (ValueError, KeyError, TypeError):
        return []
    parts = result.split("Final Answer:")
    if len(parts) != 2:
        return []
    return [{"system": parts[0], "output": "Final Answer:" + parts[1]}]


def _unfenced(text: str) -> Any:
    return json.loads(text.replace("```JSON", "").replace("```", "").replace("\n", ""))


def _thought(match: re.Match) -> str:
    before = match.group(1).strip()
    call = _unfenced(match.group(3))
    return (f"Thought:{before}\n" if before else "") + \
        f"Action:{call['api_name']}\nAction Input:{call['parameters']}\n"


def _response(match: re.Match) -> str:
    answer = match.group(4).strip()
    return f"Response:{_unfenced(match.group(2))}\n" + (f"Final Answer:{answer}\n" if answer else "")


def _tool_descriptions(system: str) -> dict[str, str]:
    """Every JSON object in the system message that has a name and a description: name → description, plus its
    first path's parameters when it has them."""
    decoder, pos, tools = json.JSONDecoder(), 0, {}
    while (start := system.find("{", pos)) != -1:
        try:
            obj, length = decoder.raw_decode(system[start:])
        except ValueError:
            pos = start + 1
            continue
        if not (isinstance(obj, dict) and "name" in obj and "description" in obj):
            pos = start + 1
            continue
        pos = start + length
        tools[obj["name"]] = obj["description"]
        try:
            params = {p["name"]: p["description"] for p in obj["paths"][0]["parameters"]}
            tools[obj["name"]] += f"\n输入参数: {params}"
        except (KeyError, IndexError, TypeError):
            pass
    return tools


def pretrain(row):
    return [{"input": "", "output": _text(row, "text").strip(), "need_eos_token": False}]


IMAGE_MARKER = "<image>"


def llava(row):
    """LLaVA rows: `conversations` of human/gpt turns and an optional `image`. As XTuner does, the `<image>` marker
    moves to the start of the first question when the row has an image, and is removed when it has none."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("conversations", "missing, empty, or not a list of turns")
    has_image = row.get("image") not in (None, "")
    if has_image and not isinstance(row["image"], str):
        raise RowError("image", f"expected a path, got {type(row['image']).__name__}")
    conversation: Conversation = []
    question, system = None, ""
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in ("human", "user", "gpt", "assistant", "system"):
            raise RowError(f"conversations[{i}].from", "expected human, gpt or system")
        value = _text(turn, "value")
        if turn["from"] == "system":
            system = value
        elif turn["from"] in ("human", "user"):
            if question is not None:
                raise RowError(f"conversations[{i}]", "two human turns in a row")
            question = value.replace(IMAGE_MARKER, "").strip()
        else:
            if question is None:
                raise RowError(f"conversations[{i}]", "a gpt turn without a human turn before it")
            conversation.append({"input": question, "output": value, **({"system": system} if system else {})})
            question, system = None, ""
    if not conversation:
        raise RowError("conversations", "has no gpt answer to learn from")
    if has_image:
        conversation[0]["input"] = IMAGE_MARKER + "\n" + conversation[0]["input"]
    return conversation


def llava_image_only(row):
    """LLaVA rows whose every question is the image alone (XTuner's llava_image_only_map_fn): each answer is trained
    on `<image>` only, whatever text the question had; leading answers without a question are skipped."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("conversations", "missing, empty, or not a list of turns")
    first = next((i for i, t in enumerate(turns) if not (isinstance(t, dict) and t.get("from") == "gpt")), len(turns))
    conversation, question = [], ""
    for i, turn in enumerate(turns[first:], start=first):
        role = turn.get("from") if isinstance(turn, dict) else None
        if role == "human":
            if IMAGE_MARKER not in _text(turn, "value"):
                raise RowError(f"conversations[{i}].value", f"format llava_image_only needs {IMAGE_MARKER} in every "
                               "question")
            question += IMAGE_MARKER
        elif role == "gpt":
            conversation.append({"input": question, "output": _text(turn, "value")})
            question = ""
        else:
            raise RowError(f"conversations[{i}].from", f"expected human or gpt, got {role!r}")
    return conversation


FORMATS: dict[str, Callable[[dict[str, Any]], Conversation]] = {
    "xtuner": xtuner, "openai": openai, "default": default, "alpaca": alpaca, "alpaca_zh": alpaca_zh,
    "arxiv": arxiv, "code_alpaca": code_alpaca, "colors": colors, "crime_kg_assistant": crime_kg_assistant,
    "crime_kg_assitant": crime_kg_assistant, "crime_kg_assitan": crime_kg_assistant,
    "law_reference": law_reference, "medical": medical, "sql": sql, "tiny_codes": tiny_codes,
    "openorca": openorca, "stack_exchange": stack_exchange, "oasst1": oasst1, "wizardlm": wizardlm,
    "msagent_react": msagent_react, "pretrain": pretrain, "llava": llava, "llava_image_only": llava_image_only,
}
