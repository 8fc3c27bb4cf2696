"""Prompts: token ids drawn with the sweep's seed, or a text run through the model's tokenizer.

With a text prompt, tokenizing the text and detokenizing the generated tokens are
timed in every repeat, since a user of the model pays for both.
"""

from __future__ import annotations

import random
import time
from pathlib import Path


def random_prompt(seed: int, context: int, vocab_size: int) -> list[int]:
    """Token ids drawn with the sweep's seed; a longer context extends a shorter one."""
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(context)]


class TextPrompt:
    """A text whose tokens (repeated as needed) fill exactly `context` positions."""

    def __init__(self, model_dir: Path, text: str, context: int, kind: str = "fast") -> None:
        if kind == "slow":
            from whistle_stop.worker.slow_tokenizer import SlowBPETokenizer

            self.tokenizer = SlowBPETokenizer(model_dir)
        else:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        self.text, self.context = text, context
        ids = self.tokenizer(text)["input_ids"]
        if not ids:
            raise ValueError("the prompt text has no tokens")
        self.ids = (ids * (context // len(ids) + 1))[:context]

    def time_encode(self) -> float:
        started = time.perf_counter()
        self.tokenizer(self.text)
        return time.perf_counter() - started

    def time_decode(self, tokens: list[int]) -> float:
        started = time.perf_counter()
        self.tokenizer.decode(tokens)
        return time.perf_counter() - started
