"""The two modules we hand to torch's ONNX exporter: our GPT with its KV cache made explicit.

Both run prefill (T new tokens) and decode (1 token) with one graph. They differ in how
the cache crosses the graph boundary:

- `ConcatGraph` (`kv_cache: concat`): past keys/values in, present = past + new out.
  Every step writes a fresh copy of the whole cache (38 MB at context 512 for GPT-2
  small), so decode slows down as the context grows.
- `InPlaceGraph` (`kv_cache: in_place`): per-layer buffers of a fixed capacity in, the
  same buffers out. Each layer's attention is ONNX Runtime's com.microsoft
  GroupQueryAttention (with as many key/value heads as query heads, it is plain
  multi-head attention), which takes c_attn's packed q|k|v, writes the new keys and
  values into the buffers and attends over the tokens written so far only. When the
  caller binds each present output to its past input's memory, the kernel sees one
  shared buffer and copies nothing, and the cost of a step follows the context, not
  the capacity. (ONNX's own Attention op, fed by TensorScatter, did neither: it
  read the whole buffer under a mask, so decode at context 512 cost 1.35x that at 32.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from onnxscript import values
from torch.nn import functional as F

from whistle_stop.backends.nanogpt_model import GPT, ConcatCache

_MICROSOFT = values.Opset("com.microsoft", 1)


def _register_gqa_schema() -> None:
    """onnxscript builds a node only from a schema, and onnx knows none of ONNX Runtime's
    com.microsoft ops: declare the slice of GroupQueryAttention's that we use (inputs up to
    the quantized cache's scales; the ones between them stay absent)."""
    from onnx import defs

    if defs.has("GroupQueryAttention", "com.microsoft"):
        return
    param, optional = defs.OpSchema.FormalParameter, defs.OpSchema.FormalParameterOption.Optional
    unused = ["cos_cache", "sin_cache", "position_ids", "attention_bias", "head_sink"]
    inputs = [
        param("query", "T"),
        param("key", "T", param_option=optional),
        param("value", "T", param_option=optional),
        param("past_key", "T_CACHE"),
        param("past_value", "T_CACHE"),
        param("seqlens_k", "M"),
        param("total_sequence_length", "M"),
        *(param(name, "T", param_option=optional) for name in unused),
        param("k_scale", "T", param_option=optional),
        param("v_scale", "T", param_option=optional),
    ]
    ints, text = defs.OpSchema.AttrType.INT, defs.OpSchema.AttrType.STRING
    attribute = defs.OpSchema.Attribute
    schema = defs.OpSchema(
        "GroupQueryAttention",
        "com.microsoft",
        1,
        inputs=inputs,
        outputs=[
            param("output", "T"),
            param("present_key", "T_CACHE"),
            param("present_value", "T_CACHE"),
        ],
        type_constraints=[
            ("T", ["tensor(float)"], ""),
            ("M", ["tensor(int32)"], ""),
            ("T_CACHE", ["tensor(float)", "tensor(int8)"], ""),
        ],
        attributes=[
            attribute("num_heads", ints),
            attribute("kv_num_heads", ints),
            attribute("k_quant_type", text),
            attribute("v_quant_type", text),
            attribute("kv_cache_bit_width", ints),
        ],
    )
    defs.register_schema(schema)


@torch.library.custom_op("whistle_stop::gqa", mutates_args=())
def gqa(
    qkv: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_length: torch.Tensor,
    num_heads: int,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What GroupQueryAttention computes, in PyTorch (the exporter needs only the shapes;
    this makes the module runnable, and testable, before export).

    qkv (B, T, 3C) packed as c_attn emits it; past_k/v (B, nh, capacity, hs); seqlens_k (B,)
    int32 = tokens cached after this step - 1; total_length () int32, the same + 1;
    k_scale/v_scale (C,): an int8 cache's step per channel (stored = round(x / scale)).
    -> y (B, T, C), and present_k/v: the buffers with the T new keys/values written.
    """
    B, T, C3 = qkv.shape
    q, k, v = (t.view(B, T, num_heads, -1).transpose(1, 2) for t in qkv.split(C3 // 3, dim=2))
    total = int(seqlens_k[0]) + 1
    present_k, present_v = past_k.clone(), past_v.clone()
    present_k[:, :, total - T : total] = _store(k, k_scale, past_k)
    present_v[:, :, total - T : total] = _store(v, v_scale, past_v)
    keys = _load(present_k[:, :, :total], k_scale, q)
    values = _load(present_v[:, :, :total], v_scale, q)
    mask = torch.arange(total).unsqueeze(0) <= torch.arange(T).unsqueeze(1) + (total - T)
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    return y.transpose(1, 2).reshape(B, T, C3 // 3), present_k, present_v


def _store(x: torch.Tensor, scale: torch.Tensor | None, cache: torch.Tensor) -> torch.Tensor:
    if scale is None:
        return x
    step = scale.view(1, x.size(1), 1, x.size(3))  # per channel: (head, dim)
    return torch.clamp(torch.round(x / step), -128, 127).to(cache.dtype)


def _load(cached: torch.Tensor, scale: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if scale is None:
        return cached
    return cached.to(like.dtype) * scale.view(1, cached.size(1), 1, cached.size(3))


@gqa.register_fake
def _gqa_shape(qkv, past_k, past_v, seqlens_k, total_length, num_heads, k_scale=None, v_scale=None):
    B, T, C3 = qkv.shape
    return qkv.new_empty(B, T, C3 // 3), torch.empty_like(past_k), torch.empty_like(past_v)


def gqa_onnx(qkv, past_k, past_v, seqlens_k, total_length, num_heads, k_scale=None, v_scale=None):
    """The exporter's translation: one GroupQueryAttention node; key and value are absent
    because the query input is packed q|k|v. With scales, the cache is int8 per channel."""
    _register_gqa_schema()
    heads = {"num_heads": num_heads, "kv_num_heads": num_heads}
    if k_scale is None:
        return _MICROSOFT.GroupQueryAttention(
            qkv, None, None, past_k, past_v, seqlens_k, total_length, **heads
        )
    return _MICROSOFT.GroupQueryAttention(
        qkv,
        None,
        None,
        past_k,
        past_v,
        seqlens_k,
        total_length,
        None,
        None,
        None,
        None,
        None,
        k_scale,
        v_scale,
        k_quant_type="PER_CHANNEL",
        v_quant_type="PER_CHANNEL",
        kv_cache_bit_width=8,
        **heads,
    )


TRANSLATIONS = {torch.ops.whistle_stop.gqa.default: gqa_onnx}


# keys' and values' steps per layer and channel: (n_layer, C) tensors, or per-layer (C,) rows
KVScales = tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]


class BufferCache:
    """Fixed-capacity per-layer buffers, written at `write_index` (a (1,) int64 tensor).

    It owns attention too (`attend`), because one kernel writes the cache and reads it."""

    def __init__(
        self,
        past_k: list[torch.Tensor],
        past_v: list[torch.Tensor],
        write_index,
        scales: KVScales | None = None,
    ):
        self.past_k, self.past_v, self.length = past_k, past_v, write_index
        self.scales = scales  # an int8 cache's steps: scales[0][layer] is that layer's keys'
        self.present_k: list[torch.Tensor] = []
        self.present_v: list[torch.Tensor] = []

    def attend(self, layer: int, qkv: torch.Tensor, num_heads: int) -> torch.Tensor:
        total = (self.length + qkv.size(1)).to(torch.int32)  # (1,): tokens cached after this
        scales = () if self.scales is None else (self.scales[0][layer], self.scales[1][layer])
        y, k, v = gqa(
            qkv, self.past_k[layer], self.past_v[layer], total - 1, total[0], num_heads, *scales
        )
        self.present_k.append(k)
        self.present_v.append(v)
        return y

    def advance(self, tokens: int) -> None:
        pass  # the caller moves write_index between calls


def _logits(gpt: GPT, hidden: torch.Tensor, head: torch.Tensor, form: str) -> torch.Tensor:
    if form == "gemm":  # a Gemm on the tied weight: the fastest float head
        return torch.nn.functional.linear(hidden[:, 0, :], gpt.lm_head.weight)
    return (hidden @ head)[:, 0, :]  # a MatMul on its own constant: one the quantizer can take


class ConcatGraph(torch.nn.Module):
    """(input_ids, past_k, past_v) -> (logits, present_k, present_v); past/present are
    (n_layer, 1, nh, T_past, hs), present one token longer per new token."""

    def __init__(self, gpt: GPT, head: str):
        super().__init__()
        self.gpt, self.head_form = gpt, head
        # For a MatMul, the head gets its own (n_embd, vocab) constant: hidden @ wte.T
        # would export a Transpose of the 154 MB tied weight that runs on every step.
        self.register_buffer("head", gpt.lm_head.weight.detach().t().contiguous())

    def forward(self, input_ids, past_k, past_v):
        cache = ConcatCache(past_k, past_v)
        hidden = self.gpt.last_hidden(input_ids, cache)  # (1, 1, n_embd)
        logits = _logits(self.gpt, hidden, self.head, self.head_form)
        return logits, torch.stack(cache.present_k), torch.stack(cache.present_v)


class InPlaceGraph(ConcatGraph):
    """(input_ids, write_index, [past_k.0, ..., past_v.0, ...]) -> (logits, present_k.0, ...,
    present_v.0, ...); each cache tensor is (1, nh, capacity, hs), one per layer so each
    can be bound in place. With `kv_scales` ((n_layer, C) keys', values') the buffers are
    int8 and those scales, constants of the graph, turn them back into floats."""

    def __init__(self, gpt: GPT, head: str, kv_scales: KVScales | None = None):
        super().__init__(gpt, head)
        self.int8_cache = kv_scales is not None
        if kv_scales is not None:  # a constant per layer: a Gather from one would run each step
            for layer in range(gpt.config.n_layer):
                self.register_buffer(f"k_scale_{layer}", kv_scales[0][layer].clone())
                self.register_buffer(f"v_scale_{layer}", kv_scales[1][layer].clone())

    def forward(self, input_ids, write_index, past):
        layers = len(past) // 2
        scales = None
        if self.int8_cache:
            scales = tuple(
                [getattr(self, f"{kind}_scale_{i}") for i in range(layers)] for kind in ("k", "v")
            )
        cache = BufferCache(past[:layers], past[layers:], write_index, scales)
        hidden = self.gpt.last_hidden(input_ids, cache)
        logits = _logits(self.gpt, hidden, self.head, self.head_form)
        return logits, *cache.present_k, *cache.present_v


def kv_scales(gpt: GPT, prompts: list[list[int]]) -> KVScales:
    """Per layer and channel, the step of an int8 cache: the largest |key| and |value| the
    float model produces on `prompts`, over 127. Scales are constants of the graph, so a
    value past the calibrated range is clipped: prompts that span the model's positions
    see what a long generation will."""
    n_embd = gpt.config.n_embd
    peaks: dict[int, torch.Tensor] = {}  # layer -> (2, C): keys', values' largest |x|

    def record(layer: int):
        def hook(_module, _inputs, qkv):
            _q, k, v = qkv.split(n_embd, dim=2)
            peak = torch.stack([k.abs().amax(dim=(0, 1)), v.abs().amax(dim=(0, 1))])
            peaks[layer] = torch.maximum(peaks[layer], peak) if layer in peaks else peak

        return hook

    layers = gpt.transformer.h
    handles = [block.attn.c_attn.register_forward_hook(record(i)) for i, block in enumerate(layers)]
    try:
        with torch.no_grad():
            for prompt in prompts:
                gpt.last_hidden(torch.tensor([prompt], dtype=torch.long))
    finally:
        for handle in handles:
            handle.remove()
    steps = torch.stack([peaks[i] for i in range(len(layers))]) / 127  # (n_layer, 2, C)
    steps = steps.clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero channel too
    return steps[:, 0].contiguous(), steps[:, 1].contiguous()


def sample_inputs(gpt: GPT, in_place: bool, cache_dtype: torch.dtype = torch.float32):
    """Example inputs for the exporter (4 new tokens after 3 cached ones), the names of
    inputs and outputs, and which axes are dynamic."""
    config = gpt.config
    hs, layers = config.n_embd // config.n_head, config.n_layer
    ids = torch.zeros(1, 4, dtype=torch.long)
    new = torch.export.Dim("new_tokens", min=1, max=config.block_size)
    if not in_place:
        past = torch.zeros(layers, 1, config.n_head, 3, hs)
        cached = torch.export.Dim("past", min=0, max=config.block_size)
        names = (["input_ids", "past_k", "past_v"], ["logits", "present_k", "present_v"])
        shapes = {"input_ids": {1: new}, "past_k": {3: cached}, "past_v": {3: cached}}
        return (ids, past, past.clone()), names, shapes
    past = [torch.zeros(1, config.n_head, 10, hs, dtype=cache_dtype) for _ in range(2 * layers)]
    capacity = torch.export.Dim("capacity", min=2, max=config.block_size)
    cache_names = [f"{kind}.{layer}" for kind in ("k", "v") for layer in range(layers)]
    names = (
        ["input_ids", "write_index", *(f"past_{n}" for n in cache_names)],
        ["logits", *(f"present_{n}" for n in cache_names)],
    )
    shapes = {"input_ids": {1: new}, "write_index": None, "past": [{2: capacity}] * len(past)}
    return (ids, torch.tensor([3]), past), names, shapes
