"""`kubetune chat`: XTuner's interactive loop (double Enter sends, RESET clears the history, EXIT quits), streamed
answers, MOSS plugins, and `--prompt` for one answer without a terminal."""

from __future__ import annotations

import queue
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from .engine import Engine, Event, Request
from .plugins import run_commands
from .prompt import Message, Prompter, PromptTooLong
from .sampling import Sampling

BANNER = "\ndouble enter to end input (EXIT: exit chat, RESET: reset history) >>> "


@dataclass
class Chat:
    engine: Engine
    prompter: Prompter
    sampling: Sampling
    plugins: set[str] = field(default_factory=set)
    stream: bool = True
    history: list[Message] = field(default_factory=list)
    # LLaVA: the first turn starts with the image marker, whose token `expand` turns into `extra_tokens` more ids.
    first_turn_prefix: str = ""
    expand: Callable[[list[int]], list[int]] | None = None
    extra_tokens: int = 0

    def ask(self, text: str, out: Callable[[str], None]) -> str:
        """Answer one user message in the context of the history, writing the answer through `out` as it comes."""
        if not self.history:
            text = self.first_turn_prefix + text
        messages = self.history + [{"role": "user", "content": text}]
        ids, dropped = self.prompter.encode(messages, self.sampling.max_tokens + self.extra_tokens)
        if self.expand is not None:
            ids = self.expand(ids)
        if dropped:
            self.history = self.history[dropped:]
            print(f"\n(log: the {dropped} oldest messages no longer fit the context window and were dropped)",
                  file=sys.stderr)
        answer = self._generate(ids, out)
        if self.plugins:
            results = run_commands(answer, self.plugins)
            if results is not None:
                out("\n" + results)
                tokenizer = self.prompter.tokenizer
                follow = ids + tokenizer.encode(answer + "<eoc>\n" + results, add_special_tokens=False)
                answer = answer + "<eoc>\n" + results + self._generate(follow, out)
        self.history = messages + [{"role": "assistant", "content": answer}]
        return answer

    def _generate(self, ids: list[int], out: Callable[[str], None]) -> str:
        events: queue.Queue[Event] = queue.Queue()
        self.engine.submit(Request(ids, self.sampling, events.put))
        parts = []
        while True:
            event = events.get()
            parts.append(event.text)
            if self.stream and event.text:
                out(event.text)
            if event.finished:
                if event.error:
                    raise RuntimeError(event.error)
                break
        answer = "".join(parts)
        if not self.stream:
            out(answer)
        return answer

    def reset(self) -> None:
        self.history = []


def read_message(stdin: TextIO, prompt_out: TextIO) -> str | None:
    """Lines until an empty one (double Enter); None at end of input."""
    prompt_out.write(BANNER)
    prompt_out.flush()
    lines: list[str] = []
    while True:
        line = stdin.readline()
        if not line:
            return "\n".join(lines) if lines else None
        line = line.rstrip("\n")
        if line == "" and lines:
            return "\n".join(lines)
        if line != "":
            lines.append(line)


def interactive(chat: Chat, bot_name: str, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    # The streams are looked up per call, not bound at import: a caller may have replaced sys.stdout since.
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def out(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    while True:
        text = read_message(stdin, stdout)
        if text is None or text.strip() == "EXIT":
            out("\nLog: Exit!\n")
            return 0
        if text.strip() == "RESET":
            chat.reset()
            out("\nLog: History responses have been removed!\n")
            continue
        out(f"\n{bot_name}: ")
        try:
            chat.ask(text, out)
        except PromptTooLong as exc:
            out(f"\nLog: {exc}; shorten the message or RESET.\n")
            continue
        out("\n")


def one_shot(chat: Chat, prompt: str, stdout: Any = None) -> int:
    stdout = stdout or sys.stdout

    def out(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    chat.ask(prompt, out)
    out("\n")
    return 0
