"""Turn timed generations into figures. Pure functions: no clocks, no torch.

The method follows optimum-benchmark: greedy, exactly N new tokens, per-token
timestamps taken inside the one timed generation. Prefill is start -> first
token; decode is the intervals between tokens (never total minus prefill).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from whistle_stop.contract.figures import decode_tokens_per_s


@dataclass(frozen=True)
class Repeat:
    """One timed generation: outer timer around it, and when each token arrived."""

    start: float
    end: float
    token_times: tuple[float, ...]

    @property
    def prefill_s(self) -> float:
        return self.token_times[0] - self.start

    @property
    def decode_steps_s(self) -> list[float]:
        times = self.token_times
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first over their intervals (NaN for one token: no decode)."""
        return decode_tokens_per_s(self.decode_steps_s)

    @property
    def end_to_end_s(self) -> float:
        return self.end - self.start

    @property
    def timer_gap(self) -> float:
        """Relative disagreement between the token clock and the outer wall clock."""
        inner = self.prefill_s + sum(self.decode_steps_s)
        return abs(self.end_to_end_s - inner) / self.end_to_end_s


def should_stop(
    done: int, elapsed_s: float, *, repeats: int, min_duration_s: float, max_repeats: int
) -> bool:
    """Stop after both `repeats` and `min_duration_s` are reached, or at `max_repeats`."""
    if done >= max_repeats:
        return True
    return done >= repeats and elapsed_s >= min_duration_s


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(repeats: list[Repeat], noise_threshold: float) -> dict[str, float | int | bool]:
    """Every figure a result row stores, from the raw repeats."""
    prefill = [r.prefill_s for r in repeats]
    steps = [step for r in repeats for step in r.decode_steps_s]
    end_to_end = [r.end_to_end_s for r in repeats]
    mean_e2e = statistics.fmean(end_to_end)
    stdev_e2e = statistics.stdev(end_to_end) if len(end_to_end) > 1 else 0.0
    cv = stdev_e2e / mean_e2e if mean_e2e > 0 else 0.0
    return {
        "repeats": len(repeats),
        "prefill_ms": 1e3 * statistics.fmean(prefill),
        "prefill_ms_p50": 1e3 * percentile(prefill, 50),
        "decode_ms": 1e3 * statistics.fmean(steps) if steps else math.nan,
        "decode_ms_p50": 1e3 * percentile(steps, 50),
        "decode_ms_p90": 1e3 * percentile(steps, 90),
        "decode_ms_p99": 1e3 * percentile(steps, 99),
        "decode_tokens_per_s": decode_tokens_per_s(steps),
        "e2e_s": mean_e2e,
        "e2e_s_p50": percentile(end_to_end, 50),
        "e2e_s_p90": percentile(end_to_end, 90),
        "e2e_s_stdev": stdev_e2e,
        "cv": cv,
        "noisy": cv > noise_threshold,
        "timer_gap": max(r.timer_gap for r in repeats),
    }


@dataclass(frozen=True)
class TimerCheck:
    """The token clock checked by the outer clock alone, against the runs' own noise.

    k extra tokens cost (e2e(N+k) - e2e(N)) / k each by the outer clock, which the
    stamped intervals of those k tokens must match (prefill + the stamped steps of one
    run telescopes to its last stamp - start, so that sum cannot fail). e2e(N) is the
    mean of the N-token run right before the longer one and another right after it: a
    machine whose speed drifts steadily moves both sides alike.

    `noise` is how far honest stamps could land from the outer figure by chance: three
    standard errors of that difference, from the spread of every N-token run's e2e (the
    timed repeats and the run after). A disagreement inside it is not evidence.
    """

    disagreement: float  # |stamped - outer| / the larger of the two
    noise: float  # 3 standard errors of the same quantity from run-to-run variation

    @classmethod
    def of(
        cls, short_runs_s: list[float], longer_s: float, stamped_s: float, extra: int
    ) -> TimerCheck:
        """`short_runs_s`: e2e of every N-token run in order, the last two right before and
        after the longer one; `longer_s` its e2e; `stamped_s` its last `extra` stamps' span."""
        before, after = short_runs_s[-2], short_runs_s[-1]
        stamped = stamped_s / extra
        outer = (longer_s - (before + after) / 2) / extra
        scale = max(stamped, outer, 1e-9)
        # the outer figure's error: the longer run's own deviation, and the mean of two
        spread = statistics.stdev(short_runs_s) * math.sqrt(1 + 1 / 2)
        return cls(abs(stamped - outer) / scale, 3 * spread / extra / scale)

    def verdict(self, limit: float) -> str | None:
        """A flag's text, or None when the clocks agree within `limit`."""
        if self.disagreement <= limit:
            return None
        if self.noise >= self.disagreement:
            return (
                f"timer check inconclusive: the clocks differ by {self.disagreement:.0%}, "
                f"inside what the runs' own variation allows ({self.noise:.0%})"
            )
        return f"token stamps disagree with the outer clock by {self.disagreement:.0%}"


def raw_samples(repeats: list[Repeat]) -> dict[str, list]:
    """Per-repeat raw figures kept beside the summary, for later statistics."""
    return {
        "prefill_s": [r.prefill_s for r in repeats],
        "e2e_s": [r.end_to_end_s for r in repeats],
        "decode_steps_s": [r.decode_steps_s for r in repeats],
    }
