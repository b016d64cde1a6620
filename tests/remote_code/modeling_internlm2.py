"""A decoder in InternLM2's layout (fused, grouped `wqkv`; `wo`; `feed_forward.w1/w2/w3`; `attention_norm`,
`ffn_norm`; `tok_embeddings`, `output`), written for the tests: like the hub's remote code, it computes attention
itself, causal over the whole row, instead of going through transformers' attention interface."""

import math

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_internlm2 import InternLM2Config


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rotate(x, position_ids, theta):
    half = x.shape[-1] // 2
    freqs = position_ids[..., None].float() / theta ** (torch.arange(half, device=x.device).float() / half)
    cos, sin = freqs.cos()[:, None], freqs.sin()[:, None]
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, config, index):
        super().__init__()
        self.index, self.heads, self.kv_heads = index, config.num_attention_heads, config.num_key_value_heads
        self.dim, self.theta = config.hidden_size // self.heads, config.rope_theta
        self.wqkv = nn.Linear(config.hidden_size, (self.heads + 2 * self.kv_heads) * self.dim, bias=config.bias)
        self.wo = nn.Linear(self.heads * self.dim, config.hidden_size, bias=config.bias)

    def forward(self, x, position_ids, cache):
        batch, length, _ = x.shape
        groups = self.wqkv(x).view(batch, length, self.kv_heads, self.heads // self.kv_heads + 2, self.dim)
        q = groups[..., :-2, :].reshape(batch, length, self.heads, self.dim).transpose(1, 2)
        k, v = groups[..., -2, :].transpose(1, 2), groups[..., -1, :].transpose(1, 2)
        q, k = rotate(q, position_ids, self.theta), rotate(k, position_ids, self.theta)
        if cache is not None:
            k, v = cache.update(k, v, self.index)
        k, v = (t.repeat_interleave(self.heads // self.kv_heads, dim=1) for t in (k, v))
        scores = q @ k.transpose(2, 3) / math.sqrt(self.dim)
        past = k.shape[2] - length
        allowed = torch.ones(length, k.shape[2], dtype=torch.bool, device=x.device).tril(past)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        out = scores.softmax(-1) @ v
        return self.wo(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class Layer(nn.Module):
    def __init__(self, config, index):
        super().__init__()
        self.attention, self.feed_forward = Attention(config, index), FeedForward(config)
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, position_ids, cache):
        x = x + self.attention(self.attention_norm(x), position_ids, cache)
        return x + self.feed_forward(self.ffn_norm(x))


class InternLM2PreTrainedModel(PreTrainedModel):
    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = False


class InternLM2Model(InternLM2PreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids, position_ids, cache):
        x = self.tok_embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, position_ids, cache)
        return self.norm(x)


class InternLM2ForCausalLM(InternLM2PreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.output = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.tok_embeddings

    def get_output_embeddings(self):
        return self.output

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                labels=None, **kwargs):
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        logits = self.output(self.model(input_ids, position_ids, cache))
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)
