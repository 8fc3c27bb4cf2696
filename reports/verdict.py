"""The sweep's verdict: for each cell, the fastest path, how sure the farm is, what it
costs in fidelity, and which paths it cannot tell apart from it.

Two paths are told apart only when their within-round ratio's 95% interval excludes 1
(paired by round: both ran in the same minutes); where the rounds do not pair up, when
their own intervals do not overlap. A cell measured in one round has no interval: its
fastest path is named, and the verdict says it cannot rank the rest.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from whistle_stop.contract.figures import ratio_interval, relative_half_width
from whistle_stop.contract.jobspec import control_label
from whistle_stop.contract.status import JobStatus


@dataclass(frozen=True)
class CellVerdict:
    cell: str  # "ctx=128 gen=64 thr=2" (and the sweep or host where several)
    fastest: dict[str, Any]  # its pooled report row
    tied: list[str]  # labels the farm cannot tell apart from the fastest
    unknown: bool  # one round: nothing could be told apart
    undecided: list[str] = field(default_factory=list)  # wider than rounds: auto's precision

    def line(self, baseline: str) -> str:
        row = self.fastest
        speed = f"{row['speedup']:.2f}x {baseline}"
        if row.get("speedup_lo"):
            speed += f" (95%: {row['speedup_lo']:.2f}-{row['speedup_hi']:.2f}x)"
        cost = []
        if row.get("top1_agreement") is not None:
            cost.append(f"top-1 {row['top1_agreement']:.3f}")
        if row.get("mean_kl") is not None:
            cost.append(f"KL {row['mean_kl']:.1e}")
        fidelity = f", {', '.join(cost)}" if cost else ""
        if self.unknown:
            rest = "one round: the others are not ranked (rounds: 3 gives intervals)"
        elif self.tied:
            rest = "cannot tell apart from " + ", ".join(self.tied)
        else:
            rest = "ahead of every other path"
        line = f"{self.cell}: fastest {row['label']} at {speed}{fidelity}; {rest}"
        if self.undecided:
            goal = f"±{row['precision']:.0%}"
            line += f"; not within {goal} after max_rounds: {', '.join(self.undecided)}"
        return line


def verdicts(rows: list[dict[str, Any]], baseline: str) -> list[CellVerdict]:
    """One verdict per cell that has a done path with a speedup (the baseline's twin,
    `control: true`, is the noise floor, not a contender)."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    # over finished rows: an unfinished one has no host, which is not a second host
    done = [r for r in rows if r["status"] == JobStatus.DONE]
    several = {k: len({r.get(k) for r in done}) > 1 for k in ("sweep", "host", "model")}
    for row in rows:
        if row["status"] == JobStatus.DONE and row.get("speedup") is not None:
            if row["label"] != control_label(baseline):
                key = (row["sweep"], row["host"], row.get("model"), *_place(row))
                cells[key].append(row)
    found = []
    for (sweep, host, model, context, generation, threads), group in cells.items():
        fastest = max(group, key=lambda r: r["speedup"])
        others = [r for r in group if r is not fastest]
        unknown = fastest.get("speedup_lo") is None
        tied = [] if unknown else [r["label"] for r in others if not told_apart(fastest, r)]
        place = (("sweep", sweep), ("host", host), ("model", model))
        where = [f"{value}: " for key, value in place if several[key]]
        name = f"{''.join(where)}ctx={context} gen={generation} thr={threads}"
        wide = [r["label"] for r in group if _wider_than_goal(r)]
        found.append(CellVerdict(name, fastest, tied, unknown, wide))
    return found


def _place(row: dict[str, Any]) -> tuple[int, int, int]:
    return (row["context"], row["generation"], row["threads"])


def told_apart(faster: dict[str, Any], slower: dict[str, Any]) -> bool:
    a, b = faster.get("round_speedups") or [], slower.get("round_speedups") or []
    if a and len(a) == len(b) == faster.get("rounds") == slower.get("rounds"):
        ratios = [x / y for x, y in zip(a, b, strict=True) if y]
        interval = ratio_interval(ratios, floor=faster.get("speedup_noise"))
        return interval is not None and interval[0] > 1
    if slower.get("speedup_hi") is None or faster.get("speedup_lo") is None:
        return False
    return faster["speedup_lo"] > slower["speedup_hi"]


def _wider_than_goal(row: dict[str, Any]) -> bool:
    """A rounds: auto cell that stopped with its interval wider than the sweep's goal."""
    goal, low, high = row.get("precision"), row.get("speedup_lo"), row.get("speedup_hi")
    if not goal or row["label"] == row.get("baseline"):
        return False
    return low is None or relative_half_width(low, high) > goal
