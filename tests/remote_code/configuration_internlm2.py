"""A configuration in InternLM2's layout, for a tiny remote-code test model (tests/remote_code/README)."""

from transformers import PretrainedConfig


class InternLM2Config(PretrainedConfig):
    model_type = "internlm2"

    def __init__(self, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0,
                 max_position_embeddings=4096, bias=False, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.num_key_value_heads, self.rms_norm_eps, self.rope_theta = num_key_value_heads, rms_norm_eps, rope_theta
        self.max_position_embeddings, self.bias = max_position_embeddings, bias
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
