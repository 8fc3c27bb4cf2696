"""Derived figures: one formula each, imported wherever the figure is computed or shown."""

from __future__ import annotations

import math
from collections.abc import Sequence


def decode_tokens_per_s(steps_s: Sequence[float]) -> float:
    """Tokens after the first over the sum of their intervals; NaN with no decode step.

    Never (total time - prefill): the intervals come from per-token timestamps.
    """
    total = sum(steps_s)
    return len(steps_s) / total if steps_s and total > 0 else math.nan


def roofline_tokens_per_s(read_bytes_per_s: float, weight_bytes_per_token: float) -> float:
    """The memory-bandwidth bound on decode: every weight is read once per token."""
    return read_bytes_per_s / weight_bytes_per_token


def roofline_fraction(
    tokens_per_s: float, read_bytes_per_s: float, weight_bytes_per_token: float
) -> float:
    """How much of the bandwidth bound a decode speed reaches (can pass 1 from cache)."""
    return tokens_per_s / roofline_tokens_per_s(read_bytes_per_s, weight_bytes_per_token)
