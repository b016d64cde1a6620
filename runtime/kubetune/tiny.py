"""A tiny tokenizer and a tiny Llama built locally (nothing can be downloaded): the embedded default of the demo
and the fixture of the tests. Deterministic for a given seed.

    python -m kubetune.tiny OUT_DIR [--no-weights]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .data.templates import PROMPT_TEMPLATES

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# Every end-of-turn marker of the templates is one token, so each XTuner template can be exercised with one tokenizer.
TURN_TOKENS = sorted({t.suffix for t in PROMPT_TEMPLATES.values() if t.suffix} | {
    "<|im_start|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>",
    "<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"})
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

CORPUS = """Below is an instruction that describes a task. Write a response that appropriately completes the request.
Give three tips for staying healthy. Eat a balanced diet, exercise regularly and get enough sleep.
What is the capital of France? The capital of France is Paris. Please tell me five scenic spots in Shanghai.
The quick brown fox jumps over the lazy dog. A chat between a curious user and an artificial intelligence assistant.
def add(a, b):\n    return a + b\nSELECT name, city FROM station WHERE lat > 50;\nCREATE TABLE station (name VARCHAR)
You are a professional programer. Please provide the corresponding code based on the description of Human.
请给我介绍五个上海的景点。你现在是一名专业的中国律师，请根据用户的问题给出准确、有理有据的回复。如果你是一名医生，请根据患者的描述回答医学问题。
Human: Can you explain photosynthesis? Assistant: Sure! Plants turn light, water and carbon dioxide into sugar.
1 2 3 4 5 6 7 8 9 10 100 1000 hello world Hello World user assistant system instruction input output response
"""


def build_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL + TURN_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=TURN_TOKENS)
    fast.chat_template = CHATML
    fast.padding_side = "right"
    return fast


def model_config(vocab_size: int, **overrides):
    from transformers import LlamaConfig

    settings = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=1,
                    eos_token_id=2, pad_token_id=3, tie_word_embeddings=False, rms_norm_eps=1e-6)
    settings.update(overrides)
    return LlamaConfig(**settings)


def build(out_dir: str | Path, weights: bool = True, seed: int = 0, **config: Any) -> Path:
    """Write tokenizer (+ config and random weights) for a tiny Llama into out_dir; `config` overrides sizes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    # A larger vocabulary than the tokenizer's (benchmarks) leaves the extra rows unused, at their full compute cost.
    llama = model_config(max(len(tokenizer), config.pop("vocab_size", 0)), **config)
    if weights:
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(seed)
        LlamaForCausalLM(llama).save_pretrained(out, safe_serialization=True)
    else:
        llama.save_pretrained(out)
    return out


def build_vision_encoder(out_dir: str | Path, seed: int = 0, image_size: int = 28, patch_size: int = 14) -> Path:
    """A tiny CLIP vision encoder (weights and `preprocessor_config.json`): 4 patches of 14 px, 3 layers."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=image_size, patch_size=patch_size, projection_dim=32)
    torch.manual_seed(seed)
    CLIPVisionModel(config).save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": image_size, "width": image_size},
        "size": {"shortest_edge": image_size}, "do_center_crop": True, "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "resample": 3, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]},
        indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="write a tiny tokenizer (and tiny Llama weights)")
    parser.add_argument("out_dir")
    parser.add_argument("--no-weights", action="store_true", help="tokenizer and config only")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when OUT_DIR already has weights")
    args = parser.parse_args()
    if args.if_missing and (Path(args.out_dir) / "model.safetensors").exists():
        print(args.out_dir)
        return
    print(build(args.out_dir, weights=not args.no_weights))


if __name__ == "__main__":
    main()
