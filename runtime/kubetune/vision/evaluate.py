"""What `mmbench` and `eval_refcoco` share: a LLaVA loaded once, asked one question per image with a fresh history,
and a results directory `<work_dir>/<timestamp>/` with the arguments, a JSON summary and a spreadsheet."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.errors import UserError


@dataclass
class Asker:
    loaded: Any
    chat: Any

    def ask(self, image: Any, question: str) -> str:
        weight = next(self.loaded.model.encoder.parameters())
        self.loaded.model.images = self.loaded.processor(image).unsqueeze(0).to(device=weight.device,
                                                                                  dtype=weight.dtype)
        self.chat.reset()
        return self.chat.ask(question, lambda text: None).strip()


def asker(args: Any) -> Asker:
    from kubetune.chat.engine import Engine
    from kubetune.chat.main import load_llava_for, prompter_for, seed_all
    from kubetune.chat.repl import Chat
    from kubetune.chat.sampling import Sampling

    from .tokens import IMAGE_TOKEN

    if not args.llava:
        raise UserError(f"{args.mode} needs --llava (the trained LLaVA directory)")
    seed_all(args.seed)
    args.adapter = None
    loaded = load_llava_for(args)
    prompter = prompter_for(args, loaded)
    sampling = Sampling(max_tokens=args.max_new_tokens, temperature=0, top_k=1, top_p=1.0, repetition_penalty=1.0,
                        seed=args.seed, stop=prompter.stop_words(args.stop_words))
    engine = Engine(loaded.model, loaded.tokenizer, max_batch=1, eos_ids=prompter.eos_ids())
    chat = Chat(engine, prompter, sampling, stream=False, first_turn_prefix=IMAGE_TOKEN + "\n",
                expand=loaded.expand, extra_tokens=loaded.model.patches - 1)
    return Asker(loaded, chat)


def results_dir(args: Any, default_name: str) -> Path:
    root = Path(args.work_dir) if args.work_dir else Path("work_dirs") / default_name
    out = root / time.strftime("%Y%m%d_%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "func"}, indent=2,
                                              default=str) + "\n")
    return out


def write_sheet(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.title = path.stem[:31]
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)
