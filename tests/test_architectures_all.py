"""Every causal-LM architecture transformers registers, not a hand-picked list (tests/archall.py builds each tiny
from its own config class): each is refused before its weights load (not a causal text decoder), or packs exactly —
every sample of a packed row scores as it scores alone, whichever way kubetune's `choose_packing` runs the row
(attention that restarts at the boundaries, or each sample as a row of its own for state-space, convolution and
linear-attention layers) — or has packing refused with one line before training. docs/architectures.md is this
test's table (KUBETUNE_REGEN_GOLDEN=1 rewrites it)."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kubetune.data.collate import collate
from kubetune.model import attention
from kubetune.model.families import why_not_a_decoder
from kubetune.model.packed import choose_packing, packed_forward

from . import archall
from .test_architectures import per_sample_losses, write_job

LENGTHS = (13, 9, 40, 1, 30)
TABLE = Path(__file__).parent.parent / "docs" / "architectures.md"
RESULTS: dict[str, tuple[str, str, str]] = {}  # family → (packing, detail, chat/serve), filled by the test below


def status(family):
    """(packing status, detail, chat/serve status) of one family, as the runtime decides them."""
    why = refused_from_config(family)
    if why:
        return "refused", why, "refused"
    try:
        model = archall.build(family)
    except Exception as exc:  # noqa: BLE001 - any failure to build must be a listed one
        assert family in archall.UNBUILDABLE, (
            f"{family} cannot be built tiny ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}): give it "
            "OVERRIDES in tests/archall.py, or list it in UNBUILDABLE with the reason")
        return "not built here", archall.UNBUILDABLE[family], "—"
    assert family not in archall.UNBUILDABLE, f"{family} builds now: remove it from UNBUILDABLE"
    chat = chat_status(model, family)  # first: packing switches the model to the training attention
    return (*packing_status(model, family), chat)


def refused_from_config(family):
    """The runtime's refusal of a non-decoder, from the family's config alone (no weights built or loaded)."""
    from transformers import CONFIG_MAPPING

    try:
        default = CONFIG_MAPPING[family]()
    except Exception:  # noqa: BLE001 - a config class with no valid defaults: its family name decides
        default = SimpleNamespace(model_type=family)
    return why_not_a_decoder(default)


def chat_status(model, family):
    """`chat`/`serve` start-up: batched decoding checked against the full forward, or a one-line refusal."""
    from kubetune.chat.selfcheck import check_batched_decoding
    from kubetune.errors import ModelLoadError

    try:
        check_batched_decoding(model, _Ids(), family)
    except ModelLoadError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"model: {family}: ")
        return "refused: " + str(exc).split(": ", 2)[2].split("; serve it with")[0]
    return "decodes (batched = full forward)"


def packing_status(model, family):
    """Packed = each sample alone, whichever way `choose_packing` runs the rows, or packing refused in one line."""
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    samples = [torch.randint(5, min(vocab, 1000), (n,), generator=gen).tolist() for n in LENGTHS]
    alone = [x for s in samples for x in per_sample_losses(model, collate([{"input_ids": s, "labels": s}]), [len(s)])]
    attention.register()
    model.config._attn_implementation = attention.PACKED  # what `kubetune train` asks for on a CPU
    said = []
    try:
        mode = choose_packing(model, family, said.append)
    except attention.UnsupportedAttention as exc:
        message = str(exc)
        assert "\n" not in message and "dataset.packToMaxLength" in message
        return "packing refused", message.split(": ", 1)[1]
    flat = [t for s in samples for t in s]
    packed = per_sample_losses(model, collate([{"input_ids": flat, "labels": flat, "seq_lens": list(LENGTHS)}]),
                               LENGTHS)
    worst = max(abs(a - b) / abs(b) for a, b in zip(packed, alone))
    assert worst <= 1e-4, f"{family}: packed ({mode}) differs from each sample alone by {worst:.2e} relative"
    reason = said[0].split(": ", 2)[2].split(", so ")[0] if said else "attention keeps samples apart"
    return f"packs ({mode})", f"{reason}; packed = alone to {'<1e-6' if worst < 1e-6 else f'{worst:.0e}'}"


@pytest.mark.parametrize("family", archall.families())
def test_every_registered_family_packs_and_decodes_exactly_or_is_refused(family):
    RESULTS[family] = status(family)


def test_the_architecture_table_is_this_tests_result():
    families = archall.families()
    missing = [f for f in families if f not in RESULTS]
    if missing:
        pytest.fail(f"run the whole file: no result for {missing[:5]}")
    rows = "\n".join(f"| {f} | {RESULTS[f][0]} | {RESULTS[f][1].replace('|', '/')} | {RESULTS[f][2].replace('|', '/')} |"
                     for f in families)
    counts = {s: sum(1 for v in RESULTS.values() if v[0] == s) for s in sorted({v[0] for v in RESULTS.values()})}
    text = (
        "# Architectures\n\n"
        "Generated by `tests/test_architectures_all.py` (KUBETUNE_REGEN_GOLDEN=1 rewrites it) from every causal-LM "
        f"architecture transformers {__import__('transformers').__version__} registers ({len(families)}), each "
        "built tiny from its own config class (`tests/archall.py`). **packs (attention)**: one forward per packed "
        "row, attention restarts at every sample. **packs (split)**: the model has layers that carry state along "
        "the row (state-space, convolution, linear attention) or computes attention itself, so each sample runs as "
        "a row of its own (exact; as fast as unpacked training). **refused**: not a causal text decoder, refused "
        "before its weights load. **packing refused**: trains with `dataset.packToMaxLength: false`. **not built "
        "here**: no tiny model of it in this test yet (the reason). **chat / serve**: `kubetune chat` and `serve` "
        "decode two prompts through their batching engine at start-up and check every token against the model's "
        "full forward; a family whose cache they cannot batch is refused there in one line.\n\n"
        + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".\n\n"
        "| family | packing | why / measured | chat / serve |\n|---|---|---|---|\n" + rows + "\n")
    if os.environ.get("KUBETUNE_REGEN_GOLDEN") == "1":
        TABLE.write_text(text)
    assert TABLE.read_text() == text, "docs/architectures.md differs from this run: KUBETUNE_REGEN_GOLDEN=1"


def test_a_hybrid_trains_packed_as_it_trains_unpacked(tmp_path, capsys):
    """The user's view: `kubetune train` with packing on a hybrid (gated DeltaNet + attention) says how it packs, and
    its first step's loss and gradient norm equal the same samples' unpacked batch."""
    import json

    import yaml

    from kubetune.cli.main import main as kubetune
    from kubetune.tiny import build_tokenizer

    model_dir = tmp_path / "qwen3_next"
    build_tokenizer().save_pretrained(model_dir)
    archall.build("qwen3_next").save_pretrained(model_dir)
    results = {}
    for pack in (True, False):
        job = write_job(tmp_path, model_dir, "lora")
        spec = yaml.safe_load(job.read_text())
        spec["dataset"].update(maxLength=1024, packToMaxLength=pack)  # packed: one row holds all 8 samples
        spec["training"].update(batchSize=1 if pack else 8, maxSteps=1)
        spec["method"]["lora"]["dropout"] = 0.0  # the same masks in both layouts
        spec["evaluation"]["inputs"] = []
        job.write_text(yaml.safe_dump(spec))
        work = tmp_path / f"work-{pack}"
        assert kubetune(["train", str(job), "--work-dir", str(work)]) == 0, capsys.readouterr().err
        results[pack] = json.loads(next(work.glob("*/vis_data/scalars.json")).read_text().splitlines()[0])
        log = next(work.glob("*/*.log")).read_text()
        assert ("packing: qwen3_next: its Conv1d, Qwen3NextGatedDeltaNet layers carry state" in log) == pack
    assert results[True]["loss"] == pytest.approx(results[False]["loss"], rel=1e-5)
    assert results[True]["grad_norm"] == pytest.approx(results[False]["grad_norm"], rel=1e-4)


class _Ids:  # the engine only detokenizes what it emits: token ids as text are enough here
    def decode(self, ids, **_):
        return " ".join(map(str, ids))

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


@pytest.mark.parametrize("family", ["llama", "qwen3_next", "qwen3_5", "bamba", "jamba", "granitemoehybrid", "lfm2",
                                    "falcon_h1", "zamba2"])
def test_hybrids_decode_in_a_batch_as_generate_decodes_them_alone(family):
    """`chat`/`serve`'s engine (continuous batching: each prompt prefilled alone, then its cache joined into the
    running batch) on hybrid models, whose caches hold convolution and recurrent states beside keys and values:
    greedy answers equal transformers' generate of each prompt alone."""
    from kubetune.chat.engine import Engine, Request
    from kubetune.chat.sampling import Sampling

    model = archall.build(family)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 1000, (n,), generator=gen).tolist() for n in (5, 11, 3, 8)]
    want = [model.generate(torch.tensor([p]), max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(p):].tolist() for p in prompts]
    errors = []
    engine = Engine(model, _Ids(), max_batch=4)
    requests = [engine.submit(Request(prompt=p, sampling=Sampling(max_tokens=6),
                                      emit=lambda e: e.error and errors.append(e.error))) for p in prompts]
    engine.shutdown(drain=True, timeout=120)
    assert not errors
    assert [r.generated for r in requests] == want


@pytest.mark.parametrize("family", ["phimoe", "llama4_text", "mixtral", "qwen3_moe", "jamba", "olmoe"])
def test_all_linear_lora_never_adapts_a_router(family):
    """Routers stay out of all-linear LoRA whatever class they are (PhiMoE's and Llama 4's subclass nn.Linear)."""
    from kubetune.api.method import LoraSpec
    from kubetune.train import lora

    model = archall.build(family)
    routers = {f"{name}.{leaf}.weight" for name, module in model.named_modules() if hasattr(module, "experts")
               for leaf in ("gate", "router") if hasattr(getattr(module, leaf, None), "weight")}
    assert routers, f"{family}: no router found to check"
    adapted = lora.adapted_weights(lora.apply(model, lora.plan(model, LoraSpec(r=4))))
    assert adapted and not adapted & routers


def test_a_reward_model_over_a_hybrid_scores_packed_pairs_as_each_alone():
    """Reward models wrap the language model: the split forward reaches through the wrapper (each pair's two
    samples share a row whatever dataset.packToMaxLength says)."""
    from kubetune.model.packed import SPLIT
    from kubetune.train.reward import build_reward_model

    llm = archall.build("qwen3_next")
    attention.register()
    llm.config._attn_implementation = attention.PACKED
    assert choose_packing(llm, "qwen3_next") == SPLIT
    reward = build_reward_model(llm, 7, seed=0).eval()
    chosen, rejected = [5, 9, 11, 13, 7], [6, 10, 12, 7]
    with torch.no_grad():
        packed = packed_forward(reward, collate([{"input_ids": chosen + rejected, "labels": chosen + rejected,
                                                  "seq_lens": [5, 4]}]))[0]
        alone = [packed_forward(reward, collate([{"input_ids": s, "labels": s}]))[0] for s in (chosen, rejected)]
    assert torch.allclose(packed, torch.cat(alone), atol=1e-5)


def test_adapters_of_multimodal_checkpoints_merge_as_peft_merges_them(tmp_path, capsys):
    """Every registered causal LM that is a multimodal wrapper (Gemma 3 ≥4B as shipped, ...) and builds tiny: its
    checkpoint names weights as the hub does (`language_model.model.layers…`), transformers renames them on load
    (`model.language_model.layers…`), and adapters use the loaded names; `convert merge` = peft's merge."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from kubetune.cli.main import main as kubetune

    merged_families = []
    for family in archall.families():
        if ("ConditionalGeneration" not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[family]
                or family in archall.UNBUILDABLE or refused_from_config(family)):
            continue
        base, adapter, merged = (tmp_path / family / name for name in ("base", "adapter", "merged"))
        archall.build(family).save_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                 target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)"))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1)
        model.save_pretrained(adapter)
        assert kubetune(["convert", "merge", str(base), str(adapter), str(merged)]) == 0, capsys.readouterr().err
        ids = torch.randint(5, 1000, (1, 20), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                             adapter).eval()(input_ids=ids).logits
            got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()(input_ids=ids).logits
        assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item()), family
        merged_families.append(family)
    assert "gemma3" in merged_families, merged_families
