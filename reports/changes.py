"""Change points in a series of measurements, each with its size and its confidence.

Binary segmentation with a permutation test, on the logarithms of the points (a step in
speed multiplies, as a ratio's noise does): the split with the largest two-sample t
statistic is a change if shuffling the points gives a statistic that large less often
than `alpha`; then each side is searched again. Why this and not a library: `ruptures`
(PELT, binary segmentation) needs a penalty chosen by hand and says nothing about
significance, and Otava (Hunter), whose E-divisive means with a permutation test is the
model here, is an application with its own storage rather than a library to call. The
permutation test assumes only that, without a change, the points are exchangeable: no
distribution, which ten points could not show anyway. Its p-value is the confidence a
change is reported with; its size is the ratio of the segments' typical values, with
Welch's interval (contract/figures.py's `ratio_between`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from whistle_stop.contract.figures import ratio_between


@dataclass(frozen=True)
class ChangePoint:
    index: int  # the first point after the change (0-based)
    ratio: float  # the typical value after over before (geometric means of the segments)
    low: float | None  # its 95% interval (None when a segment has a single point)
    high: float | None
    p_value: float  # of the permutation test that found it


def change_points(
    values: list[float], alpha: float = 0.05, min_size: int = 2, permutations: int = 1999
) -> list[ChangePoint]:
    """The change points of `values` (positive figures in time order), earliest first.
    A segment shorter than `min_size` points is never split off: two points are the
    fewest that say anything about their own spread."""
    logs = np.log(np.asarray(values, dtype=float))
    rng = np.random.default_rng(0)  # the same series always gives the same answer
    found: dict[int, float] = {}
    _segment(logs, 0, alpha, min_size, permutations, rng, found)
    bounds = [0, *sorted(found), len(values)]
    changes = []
    for start, index, end in zip(bounds, bounds[1:], bounds[2:], strict=False):
        before, after = values[start:index], values[index:end]
        ratio = math.exp(np.mean(np.log(after)) - np.mean(np.log(before)))
        low, high = ratio_between(before, after) or (None, None)
        changes.append(ChangePoint(index, ratio, low, high, found[index]))
    return changes


def _segment(logs, offset: int, alpha, min_size, permutations, rng, found) -> None:
    if len(logs) < 2 * min_size:
        return
    statistic = _split_statistics(logs[None, :], min_size)[0]
    split = int(np.argmax(statistic))
    shuffled = np.array([rng.permutation(logs) for _ in range(permutations)])
    extremes = _split_statistics(shuffled, min_size).max(axis=1)
    p_value = (1 + int(np.sum(extremes >= statistic[split]))) / (1 + permutations)
    if p_value >= alpha:
        return
    index = split + min_size
    found[offset + index] = p_value
    _segment(logs[:index], offset, alpha, min_size, permutations, rng, found)
    _segment(logs[index:], offset + index, alpha, min_size, permutations, rng, found)


def _split_statistics(series: np.ndarray, min_size: int) -> np.ndarray:
    """|t| of every split of every row (pooled-variance two-sample t), the splits leaving
    at least `min_size` points on each side: shape (rows, splits)."""
    n = series.shape[1]
    left = np.arange(min_size, n - min_size + 1)
    sums, squares = np.cumsum(series, axis=1), np.cumsum(series**2, axis=1)
    total, total_squares = sums[:, -1:], squares[:, -1:]
    left_sum, left_squares = sums[:, left - 1], squares[:, left - 1]
    right = n - left
    mean_left, mean_right = left_sum / left, (total - left_sum) / right
    within = (left_squares - left * mean_left**2) + (
        total_squares - left_squares - right * mean_right**2
    )
    spread = np.sqrt(np.maximum(within, 0) / (n - 2) * (1 / left + 1 / right))
    difference = np.abs(mean_right - mean_left)
    with np.errstate(divide="ignore", invalid="ignore"):
        # no spread at all: a step between two flat runs is infinitely sure, no step is none
        return np.where(
            spread > 1e-12, difference / spread, np.where(difference > 1e-12, np.inf, 0)
        )
