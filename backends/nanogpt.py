"""`nanogpt`: our nanoGPT-style module (backends/nanogpt_model.py) on the same weights.

`kv_cache: true` (the default) prefills once, then feeds one token per step into a
preallocated cache. `kv_cache: false` is nanoGPT's original generate(): every step
re-runs the whole sequence so far, so step t costs O(t) and long generations slow down.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from whistle_stop.backends.base import DTYPE_BYTES, LoadReport, StepwiseBackend
from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.nanogpt_model import GPT, GPTConfig, PreallocatedCache
from whistle_stop.backends.options import NanoGPTOptions


def load_gpt(model_dir: Path, dtype: str = "float32") -> GPT:
    """Our GPT with the weights of a transformers GPT-2 directory (safetensors only)."""
    config = GPTConfig.from_hf(ModelConfig.from_dir(model_dir))
    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        state.update(load_file(shard))
    return GPT.from_hf_state_dict(config, state).to(getattr(torch, dtype))


class NanoGPTBackend(StepwiseBackend):
    def __init__(
        self, model_dir: Path, options: NanoGPTOptions, threads: int, cache_dir: Path
    ) -> None:
        self.dtype = getattr(torch, options.dtype)
        self.model = load_gpt(model_dir, options.dtype)
        self.kv_cache = options.kv_cache
        width = DTYPE_BYTES[options.dtype]
        self.load_report = LoadReport(matmul_bytes=width, lm_head_bytes=width)
        self.cache: PreallocatedCache | None = None
        self.sequence: list[int] = []

    def reserve(self, total_tokens: int) -> None:
        """Size the cache for the longest sequence yet, once (in the warm-up), instead of
        allocating and zeroing one inside every timed prefill."""
        if self.kv_cache and (self.cache is None or self.cache.k.size(3) < total_tokens):
            self.cache = PreallocatedCache(self.model.config, 1, self.dtype, total_tokens)

    @torch.inference_mode()
    def prefill(self, prompt: list[int]) -> torch.Tensor:
        if self.kv_cache:
            self.reserve(len(prompt))  # no-op when generate() reserved already
            self.cache.length = 0  # positions are overwritten from the start, never copied
            return self.model(torch.tensor([prompt]), self.cache)[0]
        self.sequence = list(prompt)
        return self.model(torch.tensor([self.sequence]))[0]

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        if self.kv_cache:
            return self.model(torch.tensor([[token]]), self.cache)[0]
        self.sequence.append(token)  # nanoGPT: the whole context again, every step
        return self.model(torch.tensor([self.sequence]))[0]
