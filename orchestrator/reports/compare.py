"""`farm compare A B`: the same jobs in two sweeps, metric by metric, with a significance test.

Jobs are matched by their key (a hash of the spec that leaves out the sweep name).
A change counts as a regression or an improvement when it passes the threshold and
the Mann-Whitney U test on the raw per-repeat samples says p < 0.05. With few samples
the exact test cannot reach that at all (3 against 3 repeats: the smallest possible
two-sided p is 2/20 = 0.1); then the threshold alone decides and the p-value is shown
as "-".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from contract.figures import decode_tokens_per_s
from contract.status import JobStatus
from db.models import Sweep
from orchestrator.reports.query import result_rows

# metric -> (raw sample key, higher is better)
METRICS = {
    "decode_tokens_per_s": ("decode_steps_s", True),
    "e2e_s": ("e2e_s", False),
    "prefill_ms": ("prefill_s", False),
}
ALPHA = 0.05


@dataclass
class Change:
    label: str
    cell: str
    metric: str
    before: float
    after: float
    p_value: float | None  # None: too few samples to test
    verdict: str  # "regression" | "improvement" | "same"

    @property
    def ratio(self) -> float:
        return self.after / self.before


@dataclass
class Comparison:
    changes: list[Change]
    only_in_a: list[str]
    only_in_b: list[str]
    not_compared: list[str]  # in both, but not done in both

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.verdict == "regression"]

    def worst_regression(self) -> float:
        """The largest relative loss among regressions (0.2 = 20% worse), 0 if none."""
        losses = [_loss(c) for c in self.regressions]
        return max(losses, default=0.0)


def compare(session: Session, a: Sweep, b: Sweep, *, threshold: float) -> Comparison:
    rows_a = {r["key"]: r for r in result_rows(session, [a], baseline="hf")}
    rows_b = {r["key"]: r for r in result_rows(session, [b], baseline="hf")}
    samples = _samples(session, [a, b])
    changes, not_compared = [], []
    for key in sorted(set(rows_a) & set(rows_b), key=lambda k: _describe(rows_a[k])):
        before, after = rows_a[key], rows_b[key]
        if before["status"] != JobStatus.DONE or after["status"] != JobStatus.DONE:
            states = f"{a.name}: {before['status']}, {b.name}: {after['status']}"
            not_compared.append(f"{_describe(before, label=True)} ({states})")
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
            changes.append(Change(before["label"], _describe(before), metric, before[metric],
                                  after[metric], p_value, verdict))  # fmt: skip
    only_a = [_describe(rows_a[k], label=True) for k in set(rows_a) - set(rows_b)]
    only_b = [_describe(rows_b[k], label=True) for k in set(rows_b) - set(rows_a)]
    return Comparison(changes, sorted(only_a), sorted(only_b), not_compared)


def _loss(change: Change) -> float:
    higher_better = METRICS[change.metric][1]
    return 1 - change.ratio if higher_better else change.ratio - 1


def _describe(row: dict[str, Any], label: bool = False) -> str:
    cell = f"ctx={row['context']} gen={row['generation']} threads={row['threads']}"
    return f"{row['label']} {cell}" if label else cell


def _samples(session: Session, sweeps: list[Sweep]) -> dict[tuple[int, str], dict]:
    found = {}
    for sweep in sweeps:
        for job in sweep.jobs:
            found[(sweep.id, job.key)] = job.result.samples if job.result else {}
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
