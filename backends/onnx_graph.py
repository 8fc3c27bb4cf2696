"""The two modules we hand to torch's ONNX exporter: our GPT with its KV cache made explicit.

Both run prefill (T new tokens) and decode (1 token) with one graph. They differ in how
the cache crosses the graph boundary:

- `ConcatGraph` (`kv_cache: concat`): past keys/values in, present = past + new out.
  Every step writes a fresh copy of the whole cache (38 MB at context 512 for GPT-2
  small), so decode slows down as the context grows.
- `ScatterGraph` (`kv_cache: in_place`): per-layer buffers of a fixed capacity in, the
  same buffers out, updated by ONNX's TensorScatter (opset 24) at `write_index`. When
  the caller binds each present output to its past input's memory, ONNX Runtime writes
  the new token's keys and values in place and copies nothing. Attention then reads
  the whole buffer under a mask (positions past the written ones are hidden), so its
  cost follows the capacity: size the buffers to the sequence, not to block_size.
"""

from __future__ import annotations

import torch
from onnxscript import values

from backends.nanogpt_model import GPT, ConcatCache

_OPSET24 = values.Opset("", 24)  # onnxscript has no opset24 module yet; the schema is onnx's


@torch.library.custom_op("whistle_stop::kv_write", mutates_args=())
def kv_write(cache: torch.Tensor, update: torch.Tensor, write_index: torch.Tensor) -> torch.Tensor:
    """cache (B, nh, capacity, hs) with `update` (B, nh, T, hs) written at write_index[0]."""
    out = cache.clone()
    start = int(write_index[0])
    out[:, :, start : start + update.size(2)] = update
    return out


@kv_write.register_fake
def _kv_write_shape(cache, update, write_index):
    return torch.empty_like(cache)


def kv_write_onnx(cache, update, write_index):
    """The exporter's translation: one TensorScatter, which may update `cache` in place."""
    return _OPSET24.TensorScatter(cache, update, write_index, axis=2)


TRANSLATIONS = {torch.ops.whistle_stop.kv_write.default: kv_write_onnx}


class ScatterCache:
    """Fixed-capacity per-layer buffers, written at `write_index` (a (1,) int64 tensor)."""

    exporting = True

    def __init__(self, past_k: list[torch.Tensor], past_v: list[torch.Tensor], write_index):
        self.past_k, self.past_v, self.length = past_k, past_v, write_index
        self.present_k: list[torch.Tensor] = []
        self.present_v: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        k = kv_write(self.past_k[layer], k, self.length)  # (B, nh, capacity, hs)
        v = kv_write(self.past_v[layer], v, self.length)
        self.present_k.append(k)
        self.present_v.append(v)
        return k, v

    def mask(self, new: int, capacity: int) -> torch.Tensor:
        """(new, capacity) bool: token i sits at write_index + i and sees keys up to it;
        slots not yet written (beyond) stay hidden."""
        query_pos = torch.arange(new).unsqueeze(1) + self.length
        return torch.arange(capacity).unsqueeze(0) <= query_pos

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


class ScatterGraph(ConcatGraph):
    """(input_ids, write_index, [past_k.0, ..., past_v.0, ...]) -> (logits, present_k.0, ...,
    present_v.0, ...); each cache tensor is (1, nh, capacity, hs), one per layer so each
    can be bound in place."""

    def forward(self, input_ids, write_index, past):
        layers = len(past) // 2
        cache = ScatterCache(past[:layers], past[layers:], write_index)
        hidden = self.gpt.last_hidden(input_ids, cache)
        logits = _logits(self.gpt, hidden, self.head, self.head_form)
        return logits, *cache.present_k, *cache.present_v


def sample_inputs(gpt: GPT, in_place: bool):
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
    past = [torch.zeros(1, config.n_head, 10, hs) for _ in range(2 * layers)]
    capacity = torch.export.Dim("capacity", min=2, max=config.block_size)
    cache_names = [f"{kind}.{layer}" for kind in ("k", "v") for layer in range(layers)]
    names = (
        ["input_ids", "write_index", *(f"past_{n}" for n in cache_names)],
        ["logits", *(f"present_{n}" for n in cache_names)],
    )
    shapes = {"input_ids": {1: new}, "write_index": None, "past": [{2: capacity}] * len(past)}
    return (ids, torch.tensor([3]), past), names, shapes
