"""
A whole GPT-2 for inference, in the spirit of karpathy/nanoGPT's model.py, read top to bottom:
LayerNorm -> CausalSelfAttention -> MLP -> Block -> GPTConfig -> GPT.

What differs from nanoGPT, and why:
- inference only: no dropout, no loss, no optimizer;
- a KV cache. nanoGPT's generate() re-runs the whole context for every new token,
  so step t costs O(t); with a cache a step feeds one token and reads the keys and
  values of the earlier ones. Caches share one interface (`length`, `update`,
  `advance`): `PreallocatedCache` writes into buffers allocated once (no per-step
  copies, for eager PyTorch) and `ConcatCache` returns past+new as fresh tensors (the
  functional form an ONNX graph with past/present inputs and outputs needs). A cache
  may also own attention (`attend`): the in-place form for ONNX, `BufferCache` in
  backends/onnx_graph.py, hands both to one ONNX Runtime kernel;
- greedy decoding lives in backends/base.py, not here.
Parameter names follow the GPT-2 checkpoint keys (c_attn, c_proj, wte, ln_f), so
loading a transformers checkpoint is a copy by name (with Conv1D weights transposed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from whistle_stop.backends.config import ModelConfig


class PreallocatedCache:
    """Keys and values of every layer in buffers sized for the longest sequence.

    Shapes: k, v are (n_layer, B, nh, block_size, hs); `length` tokens are valid.
    """

    def __init__(self, config: GPTConfig, batch: int, dtype: torch.dtype, max_len: int):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, max_len, hs)
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.length = 0  # tokens already cached
        self.exporting = False

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        start, end = self.length, self.length + k.size(2)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # views, not copies

    def advance(self, tokens: int) -> None:
        self.length += tokens


class ConcatCache:
    """Past keys/values in, present (past + new) out: the form an exported graph needs.

    past_k, past_v: (n_layer, B, nh, T_past, hs); `present_k/v` collect one per layer.
    """

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor):
        self.past_k, self.past_v = past_k, past_v
        self.length = past_k.size(3)
        # one graph must serve prefill (T new tokens, no past) and decode (1 token, past):
        # always the explicit mask, never a Python branch on a shape
        self.exporting = True
        self.present_k: list[torch.Tensor] = []
        self.present_v: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        k = torch.cat([self.past_k[layer], k], dim=2)
        v = torch.cat([self.past_v[layer], v], dim=2)
        self.present_k.append(k)
        self.present_v.append(v)
        return k, v

    def mask(self, new: int, total: int) -> torch.Tensor:
        return causal_mask(new, total)

    def advance(self, tokens: int) -> None:
        self.length += tokens


def causal_mask(new: int, total: int) -> torch.Tensor:
    """(new, total) bool: new token i sits at position total - new + i and sees keys up to it."""
    query_pos = torch.arange(new).unsqueeze(1) + (total - new)
    return torch.arange(total).unsqueeze(0) <= query_pos


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # key, query, value projections for all heads, but in a batch
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        # output projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x: torch.Tensor, layer: int, cache=None) -> torch.Tensor:
        B, T, C = x.size()  # batch size, new tokens, embedding dimensionality (n_embd)
        if hasattr(cache, "attend"):  # a fused kernel that owns both the cache and attention
            return self.c_proj(cache.attend(layer, self.c_attn(x), self.n_head))
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        if cache is not None and cache.exporting:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=cache.mask(T, k.size(2)))
        elif T == 1:
            # one new token may attend to every cached one: no mask at all
            y = F.scaled_dot_product_attention(q, k, v)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, k.size(2)))
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, layer: int, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer, cache)
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 1024  # maximum positions (GPT-2's n_positions)
    vocab_size: int = 50257  # GPT-2's BPE vocabulary; checkpoints are not padded to 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_hf(cls, config: ModelConfig) -> GPTConfig:
        """From a transformers GPT-2 directory's config."""
        return cls(
            block_size=config.n_positions,
            vocab_size=config.vocab_size,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_embd=config.n_embd,
            layer_norm_epsilon=config.raw.get("layer_norm_epsilon", 1e-5),
        )


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2

    def forward(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        """idx (B, T) new token ids -> logits (B, vocab) for the next token after them."""
        return self.lm_head(self.last_hidden(idx, cache))[:, 0, :]

    def last_hidden(self, idx: torch.Tensor, cache=None) -> torch.Tensor:
        """idx (B, T) -> the final hidden state of the last position, (B, 1, n_embd)."""
        b, t = idx.size()
        past = cache.length if cache is not None else 0  # an int, or a (1,) tensor in a graph
        if isinstance(past, int):
            assert past + t <= self.config.block_size, f"{past + t} > {self.config.block_size}"
        pos = torch.arange(t, dtype=torch.long) + past  # shape (t)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (b, t, n_embd)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, layer, cache)
        if cache is not None:
            cache.advance(t)
        # inference-time mini-optimization: only forward the lm_head on the very last position
        return self.transformer.ln_f(x[:, [-1], :])  # (b, 1, n_embd)

    @classmethod
    def from_hf_state_dict(cls, config: GPTConfig, state: dict[str, torch.Tensor]) -> GPT:
        """Copy a transformers GPT2LMHeadModel state dict in by name.

        The OpenAI checkpoints use a "Conv1D" module (weight (in, out)), we use
        nn.Linear (weight (out, in)), so those four weights are transposed.
        """
        model = cls(config)
        transposed = ("c_attn.weight", "attn.c_proj.weight", "c_fc.weight", "mlp.c_proj.weight")
        own = model.state_dict()
        expected = {k for k in own if k != "lm_head.weight"}  # tied to wte
        given = {k for k in state if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        given.discard("lm_head.weight")
        if given != expected:
            missing, unexpected = sorted(expected - given)[:5], sorted(given - expected)[:5]
            raise ValueError(f"checkpoint keys differ: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for key in expected:
                tensor = state[key].t() if key.endswith(transposed) else state[key]
                assert tensor.shape == own[key].shape, f"{key}: {tensor.shape} != {own[key].shape}"
                own[key].copy_(tensor)
        return model.eval()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
