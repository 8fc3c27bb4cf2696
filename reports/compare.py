"""`farm compare A B`: the same jobs in two sweeps, each figure with a 95% interval on
its change and a verdict: faster, slower, same or unknown (fidelity: better, worse, same
or unknown).

Jobs are matched by their cell (a hash of the spec that leaves out the sweep name and
the round). A speed figure's change is after / before with Welch's t interval on the
logs (contract/figures.ratio_between); its unit is a round, the thing that varies from
one run to the next. Where either sweep ran a cell in a single round there is nothing
between runs to measure, and the repeats of that one job stand in: the interval then
leaves out the drift between runs, and the output says which basis each line used. The
within-round speedup over the baseline is compared too (it drifts least) where both
sweeps ran two rounds or more.

A verdict needs the interval, not the point: slower only when the whole interval lies
below 1 by more than half the margin (`--threshold`), same only when it lies inside
±margin, unknown otherwise (contract/figures.verdict). Fidelity: top-1 agreement by the
difference of two proportions (Newcombe's interval from the two Wilson intervals), mean
KL by the ratio of two means; figures identical on the same positions are the same.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from whistle_stop.contract.figures import (
    FASTER,
    SAME,
    SLOWER,
    UNKNOWN,
    decode_tokens_per_s,
    mean_ratio,
    proportion_difference,
    ratio_between,
    verdict,
)
from whistle_stop.contract.status import JobStatus
from whistle_stop.db.models import Sweep
from whistle_stop.reports.query import pooled_samples, result_rows

# metric -> (raw per-repeat sample key, higher is better)
METRICS = {
    "decode_tokens_per_s": ("decode_steps_s", True),  # the headline: each cell's verdict
    "e2e_s": ("e2e_s", False),
    "prefill_ms_p50": ("prefill_s", False),  # the median, as the report shows it
}
HEADLINE = "decode_tokens_per_s"
FIDELITY = ("top1_agreement", "mean_kl")
BETTER, WORSE = "better", "worse"  # fidelity's faster and slower
KL_NOISE = 1e-6  # KL below this is float rounding, not a change


@dataclass
class Change:
    label: str
    cell: str
    metric: str
    before: float
    after: float
    low: float | None  # the 95% interval of after / before (top-1: of after - before)
    high: float | None
    basis: str  # what the interval was taken over: "3+3 rounds", "5+5 repeats", ...
    verdict: str  # faster/slower (fidelity: better/worse), same or unknown

    @property
    def ratio(self) -> float:
        """after / before; for top-1 agreement, after - before (a proportion's change)."""
        if self.metric == "top1_agreement":
            return self.after - self.before
        if not self.before:  # 0 -> 0 (an exact path's KL) is no change, not infinitely worse
            return 1.0 if not self.after else math.inf
        return self.after / self.before

    @property
    def regression(self) -> bool:
        return self.verdict in (SLOWER, WORSE)

    @property
    def loss(self) -> float:
        """A speed figure's relative loss (0.2: 20% worse; negative: better)."""
        higher_better = METRICS.get(self.metric, ("", True))[1]
        return 1 - self.ratio if higher_better else self.ratio - 1


@dataclass
class Comparison:
    changes: list[Change]
    only_in_a: list[str]  # missing in B
    only_in_b: list[str]
    not_compared: list[str]  # in both, but not done in both
    newly_failed: list[str]  # done in A, not done in B
    margin: float = 0.05

    @property
    def regressions(self) -> list[Change]:
        return [c for c in self.changes if c.regression]

    def speed_regressions(self, limit: float) -> list[Change]:
        """Decided slowdowns whose measured loss is above `limit` (0.05: 5% worse)."""
        return [c for c in self.regressions if c.metric not in FIDELITY and c.loss > limit]

    def fidelity_regressions(self) -> list[Change]:
        return [c for c in self.regressions if c.metric in FIDELITY]

    def undecided(self) -> list[Change]:
        """Unknown verdicts on what `--strict` gates: each cell's speed and its fidelity."""
        return [c for c in self.changes if c.verdict == UNKNOWN and c.metric in GATED]

    def summary(self) -> str:
        cells = [c.verdict for c in self.changes if c.metric == HEADLINE]
        fidelity = [c.verdict for c in self.changes if c.metric in FIDELITY]
        counts = ", ".join(f"{cells.count(v)} {v}" for v in (FASTER, SLOWER, SAME, UNKNOWN))
        parts = [
            f"{len(cells)} cells: {counts} (tok/s, same within ±{self.margin:.0%})",
            f"fidelity: {fidelity.count(WORSE)} worse, {fidelity.count(BETTER)} better, "
            f"{fidelity.count(UNKNOWN)} unknown",
            f"{len(self.newly_failed)} newly failed, {len(self.only_in_a)} missing",
        ]
        return "; ".join(parts)


GATED = (HEADLINE, *FIDELITY)


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

    `threshold` is the speed margin, `fidelity_threshold` top-1's (absolute), `kl_factor`
    mean KL's (a factor). A job done in A that failed in B, or is missing from B, is listed.
    """
    rows_a = {r["key"]: r for r in result_rows(session, [a], baseline="hf")}
    rows_b = {r["key"]: r for r in result_rows(session, [b], baseline="hf")}
    if len({r["model"] for r in [*rows_a.values(), *rows_b.values()]}) > 1:
        for row in [*rows_a.values(), *rows_b.values()]:
            row["several_models"] = True  # each cell named with its model
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
            x, y, basis = _values(before, after, metric, raw_key, samples, (a.id, b.id, key))
            interval = ratio_between(x, y)
            changes.append(
                _change(before, after, metric, interval, basis, higher_better, threshold)
            )
        x, y = before["round_speedups"] or [], after["round_speedups"] or []
        if len(x) >= 2 and len(y) >= 2:  # a lone round's speedup has no noise to weigh
            basis = f"{len(x)}+{len(y)} rounds"
            interval = ratio_between(x, y)
            changes.append(_change(before, after, "speedup", interval, basis, True, threshold))
        changes += _fidelity(before, after, fidelity_threshold, kl_factor)
    only_a = [_describe(rows_a[k], label=True) for k in set(rows_a) - set(rows_b)]
    only_b = [_describe(rows_b[k], label=True) for k in set(rows_b) - set(rows_a)]
    return Comparison(
        changes, sorted(only_a), sorted(only_b), not_compared, newly_failed, threshold
    )


def _values(before, after, metric, raw_key, samples, where) -> tuple[list, list, str]:
    """Both sides' independent values of a figure: per round where each side has two
    rounds or more, else per repeat (the raw samples of the lone round)."""
    x = list(before["round_figures"].get(metric, {}).values())
    y = list(after["round_figures"].get(metric, {}).values())
    if len(x) >= 2 and len(y) >= 2:
        return x, y, f"{len(x)}+{len(y)} rounds"
    a_id, b_id, key = where
    x, y = _raw(samples[(a_id, key)], raw_key), _raw(samples[(b_id, key)], raw_key)
    return x, y, f"{len(x)}+{len(y)} repeats"


def _change(before, after, metric, interval, basis, higher_better, margin) -> Change:
    """A speed figure's change; a time's interval is turned into a speed's for the verdict."""
    as_speed = interval
    if interval is not None and not higher_better:
        as_speed = (1 / interval[1], 1 / interval[0])
    low, high = interval or (None, None)
    return Change(
        before["label"],
        _describe(before),
        metric,
        before[metric],
        after[metric],
        low,
        high,
        basis,
        verdict(as_speed, margin),
    )


def _fidelity(before: dict, after: dict, threshold: float, kl_factor: float) -> list[Change]:
    changes = []
    where = before["label"], _describe(before)
    top1 = [(row["top1_agreement"], row["top1_low"], row["top1_high"]) for row in (before, after)]
    if top1[0][0] is not None and top1[1][0] is not None:
        interval, found = (0.0, 0.0), SAME
        if top1[0][0] != top1[1][0]:  # else the same positions scored the same: no change
            interval, found = None, UNKNOWN  # results from before top-1 had an interval
            if None not in top1[0] + top1[1]:
                interval = proportion_difference(*top1)
                found = _by_margin(interval, threshold)
        interval = interval or (None, None)
        basis = _positions(before, after)
        changes.append(
            Change(*where, "top1_agreement", top1[0][0], top1[1][0], *interval, basis, found)
        )
    kl = before["mean_kl"], after["mean_kl"]
    if None not in kl:
        bounds = [(row["mean_kl"], row["kl_low"], row["kl_high"]) for row in (before, after)]
        interval, found = None, UNKNOWN
        if max(kl) < KL_NOISE or kl[0] == kl[1]:
            interval, found = (1.0, 1.0), SAME
        elif None not in bounds[0] + bounds[1]:  # results from before KL had an interval lack it
            interval = mean_ratio(*bounds)
            found = _by_factor(interval, kl_factor)
        basis = _positions(before, after)
        low, high = interval or (None, None)
        changes.append(Change(*where, "mean_kl", *kl, low, high, basis, found))
    return changes


def _positions(before: dict, after: dict) -> str:
    counts = before["fidelity_positions"], after["fidelity_positions"]
    return f"{counts[0]}+{counts[1]} positions" if None not in counts else "positions"


def _by_margin(interval: tuple[float, float], margin: float) -> str:
    """Top-1's verdict from the interval of its change (a difference, higher better)."""
    found = verdict((1 + interval[0], 1 + interval[1]), margin)
    return {FASTER: BETTER, SLOWER: WORSE}.get(found, found)


def _by_factor(interval: tuple[float, float] | None, factor: float) -> str:
    """KL's verdict from the interval of its ratio (lower better), on the log scale: worse
    when shown to grow by more than sqrt(factor), same when inside 1/factor..factor."""
    if interval is None:
        return UNKNOWN
    low, high = (math.log(v) for v in interval)
    size = math.log(factor)
    if low > size / 2:
        return WORSE
    if high < -size / 2:
        return BETTER
    if -size <= low and high <= size:
        return SAME
    return UNKNOWN


def _order(row: dict[str, Any]) -> tuple:
    return (row["label"], row["model"], row["context"], row["generation"], row["threads"])


def _describe(row: dict[str, Any], label: bool = False) -> str:
    cell = f"ctx={row['context']} gen={row['generation']} threads={row['threads']}"
    if row.get("several_models"):
        cell = f"{row['model']} {cell}"
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
    if key == "prefill_s":  # the table's unit
        return [1e3 * value for value in values]
    return list(values)
