"""Derived figures: one formula each, imported wherever the figure is computed or shown."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


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


def ratio_interval(
    ratios: Sequence[float], confidence: float = 0.95, floor: float | None = None
) -> tuple[float, float] | None:
    """The `confidence` interval of a typical ratio, from independent ratios (one a round):
    a t interval on their logarithms, mapped back.

    Why logs: a ratio's noise multiplies (1.1x and 1/1.1x are the same distance from 1),
    so its logarithm is the scale on which noise is symmetric and a mean makes sense. Why
    t and not a bootstrap: a sweep has 2 to 10 rounds, and a bootstrap over three values
    cannot reach past their extremes (its intervals come out too narrow), while t widens
    with fewer rounds as it should (x4.3 the standard error at three rounds, x12.7 at two).
    `floor`: a standard deviation of the log ratios that the cell's own may not go below
    (`pooled_log_sd`, the sweep's): three rounds that agree to 0.3% by luck on a host whose
    ratios scatter 3.7% would otherwise give an interval of ±0.8%, and a verdict.
    None with fewer than two ratios: one round says nothing about its own noise.
    """
    logs = [math.log(r) for r in ratios if r and r > 0 and math.isfinite(r)]
    if len(logs) < 2:
        return None
    from scipy.stats import t  # only when an interval is asked for: not for `farm --help`

    mean = sum(logs) / len(logs)
    sd = max(math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)), floor or 0.0)
    half = t.ppf(0.5 + confidence / 2, len(logs) - 1) * sd / math.sqrt(len(logs))
    return math.exp(mean - half), math.exp(mean + half)


def pooled_log_sd(groups: Iterable[Sequence[float]]) -> float | None:
    """The pooled within-group standard deviation of log ratios: every group (a cell's
    within-round ratios) of two or more, its squared deviations from its own mean summed
    over all groups and divided by their degrees of freedom. A sweep's noise on one
    within-round ratio, which a host sets more than a path does; None with no group of
    two or more."""
    squares, freedom = 0.0, 0
    for group in groups:
        logs = [math.log(r) for r in group if r and r > 0 and math.isfinite(r)]
        if len(logs) < 2:
            continue
        mean = sum(logs) / len(logs)
        squares += sum((x - mean) ** 2 for x in logs)
        freedom += len(logs) - 1
    return math.sqrt(squares / freedom) if freedom else None


def ratio_between(
    before: Sequence[float], after: Sequence[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """The `confidence` interval of after / before, from independent values of each (one
    a round): Welch's t interval on the difference of their mean logarithms, mapped back.

    Logs for the reason `ratio_interval` gives; Welch because two sweeps need not be
    equally noisy (a quiet night against a busy afternoon). None unless each side has two
    values or more: one run says nothing about how much the next would differ.
    """
    xs = [math.log(v) for v in before if v and v > 0 and math.isfinite(v)]
    ys = [math.log(v) for v in after if v and v > 0 and math.isfinite(v)]
    if len(xs) < 2 or len(ys) < 2:
        return None
    from scipy.stats import t

    difference = sum(ys) / len(ys) - sum(xs) / len(xs)
    vx, vy = (_variance(v) / len(v) for v in (xs, ys))
    if vx + vy == 0:  # identical values on both sides: no noise to widen the ratio
        return math.exp(difference), math.exp(difference)
    freedom = (vx + vy) ** 2 / (vx**2 / (len(xs) - 1) + vy**2 / (len(ys) - 1))
    half = t.ppf(0.5 + confidence / 2, freedom) * math.sqrt(vx + vy)
    return math.exp(difference - half), math.exp(difference + half)


def _variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def relative_half_width(low: float, high: float) -> float:
    """An interval's half-width relative to its centre on the log scale: 0.04 for ±4%."""
    return math.sqrt(high / low) - 1


# What a comparison concludes from a ratio's 95% interval (new over old, higher faster)
FASTER, SLOWER, SAME, UNKNOWN = "faster", "slower", "same", "unknown"


def verdict(interval: tuple[float, float] | None, margin: float) -> str:
    """faster or slower when the interval lies wholly above or below 1 by more than half
    the margin (a difference shown, and big enough to matter); same when it lies wholly
    inside ±margin; unknown otherwise, or with no interval. The half margin keeps an A/A
    pair from being called different on a lucky interval that only just excludes 1
    (farm bench calibration measures both error rates)."""
    if interval is None:
        return UNKNOWN
    low, high = interval
    if low > 1 + margin / 2:
        return FASTER
    if high < 1 - margin / 2:
        return SLOWER
    if low >= 1 - margin and high <= 1 + margin:
        return SAME
    return UNKNOWN


def proportion_difference(
    before: tuple[float, float, float], after: tuple[float, float, float]
) -> tuple[float, float]:
    """The 95% interval of after - before for two proportions, each given as (value, low,
    high) with its own 95% Wilson interval: Newcombe's hybrid score method (his method
    10), which stays inside [-1, 1] and behaves at 0 and 1 where a normal interval fails."""
    (p1, l1, u1), (p2, l2, u2) = before, after
    difference = p2 - p1
    low = difference - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    high = difference + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    return low, high


def mean_ratio(
    before: tuple[float, float, float], after: tuple[float, float, float], z: float = 1.959964
) -> tuple[float, float] | None:
    """The 95% interval of after / before for two means, each given as (mean, low, high)
    with its own normal 95% interval: the delta method on their logs (the standard error of
    log m is se(m) / m), mapped back. None where a mean is not positive."""
    (m1, l1, h1), (m2, l2, h2) = before, after
    if m1 <= 0 or m2 <= 0:
        return None
    se1, se2 = (h1 - l1) / (2 * z * m1), (h2 - l2) / (2 * z * m2)
    centre, half = math.log(m2 / m1), z * math.hypot(se1, se2)
    return math.exp(centre - half), math.exp(centre + half)
