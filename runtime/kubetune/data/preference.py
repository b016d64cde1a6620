"""Preference pairs → packed training sequences for dpo, orpo and reward.

A row gives a prompt (messages) and a chosen and a rejected response. Each side is rendered with the prompt template
(or the tokenizer's chat template) exactly as SFT renders a conversation, with loss only on the response. Too long a
side is cut, never dropped: the response to `maxResponseLength`, then the prompt from the left so that prompt +
response fits `maxLength`; every cut is counted in the report. Pairs are packed whole, chosen then rejected, into
sequences of up to 2 x maxLength; position ids restart at every sample, so no sample attends to another."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, TYPE_CHECKING

from .encode import IGNORE_INDEX, Encoder
from .formats import RowError, openai
from .source import DataError, files_of, load_rows
from .templates import PROMPT_TEMPLATES, system_text

if TYPE_CHECKING:  # the API models, for the type checker only (imported at run time where used)
    from kubetune.api.finetune import DatasetSpec
    from kubetune.api.method import MethodSpec

Messages = list[dict[str, Any]]


def _messages(row: dict[str, Any], key: str, role: str) -> Messages:
    value = row.get(key)
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list) or not value:
        raise RowError(key, "missing, or not text / a non-empty list of messages")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise RowError(f"{key}[{i}].role", "expected system, user or assistant")
        if not isinstance(msg.get("content"), str):
            raise RowError(f"{key}[{i}].content", "expected text")
    return value


def preference(row: dict[str, Any]) -> tuple[Messages, Messages, Messages]:
    """`{"prompt": [messages] | text, "chosen": [messages] | text, "rejected": [messages] | text}`."""
    return _messages(row, "prompt", "user"), _messages(row, "chosen", "assistant"), \
        _messages(row, "rejected", "assistant")


def orpo_dpo_mix_40k(row: dict[str, Any]) -> tuple[Messages, Messages, Messages]:
    """mlabonne/orpo-dpo-mix-40k: `chosen` and `rejected` are whole conversations that differ in the last message."""
    chosen, rejected = _messages(row, "chosen", "assistant"), _messages(row, "rejected", "assistant")
    if len(chosen) < 2 or chosen[-1]["role"] != "assistant":
        raise RowError("chosen", "expected a conversation ending with the assistant's answer")
    if rejected[-1]["role"] != "assistant":
        raise RowError("rejected", "expected a conversation ending with the assistant's answer")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def intel_orca_dpo(row: dict[str, Any]) -> tuple[Messages, Messages, Messages]:
    """Intel/orca_dpo_pairs: `system`, `question`, `chosen`, `rejected` texts."""
    prompt = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for key in ("question", "chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise RowError(key, "missing, or not text")
    return prompt + [{"role": "user", "content": row["question"]}], \
        [{"role": "assistant", "content": row["chosen"]}], [{"role": "assistant", "content": row["rejected"]}]


PAIR_FORMATS: dict[str, Callable[[dict[str, Any]], tuple[Messages, Messages, Messages]]] = {
    "preference": preference, "orpo_dpo_mix_40k": orpo_dpo_mix_40k, "intel_orca_dpo": intel_orca_dpo}


@dataclass
class Side:
    input_ids: list[int]
    labels: list[int]


@dataclass
class Report:
    rows: int = 0
    pairs: int = 0
    response_cut: int = 0
    prompt_cut: int = 0
    dropped: list[str] = field(default_factory=list)  # "file: row N: why"
    sequences: int = 0

    def lines(self) -> list[str]:
        packed = f" in {self.sequences} packed sequences" if self.sequences else ""
        out = [f"preference pairs: {self.pairs} of {self.rows} rows{packed}; responses cut to maxResponseLength: "
               f"{self.response_cut}; prompts cut from the left: {self.prompt_cut}"]
        if self.dropped:
            out.append(f"dropped {len(self.dropped)} pair(s) with no response token left: "
                       + "; ".join(self.dropped[:5]) + (" ..." if len(self.dropped) > 5 else ""))
        return out


class PairEncoder:
    """Renders both sides of a pair and cuts them to the length limits."""

    def __init__(self, tokenizer: Any, template_name: str, max_length: int, max_response: int | None,
                 reward_token_id: int | None = None):
        template = None if template_name in ("auto", "none") else PROMPT_TEMPLATES[template_name]
        self.encoder = Encoder(tokenizer, template, None, auto=template_name == "auto")
        # The reward token takes one place of maxLength.
        self.max_length = max_length - (1 if reward_token_id is not None else 0)
        self.max_response = max_response
        self.reward_token_id = reward_token_id

    def encode(self, prompt: Messages, responses: list[Messages], system: str | None) -> tuple[list[Side], list[str]]:
        conversations = []
        for response in responses:
            messages = [dict(m, loss=False) if m["role"] == "assistant" else m for m in prompt] + \
                [dict(m, loss=True) if m["role"] == "assistant" else m for m in response]
            conv = openai({"messages": messages})
            if system and not conv[0].get("system"):
                conv[0] = {**conv[0], "system": system}
            conversations.append(conv)
        sides, cuts = [], []
        for enc in self.encoder.encode_batch(conversations):
            side, cut = self._fit(enc.input_ids, enc.labels)
            sides.append(side)
            cuts += cut
        return sides, cuts

    def _fit(self, ids: list[int], labels: list[int]) -> tuple[Side, list[str]]:
        first = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(ids))
        prompt, response, response_labels = ids[:first], ids[first:], labels[first:]
        cuts = []
        limit = min(self.max_response or len(response), self.max_length - 1)  # at least one prompt token stays
        if len(response) > limit:
            response, response_labels = response[:limit], response_labels[:limit]
            cuts.append("response")
        room = self.max_length - len(response)
        if len(prompt) > room:
            prompt = prompt[len(prompt) - room:]
            cuts.append("prompt")
        side = Side(prompt + response, [IGNORE_INDEX] * len(prompt) + response_labels)
        if self.reward_token_id is not None:
            side.input_ids.append(self.reward_token_id)
            side.labels.append(IGNORE_INDEX)
        return side, cuts


def reward_token_id(tokenizer: Any, token: str | None) -> int:
    if token is None:
        if tokenizer.eos_token_id is None:
            raise DataError("method.reward.rewardToken: the tokenizer has no EOS token; name a reward token")
        return int(tokenizer.eos_token_id)
    ids = tokenizer.convert_tokens_to_ids([token])
    if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
        raise DataError(f"method.reward.rewardToken: {token!r} is not a single token of this tokenizer's vocabulary")
    return int(ids[0])


def encode_pairs(spec: DatasetSpec, tokenizer: Any, reward_token: int | None, seed: int = 0,
                 rows_of: Callable[[Any], tuple[str, list[dict[str, Any]]]] | None = None
                 ) -> tuple[list[tuple[Side, Side]], Report]:
    """Every source's rows → (chosen, rejected) sides, in file order."""
    encoder = PairEncoder(tokenizer, spec.prompt_template.value, spec.max_length, spec.max_response_length,
                          reward_token)
    pairs: list[tuple[Side, Side]] = []
    report = Report()
    for src in [spec, *spec.concat]:
        fmt = src.format.value
        if fmt not in PAIR_FORMATS:
            raise DataError(f"dataset format {fmt!r} ({src.uri}) has no preference pairs; preference methods need "
                            f"one of {', '.join(PAIR_FORMATS)}")
        for where, index, system, parsed, problem, malformed in _parsed(src, rows_of, seed):
            report.rows += 1
            if malformed:
                raise DataError(f"{where}: row {index}: {problem}")
            if problem:
                report.dropped.append(f"{where}: row {index}: {problem}")
                continue
            prompt, chosen, rejected = parsed
            (good, bad), cuts = encoder.encode(prompt, [chosen, rejected], system)
            report.response_cut += "response" in cuts
            report.prompt_cut += "prompt" in cuts
            pairs.append((good, bad))
    report.pairs = len(pairs)
    if not pairs:
        raise DataError(f"{spec.uri}: no usable preference pairs (" + "; ".join(report.dropped[:3]) + ")")
    return pairs, report


def _parsed(src: Any, rows_of: Any, seed: int):
    """(where, index, system, (prompt, chosen, rejected) or None, problem, malformed) for each row of one source."""
    where, rows = (rows_of or _rows)(src)
    if src.max_samples and src.max_samples < len(rows):
        rows = random.Random(seed).sample(rows, src.max_samples)
    system = system_text(src.system, src.system_template.value if src.system_template else None)
    for index, row in enumerate(rows):
        try:
            prompt, chosen, rejected = PAIR_FORMATS[src.format.value](row)
        except RowError as exc:
            yield where, index, system, None, str(exc), True
            continue
        if _empty(chosen) or _empty(rejected):
            yield where, index, system, None, f"empty {'chosen' if _empty(chosen) else 'rejected'} response", False
        else:
            yield where, index, system, (prompt, chosen, rejected), None, False


def _empty(response: Messages) -> bool:
    return not any(m["content"].strip() for m in response if m["role"] == "assistant")


def _rows(src: Any) -> tuple[str, list[dict[str, Any]]]:
    files = files_of(src.uri, src.file_type.value)
    where = src.uri if len(files) != 1 else str(files[0])
    return where, list(load_rows(files, src.file_type.value))


def pack_pairs(pairs: list[tuple[Side, Side]], capacity: int, shuffle: bool, seed: int) -> list[dict[str, Any]]:
    """Whole pairs, greedily, into sequences of at most `capacity` tokens (one pair per sequence when capacity is
    0). Each sequence: input_ids, labels, seq_lens [chosen, rejected, chosen, rejected, ...]."""
    order = list(range(len(pairs)))
    if shuffle:
        random.Random(seed).shuffle(order)
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for i in order:
        good, bad = pairs[i]
        size = len(good.input_ids) + len(bad.input_ids)
        if current is None or not capacity or len(current["input_ids"]) + size > capacity:
            current = {"input_ids": [], "labels": [], "seq_lens": []}
            out.append(current)
        for side in (good, bad):
            current["input_ids"] += side.input_ids
            current["labels"] += side.labels
            current["seq_lens"].append(len(side.input_ids))
    return out


def method_reward_token(method: MethodSpec, tokenizer: Any) -> int | None:
    """The token a reward model scores at (None for dpo and orpo)."""
    if method.type.value != "reward":
        return None
    assert method.reward is not None  # MethodSpec fills it for type reward
    return reward_token_id(tokenizer, method.reward.reward_token)


def build(spec: DatasetSpec, tokenizer: Any, *, seed: int = 0, reward_token: int | None = None,
          log: Callable[[str], None] = lambda s: None) -> tuple[list[dict[str, Any]], Report]:
    pairs, report = encode_pairs(spec, tokenizer, reward_token, seed)
    capacity = max(2 * spec.max_length, spec.max_packed_length or 0) if spec.pack_to_max_length else 0
    sequences = pack_pairs(pairs, capacity, spec.shuffle_before_pack, seed)
    report.sequences = len(sequences)
    for line in report.lines():
        log(line)
    return sequences, report


def check(spec: DatasetSpec, tokenizer: Any, out: Callable[[str], None] = print) -> int:
    """`check-custom-dataset` for preference data: the first pair at each stage, then every row checked; returns the
    number of rows that cannot be used (malformed, or with an empty response)."""
    from .show import banner, masked_text, report_bad

    encoder = PairEncoder(tokenizer, spec.prompt_template.value, spec.max_length, spec.max_response_length)
    bad: list[str] = []
    report = Report()
    shown = False
    for src in [spec, *spec.concat]:
        fmt = src.format.value
        if fmt not in PAIR_FORMATS:
            bad.append(f"{src.uri}: format {fmt!r} has no preference pairs (one of {', '.join(PAIR_FORMATS)})")
            continue
        for where, index, system, parsed, problem, _ in _parsed(src, None, 0):
            report.rows += 1
            if problem:
                bad.append(f"{where}: row {index}: {problem}")
                continue
            prompt, chosen, rejected = parsed
            sides, cuts = encoder.encode(prompt, [chosen, rejected], system)
            report.pairs += 1
            report.response_cut += "response" in cuts
            report.prompt_cut += "prompt" in cuts
            if not shown:
                out(banner("pair after dataset_map_fn"))
                out(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}, ensure_ascii=False,
                               indent=2))
                for name, side in zip(("chosen", "rejected"), sides):
                    out(banner(f"{name}: encoded input_ids"))
                    out(str(side.input_ids))
                    out(banner(f"{name}: text, with the masked prompt"))
                    out(tokenizer.decode(side.input_ids[:len(side.labels) - sum(t != IGNORE_INDEX
                                                                                for t in side.labels)])
                        + " | " + masked_text(tokenizer, side.labels))
                packed = pack_pairs([(sides[0], sides[1])], 2 * spec.max_length, False, 0)[0]
                out(banner("packed sequence"))
                out(f"sample lengths (chosen, rejected): {packed['seq_lens']}")
                shown = True
    for line in report.lines():
        out(line)
    return report_bad(out, bad, [s.uri for s in [spec, *spec.concat]])
