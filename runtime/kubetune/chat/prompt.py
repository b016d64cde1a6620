"""Conversations to token ids with XTuner's templates (or the tokenizer's chat template for `auto`), the same way
training rendered them, trimmed from the oldest turn so prompt + answer fit the context window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.data.templates import PROMPT_TEMPLATES, Template

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


class PromptTooLong(ValueError):
    """Even the last user message alone leaves no room for an answer."""


@dataclass
class Prompter:
    tokenizer: Any
    template: str = "auto"
    system: str | None = None
    context: int = 4096
    trusted_prefix: str = ""  # LLaVA's image marker, which the REPL (not the person typing) puts before a message

    @property
    def spec(self) -> Template | None:
        return None if self.template == "auto" else PROMPT_TEMPLATES[self.template]

    def stop_words(self, extra: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*(self.spec.stop_words if self.spec else ()), *extra)))

    def eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        for word in self.stop_words():  # a stop word that is one special token stops on the id, before decoding
            tid = self.tokenizer.convert_tokens_to_ids(word)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return ids

    def render(self, messages: list[Message]) -> list[int]:
        """Token ids for `messages` as they are (the server's path: clients own their history)."""
        system, turns = self._split(messages)
        return self._render(system, turns)

    def encode(self, messages: list[Message], max_new_tokens: int) -> tuple[list[int], int]:
        """Token ids for `messages` (ending with a user turn) and how many of the oldest turns were dropped to
        leave `max_new_tokens` of room (down to a minimum of one new token)."""
        system, turns = self._split(messages)
        dropped = 0
        while True:
            ids = self._render(system, turns[dropped:])
            if len(ids) + max_new_tokens <= self.context or dropped + 1 >= len(turns):
                break
            dropped += 2 if turns[dropped]["role"] == "user" and len(turns) - dropped > 2 else 1
        if len(ids) >= self.context:
            raise PromptTooLong(f"the prompt is {len(ids)} tokens; the context window is {self.context}")
        return ids, dropped

    def _split(self, messages: list[Message]) -> tuple[str | None, list[Message]]:
        messages = [{**m, "content": self._neutral(m["content"])} for m in messages]
        if self.trusted_prefix:
            spoofed = self._neutral(self.trusted_prefix)
            messages = [{**m, "content": self.trusted_prefix + m["content"][len(spoofed):]}
                        if m["content"].startswith(spoofed) else m for m in messages]
        system = next((m["content"] for m in messages if m["role"] == "system"), self.system)
        turns = [m for m in messages if m["role"] != "system"]
        if not turns or turns[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user message")
        return system, turns

    def _neutral(self, text: str) -> str:
        """`text` with every control token spelled so that it encodes as plain text: a `<|im_end|>` typed into a
        message must not close the turn and open a system one (role spoofing). A zero-width space after the first
        character keeps it readable to the model and to people."""
        for token in self._controls():
            if token in text:
                text = text.replace(token, token[0] + "\u200b" + token[1:])
        return text

    def _controls(self) -> list[str]:
        if not hasattr(self, "_control_tokens"):
            tok = self.tokenizer
            added = getattr(tok, "added_tokens_decoder", {}) or {}
            names = {t.content for t in added.values() if getattr(t, "special", False)}
            names |= set(getattr(tok, "all_special_tokens", ()))
            self._control_tokens = sorted((n for n in names if len(n) > 1), key=len, reverse=True)
        return self._control_tokens

    def _render(self, system: str | None, turns: list[Message]) -> list[int]:
        tok = self.tokenizer
        if self.spec is None:
            messages = ([{"role": "system", "content": system}] if system else []) + turns
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok.encode(text, add_special_tokens=False)
        from kubetune.data.encode import special_ids, turn_pieces

        # Training's own rule (BOS after every EOS, suffix, SEP), cut after the last user turn's input.
        conversation: list[dict[str, str]] = []
        for m in turns:
            if m["role"] == "user" or not conversation or conversation[-1]["output"]:
                conversation.append({"input": "", "output": ""} | ({"system": system} if system and not conversation
                                                                    else {}))
            conversation[-1]["input" if m["role"] == "user" else "output"] = m["content"]
        done = len(turn_pieces(conversation[:-1], self.spec))
        pieces = turn_pieces(conversation, self.spec)
        last_input = next(i for i in range(done, len(pieces)) if pieces[i][0] == "text")
        bos, eos = special_ids(tok)
        ids: list[int] = []
        for kind, text, _ in pieces[:last_input + 1]:
            ids += bos if kind == "bos" else eos if kind == "eos" else tok.encode(text, add_special_tokens=False)
        return ids


def context_window(model: Any, tokenizer: Any) -> int:
    """The model's trained context length (tokenizers often say 1e30 for 'unknown')."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    length = getattr(cfg, "max_position_embeddings", None) or 4096
    tl = getattr(tokenizer, "model_max_length", None)
    return min(length, tl) if isinstance(tl, int) and 0 < tl < 1_000_000 else length
