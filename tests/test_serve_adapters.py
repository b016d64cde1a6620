"""One `kubetune serve` for a base model and several LoRA adapters, as vLLM serves LoRA modules: the request's `model`
picks the weights, `/v1/models` lists them all, a batch mixes them, and every answer equals `peft` with that adapter
alone (greedy)."""

from __future__ import annotations

import concurrent.futures as cf
import subprocess
import sys

import openai
import pytest

from kubetune.chat.prompt import Prompter

from .chatkit import Server, http

QUESTION = [{"role": "user", "content": "Write one sentence about the sea."}]
TOKENS = 16
# Different ranks and targets: PEFT must route each row through the right adapter's own shapes.
ADAPTERS = {"sql": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
            "emo": dict(r=4, lora_alpha=32, target_modules=["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"])}


@pytest.fixture(scope="module")
def adapters(tiny_dir, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, (name, config) in enumerate(ADAPTERS.items()):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
        # Random A and B (PEFT's default B = 0 would leave every answer the base's).
        model = get_peft_model(base, LoraConfig(lora_dropout=0.0, init_lora_weights=False, **config))
        out[name] = tmp_path_factory.mktemp(f"adapter-{name}")
        model.save_pretrained(out[name])
    return out


@pytest.fixture(scope="module")
def prompt_ids(tokenizer):
    return Prompter(tokenizer, "internlm2_chat").render(QUESTION)


@pytest.fixture(scope="module")
def wants(tiny_dir, adapters, tokenizer, prompt_ids):
    """Greedy answers of the base alone and of `peft` with each adapter alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    eos = sorted(Prompter(tokenizer, "internlm2_chat").eos_ids())

    def answer(model) -> str:
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=TOKENS, do_sample=False, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        ids = out[0, len(prompt_ids):].tolist()
        return tokenizer.decode(ids[:next((i for i, t in enumerate(ids) if t in eos), len(ids))],
                                skip_special_tokens=True)

    def base():
        return AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()

    found = {"base": answer(base())}
    for name, path in adapters.items():
        found[name] = answer(PeftModel.from_pretrained(base(), str(path)).eval())
    assert len(set(found.values())) == 3, f"the adapters must change the answers: {found}"
    return found


@pytest.fixture(scope="module")
def server(tiny_dir, adapters, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-adapters") / "serve.log"
    s = Server(tiny_dir, log, "--prompt-template", "internlm2_chat", "--served-model-name", "base", "--temperature",
               "0", "--max-batch", "6", *(a for n, p in adapters.items() for a in ("--adapter", f"{n}={p}")))
    yield s
    assert s.stop() == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def test_models_lists_base_and_adapters(client):
    listed = {m.id: m for m in client.models.list()}
    assert list(listed) == ["base", "sql", "emo"]
    assert listed["sql"].model_extra["parent"] == "base" and listed["base"].model_extra["parent"] is None


def test_each_name_answers_as_peft_with_that_adapter_alone(client, wants):
    for name, want in wants.items():
        r = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=TOKENS)
        assert r.model == name and r.choices[0].message.content == want, name


def test_a_batch_mixing_adapters_answers_each_row_with_its_own(client, wants):
    names = ["base", "sql", "emo"] * 3

    def ask(name: str) -> str:
        if names.index(name) % 2:  # some rows stream, so they join the batch at other steps
            stream = client.chat.completions.create(model=name, messages=QUESTION, max_tokens=TOKENS, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return client.chat.completions.create(model=name, messages=QUESTION, max_tokens=TOKENS).choices[0].message.content

    with cf.ThreadPoolExecutor(len(names)) as pool:
        got = list(pool.map(ask, names))
    assert got == [wants[n] for n in names]


def test_an_unknown_model_is_named_with_what_is_served(server):
    code, _, reply = http("POST", f"{server.url}/v1/chat/completions", {"model": "other", "messages": QUESTION})
    assert code == 404 and reply["error"]["code"] == "model_not_found"
    assert "`base`, `sql`, `emo`" in reply["error"]["message"]


def test_an_adapter_named_like_the_base_is_refused(tiny_dir, adapters):
    run = subprocess.run([sys.executable, "-m", "kubetune", "serve", str(tiny_dir), "--served-model-name", "sql",
                          "--adapter", f"sql={adapters['sql']}"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "the name sql is already served" in run.stderr and "Traceback" not in run.stderr
