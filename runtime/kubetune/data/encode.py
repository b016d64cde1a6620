"""Conversation → token ids and labels, by XTuner's rule, tokenizing a whole batch of pieces in one call.

Per turn: BOS (at the start, or after a turn that emitted EOS) → input (no loss) → output (loss unless
`output_with_loss` is false) → EOS if `need_eos_token` (labelled like the output) → SEP (no loss). Every piece is
encoded with `add_special_tokens=False`. With `promptTemplate: auto` the tokenizer's chat_template renders the
messages and only assistant turns carry loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from kubetune.errors import DataError

from .formats import Conversation
from .templates import Template

IGNORE_INDEX = -100


class TemplateMismatch(DataError, ValueError):
    """The prompt template cannot work with this tokenizer."""


def apply_template(conversation: Conversation, template: Template) -> Conversation:
    """XTuner's template_map_fn; values a row sets explicitly (need_eos_token, sep) win over the template's."""
    out = []
    for i, turn in enumerate(conversation):
        rendered = dict(turn)
        rendered["input"] = template.render_input(turn.get("input") or "", turn.get("system"), round=i + 1)
        rendered["output"] = turn["output"] + template.suffix
        rendered.setdefault("need_eos_token", template.need_eos_token)
        rendered.setdefault("sep", template.sep)
        rendered.pop("system", None)
        out.append(rendered)
    return out


def special_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """BOS and EOS ids; a tokenizer without BOS (Qwen) gets none, ChatGLM's two-token prefix as XTuner has it."""
    if type(tokenizer).__name__ == "ChatGLMTokenizer":
        bos: Any = [64790, 64792]
    else:
        bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    bos = [] if bos is None else ([bos] if isinstance(bos, int) else list(bos))
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    return bos, eos


def check_template(tokenizer: Any, name: str, template: Template | None) -> None:
    """Fail early when a template's end-of-turn marker is not one token of this tokenizer."""
    _, eos = special_ids(tokenizer)
    if template is None:
        if name == "auto" and not getattr(tokenizer, "chat_template", None):
            raise TemplateMismatch("promptTemplate auto needs a tokenizer with a chat_template; this one has none: "
                                   "name one of XTuner's templates instead")
        return
    if template.need_eos_token and not eos:
        raise TemplateMismatch(f"template {name} ends answers with the EOS token, but the tokenizer has no eos_token")
    if template.suffix_as_eos:
        ids = tokenizer.encode(template.suffix, add_special_tokens=False)
        if len(ids) != 1:
            raise TemplateMismatch(
                f"template {name} ends every answer with {template.suffix!r} as its end-of-turn token, but this "
                f"tokenizer splits it into {len(ids)} tokens, so generation would never stop: the template does not "
                "match the model; use the model family's template or promptTemplate: auto")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


class Encoder:
    """Encodes batches of conversations; pieces of a whole batch go through the tokenizer in one call."""

    def __init__(self, tokenizer: Any, template: Template | None, max_length: int | None, auto: bool = False):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.auto = auto
        self.bos, self.eos = special_ids(tokenizer)

    def encode_batch(self, conversations: Sequence[Conversation]) -> list[Encoded]:
        plans = [self._auto_plan(c) if self.auto else self._plan(c) for c in conversations]
        texts = [text for plan in plans for kind, text, _ in plan if kind == "text"]
        ids = iter(self._tokenize(texts))
        out = []
        for plan in plans:
            input_ids: list[int] = []
            labels: list[int] = []
            for kind, value, loss in plan:
                piece = next(ids) if kind == "text" else value
                input_ids += piece
                labels += piece if loss else [IGNORE_INDEX] * len(piece)
            truncated = self.max_length is not None and len(input_ids) > self.max_length
            if truncated:
                input_ids, labels = input_ids[:self.max_length], labels[:self.max_length]
            out.append(Encoded(input_ids, labels, truncated))
        return out

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # The Rust tokenizer directly: the Python wrapper's per-encoding conversion costs as much as tokenizing.
            return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _plan(self, conversation: Conversation) -> list[tuple[str, Any, bool]]:
        plan = []
        for kind, value, loss in turn_pieces(conversation, self.template):
            if kind == "bos":
                if self.bos:
                    plan.append(("ids", self.bos, False))
            elif kind == "eos":
                if not self.eos:
                    raise TemplateMismatch("the tokenizer has no eos_token, but a turn needs one")
                plan.append(("ids", self.eos, loss))
            else:
                plan.append((kind, value, loss))
        return plan

    def _auto_plan(self, conversation: Conversation) -> list[tuple[str, Any, bool]]:
        messages, losses = [], []
        for turn in conversation:
            if turn.get("system"):
                messages.append({"role": "system", "content": turn["system"]})
            messages.append({"role": "user", "content": turn.get("input") or ""})
            messages.append({"role": "assistant", "content": turn["output"]})
            losses.append(turn.get("output_with_loss", True))
        plan: list[tuple[str, Any, bool]] = []
        done, answer = "", 0
        for k, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            prompt = self._render(messages[:k], generation_prompt=True)
            full = self._render(messages[:k + 1], generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise TemplateMismatch("the tokenizer's chat_template does not render conversations prefix by prefix, "
                                       "so answer spans cannot be found; name one of XTuner's templates instead")
            plan.append(("text", prompt[len(done):], False))
            plan.append(("text", full[len(prompt):], losses[answer]))
            done, answer = full, answer + 1
        rest = self._render(messages, generation_prompt=False)[len(done):]
        if rest:
            plan.append(("text", rest, False))
        return plan

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def turn_pieces(conversation: Conversation, template: Template | None) -> list[tuple[str, Any, bool]]:
    """XTuner's rule as a list of (kind, text, with_loss), kind being "bos", "text" or "eos"; the encoder and the
    golden rendering both follow it, so the rule exists once."""
    turns = apply_template(conversation, template) if template else conversation
    pieces: list[tuple[str, Any, bool]] = []
    needs_bos = True
    for turn in turns:
        if needs_bos:
            pieces.append(("bos", None, False))
        pieces.append(("text", turn.get("input") or "", False))
        loss = turn.get("output_with_loss", True)
        pieces.append(("text", turn["output"], loss))
        needs_bos = turn.get("need_eos_token", True)
        if needs_bos:
            pieces.append(("eos", None, loss))
        if turn.get("sep"):
            pieces.append(("text", turn["sep"], False))
    return pieces


def render_text(conversation: Conversation, template: Template, bos: str = "<BOS>", eos: str = "<EOS>") -> str:
    """The training text of a conversation under a template, BOS/EOS shown as markers (what goldens pin)."""
    markers = {"bos": bos, "eos": eos}
    return "".join(markers.get(kind, value) for kind, value, _ in turn_pieces(conversation, template))
