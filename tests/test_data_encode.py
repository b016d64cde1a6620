"""Tokenization and loss masks follow XTuner's rule exactly."""

import pytest

from kubetune.data.encode import IGNORE_INDEX, Encoder, TemplateMismatch, check_template, special_ids
from kubetune.data.templates import PROMPT_TEMPLATES

M = IGNORE_INDEX


def enc(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def test_xtuner_rule_for_a_template_with_eos(tokenizer):
    # `default`: SUFFIX_AS_EOS false → EOS after each answer (labelled), BOS again after it, SEP masked.
    conv = [{"system": "S", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]
    out = Encoder(tokenizer, PROMPT_TEMPLATES["default"], None).encode_batch([conv])[0]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    i1, o1, sep = enc(tokenizer, "<|System|>:S\n<|User|>:q1\n<|Bot|>:"), enc(tokenizer, "a1"), enc(tokenizer, "\n")
    i2, o2 = enc(tokenizer, "<|User|>:q2\n<|Bot|>:"), enc(tokenizer, "a2")
    assert out.input_ids == [bos] + i1 + o1 + [eos] + sep + [bos] + i2 + o2 + [eos] + sep
    assert out.labels == ([M] + [M] * len(i1) + o1 + [eos] + [M] * len(sep) + [M] + [M] * len(i2) + o2 + [eos]
                          + [M] * len(sep))


def test_xtuner_rule_for_suffix_as_eos(tokenizer):
    # internlm2_chat: the suffix <|im_end|> ends the answer, no EOS, and so no BOS before the next turn.
    conv = [{"input": "q1", "output": "a1"}, {"input": "q2", "output": "a2"}]
    out = Encoder(tokenizer, PROMPT_TEMPLATES["internlm2_chat"], None).encode_batch([conv])[0]
    assert out.input_ids.count(tokenizer.bos_token_id) == 1 and tokenizer.eos_token_id not in out.input_ids
    im_end = enc(tokenizer, "<|im_end|>")[0]
    labelled = [t for t in out.labels if t != M]
    assert labelled == enc(tokenizer, "a1<|im_end|>") + enc(tokenizer, "a2<|im_end|>")
    assert labelled.count(im_end) == 2


def test_output_without_loss_and_pretraining(tokenizer):
    conv = [{"input": "q", "output": "a", "output_with_loss": False}, {"input": "q2", "output": "b"}]
    out = Encoder(tokenizer, PROMPT_TEMPLATES["default"], None).encode_batch([conv])[0]
    assert [t for t in out.labels if t != M] == enc(tokenizer, "b") + [tokenizer.eos_token_id]
    pre = Encoder(tokenizer, None, None).encode_batch([[{"input": "", "output": "raw", "need_eos_token": False}]])[0]
    assert pre.input_ids == [tokenizer.bos_token_id] + enc(tokenizer, "raw")
    assert pre.labels == [M] + enc(tokenizer, "raw")


def test_truncation_is_reported(tokenizer):
    conv = [{"input": "q " * 50, "output": "a " * 50}]
    out = Encoder(tokenizer, PROMPT_TEMPLATES["default"], 16).encode_batch([conv])[0]
    assert out.truncated and len(out.input_ids) == 16 and len(out.labels) == 16


def test_tokenizer_without_bos(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.bos_token = None
    assert special_ids(tok)[0] == []
    out = Encoder(tok, PROMPT_TEMPLATES["qwen_chat"], None).encode_batch([[{"input": "q", "output": "a"}]])[0]
    assert out.input_ids[:1] == enc(tok, "<|im_start|>")


def test_auto_template_masks_all_but_assistant(tokenizer):
    conv = [{"system": "S", "input": "q1", "output": "a1"}, {"input": "q2", "output": "a2", "output_with_loss": False},
            {"input": "q3", "output": "a3"}]
    out = Encoder(tokenizer, None, None, auto=True).encode_batch([conv])[0]
    full = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
         {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}], tokenize=False)
    assert tokenizer.decode(out.input_ids) == full
    labelled = tokenizer.decode([t for t in out.labels if t != M])
    assert labelled == "a1<|im_end|>\na3<|im_end|>\n"


def test_template_mismatch_is_caught(tokenizer):
    with pytest.raises(TemplateMismatch, match="splits it into"):
        check_template(tokenizer, "cohere_chat_fake", PROMPT_TEMPLATES["llama3_chat"].__class__(
            instruction="{input}", suffix="<|not a token|>", suffix_as_eos=True))
    check_template(tokenizer, "internlm2_chat", PROMPT_TEMPLATES["internlm2_chat"])


def test_auto_needs_a_chat_template(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.chat_template = None
    with pytest.raises(TemplateMismatch, match="chat_template"):
        check_template(tok, "auto", None)
