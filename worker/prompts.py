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


HELD_OUT = "heldout.txt"  # text a trained model never saw (backends/trained.py writes it)


def held_out_windows(
    model_dir: Path, context: int, length: int, count: int
) -> list[tuple[list[int], list[int]]] | None:
    """`count` (prompt, next `length` tokens) pairs spread evenly over the model's held-out
    text, or None if it ships none. Real text, so fidelity is measured where it matters."""
    path = model_dir / HELD_OUT
    if not path.is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    ids = tokenizer(path.read_text())["input_ids"]
    span = context + length
    if len(ids) < span * count:
        raise ValueError(f"{path} has {len(ids)} tokens, fewer than {count} x {span}")
    spacing = (len(ids) - span) // max(1, count - 1) if count > 1 else 0
    starts = [i * spacing for i in range(count)]
    return [(ids[s : s + context], ids[s + context : s + span]) for s in starts]
