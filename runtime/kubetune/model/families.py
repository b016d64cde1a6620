"""Which of transformers' registered causal LMs kubetune can train: a causal text decoder, read off the config
before any weight loads. transformers' `AutoModelForCausalLM` also maps encoders run with a causal mask (BERT,
RoBERTa, ...), the decoder halves of encoder-decoders (BART, Whisper, ...) and audio decoders: loaded alone they get
freshly random embeddings or heads, or attend bidirectionally, and would train without learning."""

from __future__ import annotations

from typing import Any

from .tokenizer import ModelLoadError

# Decoders transformers registers for causal LM that are not text decoders on their own (the mappings below miss
# them): family → what it is.
_NOT_TEXT_DECODERS = {
    "bert-generation": "a BERT encoder with a causal mask switched on",
    "trocr": "the text decoder of an image-to-text encoder-decoder, trained with its image encoder",
    "whisper": "the text decoder of a speech encoder-decoder, trained with its audio encoder",
    "musicgen": "a decoder of audio codebooks", "musicgen_melody": "a decoder of audio codebooks",
    "moshi": "a speech-text model whose decoder predicts audio codebooks",
    "xlnet": "a permutation language model (two-stream attention over permuted orders)",
}


def why_not_a_decoder(config: Any) -> str | None:
    """None for a causal text decoder, else what the family is instead."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_MASKED_LM_MAPPING_NAMES,
                                                        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)

    family = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False) or family in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "an encoder-decoder (sequence-to-sequence) model"
    if family in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "a bidirectional (masked-LM) encoder, which transformers runs as a decoder by forcing a causal mask"
    return _NOT_TEXT_DECODERS.get(family)


def refuse_non_decoder(config: Any, field: str) -> None:
    why = why_not_a_decoder(config)
    if why:
        raise ModelLoadError(f"{field}: {config.model_type} is {why}, not a causal decoder: kubetune fine-tunes causal "
                             "language models (Llama, Qwen, Mistral, Gemma, ... and their hybrids)")


def refuse_non_decoder_at(path: Any, trust_remote_code: bool, field: str) -> None:
    """The check above on a model folder's config, before its weights load (a config that does not load is left to
    the weights' loader, which says why)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception:  # transformers raises many types for an unusable folder
        return
    refuse_non_decoder(config, field)
