"""`farm compare A B`: the same jobs in two sweeps, metric by metric, with a significance test.

Jobs are matched by their cell (a hash of the spec that leaves out the sweep name and
the round); a cell measured in several rounds pools their samples. The speedup over the
baseline, a ratio taken within each round, is compared too: it is what drifts least.
A change counts as a regression or an improvement when it passes the threshold and
the Mann-Whitney U test on the raw per-repeat samples says p < 0.05. With few samples
the exact test cannot reach that at all (3 against 3 repeats: the smallest possible
two-sided p is 2/20 = 0.1); then the threshold alone decides and the p-value is shown
as "-".
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from whistle_stop.contract.figures import decode_tokens_per_s
from whistle_stop.contract.status import JobStatus
from whistle_stop.db.models import Sweep
from whistle_stop.reports.query import pooled_samples, result_rows

# metric -> (raw sample key, higher is better)
METRICS = {
    "decode_tokens_per_s": ("decode_steps_s", True),
    "e2e_s": ("e2e_s", False),
    "prefill_ms_p50": ("prefill_s", False),  # the median, as the report shows it
}
ALPHA = 0.05


FIDELITY = ("top1_agreement", "mean_kl")  # compared by threshold (no per-repeat samples)
KL_NOISE = 1e-6  # KL below this is float rounding, not a change


@dataclass
class Change:
    label: str
    cell: str
    metric: str
    before: float
    after: float
    p_value: float | None  # None: too few samples to test (or a fidelity figure)
    verdict: str  # "regression" | "improvement" | "same"

    @property
    def ratio(self) -> float:
        if not self.before:  # 0 -> 0 (an exact path's KL) is no change, not infinitely worse
            return 1.0 if not self.after else math.inf
        return self.after / self.before


@dataclass
class Comparison:
    changes: list[Change]
    only_in_a: list[str]  # missing in B
    only_in_b: list[str]
    not_compared: list[str]  # in both, but not done in both
    newly_failed: list[str]  # done in A, not done in B

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]

    def worst_regression(self) -> float:
        """The largest relative loss among speed regressions (0.2 = 20% worse), 0 if none."""
        losses = [_loss(c) for c in self.regressions if c.metric in METRICS]
        return max(losses, default=0.0)

    def fidelity_regressions(self) -> list[Change]:
        return [c for c in self.regressions if c.metric in FIDELITY]

    def summary(self) -> str:
        verdicts = [c.verdict for c in self.changes]
        counts = [
            (verdicts.count("regression"), "regression", "regressions"),
            (verdicts.count("improvement"), "improvement", "improvements"),
            (verdicts.count("same"), "unchanged", "unchanged"),
            (len(self.newly_failed), "newly failed", "newly failed"),
            (len(self.only_in_a), "missing", "missing"),
        ]
        return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)


def compare(
    session: Session,
    a: Sweep,
    b: Sweep,
    *,
    threshold: float,
    fidelity_threshold: float = 0.01,
    kl_factor: float = 2.0,
) -> Comparison:
    """Every job of A against the same job in B, in a fixed order (backend, cell, metric).

    Speed: a change passing `threshold` with p < 0.05 (or too few samples to test).
    Fidelity: top-1 agreement falling by more than `fidelity_threshold` (absolute), or
    mean KL growing by more than `kl_factor` times, is a regression; the reverse an
    improvement. A job done in A that failed in B, or is missing from B, is listed.
    """
    rows_a = {r["key"]: r for r in result_rows(session, [a], baseline="hf")}
    rows_b = {r["key"]: r for r in result_rows(session, [b], baseline="hf")}
    samples = _samples(session, [a, b])
    changes, not_compared, newly_failed = [], [], []
    for key in sorted(set(rows_a) & set(rows_b), key=lambda k: _order(rows_a[k])):
        before, after = rows_a[key], rows_b[key]
        if before["status"] != JobStatus.DONE or after["status"] != JobStatus.DONE:
            states = f"{a.name}: {before['status']}, {b.name}: {after['status']}"
            note = f"{_describe(before, label=True)} ({states})"
            (newly_failed if before["status"] == JobStatus.DONE else not_compared).append(note)
            continue
        for metric, (raw_key, higher_better) in METRICS.items():
            x = _raw(samples[(a.id, key)], raw_key)
            y = _raw(samples[(b.id, key)], raw_key)
            p_value = _mann_whitney(x, y)
            ratio = after[metric] / before[metric]
            better = ratio > 1 if higher_better else ratio < 1
            beyond = abs(ratio - 1) > threshold
            significant = p_value is None or p_value < ALPHA
            verdict = "same"
            if beyond and significant:
                verdict = "improvement" if better else "regression"
            changes.append(
                Change(
                    before["label"],
                    _describe(before),
                    metric,
                    before[metric],
                    after[metric],
                    p_value,
                    verdict,
                )
            )
        changes += _speedup(before, after, threshold)
        changes += _fidelity(before, after, fidelity_threshold, kl_factor)
    only_a = [_describe(rows_a[k], label=True) for k in set(rows_a) - set(rows_b)]
    only_b = [_describe(rows_b[k], label=True) for k in set(rows_b) - set(rows_a)]
    return Comparison(changes, sorted(only_a), sorted(only_b), not_compared, newly_failed)


def _speedup(before: dict, after: dict, threshold: float) -> list[Change]:
    """The within-round speedup over the baseline (threshold only: one value per round)."""
    pair = before["speedup"], after["speedup"]
    if None in pair:
        return []
    ratio = pair[1] / pair[0]
    verdict = "same"
    if abs(ratio - 1) > threshold:
        verdict = "improvement" if ratio > 1 else "regression"
    return [Change(before["label"], _describe(before), "speedup", *pair, None, verdict)]


def _fidelity(before: dict, after: dict, threshold: float, kl_factor: float) -> list[Change]:
    changes = []
    top1 = before["top1_agreement"], after["top1_agreement"]
    if None not in top1:
        drop = top1[0] - top1[1]
        verdict = "same"
        if abs(drop) > threshold:
            verdict = "regression" if drop > 0 else "improvement"
        changes.append(
            Change(before["label"], _describe(before), "top1_agreement", *top1, None, verdict)
        )
    kl = before["mean_kl"], after["mean_kl"]
    if None not in kl:
        low, high = (max(value, KL_NOISE) for value in kl)
        verdict = (
            "regression"
            if high > kl_factor * low
            else ("improvement" if low > kl_factor * high else "same")
        )
        changes.append(Change(before["label"], _describe(before), "mean_kl", *kl, None, verdict))
    return changes


def _order(row: dict[str, Any]) -> tuple:
    return (row["label"], row["context"], row["generation"], row["threads"])


def _loss(change: Change) -> float:
    higher_better = METRICS[change.metric][1]
    return 1 - change.ratio if higher_better else change.ratio - 1


def _describe(row: dict[str, Any], label: bool = False) -> str:
    cell = f"ctx={row['context']} gen={row['generation']} threads={row['threads']}"
    return f"{row['label']} {cell}" if label else cell


def _samples(session: Session, sweeps: list[Sweep]) -> dict[tuple[int, str], dict]:
    """(sweep id, cell) -> the raw samples of every round of that cell."""
    by_name = {sweep.name: sweep.id for sweep in sweeps}
    found: dict[tuple[int, str], dict] = defaultdict(dict)
    for (name, cell), samples in pooled_samples(sweeps).items():
        found[(by_name[name], cell)] = samples
    return found


def _raw(samples: dict, key: str) -> list[float]:
    values = samples.get(key, [])
    if key == "decode_steps_s":  # per repeat: tokens/s from its intervals
        return [decode_tokens_per_s(steps) for steps in values if steps]
    return list(values)


def _mann_whitney(x: list[float], y: list[float]) -> float | None:
    """Two-sided p-value, or None when no outcome of the test could reach ALPHA."""
    if not x or not y or 2 / math.comb(len(x) + len(y), len(x)) >= ALPHA:
        return None
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(x, y, alternative="two-sided").pvalue)
