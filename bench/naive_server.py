"""The serving baseline: one HF `generate` at a time behind an OpenAI-shaped streaming endpoint (a lock around
`generate`, TextIteratorStreamer for tokens as they come), as a simple transformers-based server does.

    python bench/naive_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

model_dir, port = sys.argv[1], int(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(model_dir)
lock = threading.Lock()
app = FastAPI()


def generate(ids: list[int], max_tokens: int, streamer: TextIteratorStreamer, counts: list[int]) -> None:
    with lock, torch.inference_mode():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_tokens, do_sample=False, streamer=streamer,
                             pad_token_id=tokenizer.pad_token_id)
    counts.append(out.shape[1] - len(ids))


@app.get("/health")
async def health():
    return {"status": "ok"}


@app.post("/v1/chat/completions")
async def chat(request: Request):
    body = await request.json()
    # Content as text or as parts, max_tokens or max_completion_tokens: what the openai client and GuideLLM send.
    messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                 else "".join(part.get("text", "") for part in m["content"])} for m in body["messages"]]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    counts: list[int] = []
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 64
    threading.Thread(target=generate, args=(ids, max_tokens, streamer, counts), daemon=True).start()

    async def events():
        loop = asyncio.get_running_loop()
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
        while True:
            piece = await loop.run_in_executor(None, next, streamer, None)
            if piece is None:
                break
            if piece:
                yield f"data: {json.dumps(chunk | {'choices': [{'index': 0, 'delta': {'content': piece}}]})}\n\n"
        while not counts:
            await asyncio.sleep(0.001)
        usage = {"prompt_tokens": len(ids), "completion_tokens": counts[0], "total_tokens": len(ids) + counts[0]}
        yield f"data: {json.dumps(chunk | {'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
