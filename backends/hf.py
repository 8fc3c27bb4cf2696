"""`hf`: transformers eager `GPT2LMHeadModel.generate`, greedy, KV cache on.

This is what a user gets without any tuning, so it is the baseline every other
backend is compared against.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from whistle_stop.backends.base import DTYPE_BYTES, Generation, LoadReport, StepwiseBackend
from whistle_stop.backends.options import HFOptions
from whistle_stop.backends.weights import load_hf_model


class TokenClock:
    """A generate() streamer that only records when each new token arrived.

    transformers calls `put()` once with the prompt, then once per new token.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if self._seen_prompt:
            self.times.append(time.perf_counter())
        self._seen_prompt = True

    def end(self) -> None:
        pass


class HFBackend(StepwiseBackend):
    """Timed generation goes through `generate()`, as users run it; prefill/step (a
    plain forward with the model's own cache) serve teacher-forced fidelity checks."""

    def __init__(self, model_dir: Path, options: HFOptions, threads: int, cache_dir: Path) -> None:
        self.model = load_hf_model(model_dir, options.dtype)
        width = DTYPE_BYTES[options.dtype]
        self.load_report = LoadReport(matmul_bytes=width, lm_head_bytes=width, kv_bytes=width)

    @torch.inference_mode()
    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        input_ids = torch.tensor([prompt], dtype=torch.long)
        clock = TokenClock()
        output = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            # No EOS: exactly `new_tokens` tokens, and plain argmax at every step
            # (min_new_tokens alone would mask EOS and change the greedy choice).
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
            streamer=clock,
        )
        return Generation(tokens=output[0, len(prompt) :].tolist(), token_times=clock.times)

    @torch.inference_mode()
    def prefill(self, prompt: list[int]) -> torch.Tensor:
        output = self.model(torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        self.past = output.cache
        return output.logits[0, -1]

    @torch.inference_mode()
    def step(self, token: int) -> torch.Tensor:
        output = self.model(
            torch.tensor([[token]]), cache=self.past, use_cache=True, logits_to_keep=1
        )
        self.past = output.cache
        return output.logits[0, -1]
