"""rounds: auto: which cells have not yet shown their speedup within the sweep's precision.

A cell's speedup is the ratio of its decode speed to its baseline's in the same round
(the same minutes, on the same worker); its 95% interval comes from those ratios
(contract/figures.py). After the first rounds, only the cells whose interval is wider
than ±precision run again (with their baseline beside them), until each is narrow
enough or the sweep's max_rounds is spent. The stopping rule looks at the interval's
width, not at whether it excludes 1, so adding rounds does not bias a verdict towards
"different"; and the width is floored at the sweep's pooled noise, so a cell whose first
rounds agree by luck does not stop with an interval narrower than the host allows.
"""

from __future__ import annotations

import math

from whistle_stop.contract.figures import pooled_log_sd, ratio_interval, relative_half_width
from whistle_stop.contract.jobspec import JobSpec
from whistle_stop.orchestrator.sweep import grid_cell, is_baseline


def undecided(speeds: list[tuple[JobSpec, float]], baseline: str, precision: float) -> dict:
    """cell -> the relative half-width of its speedup's interval (inf: fewer than two
    rounds with a ratio), for the cells wider than ±precision. `speeds` holds the done
    jobs' specs with their decode tokens/s; the baseline's own cells are never undecided
    (their ratio is 1 by definition), nor cells whose baseline never finished."""
    reference: dict[tuple, float] = {}
    for by_label in (False, True):  # a label is more exact than a backend name: it wins
        for spec, speed in speeds:
            if is_baseline(spec, baseline) and (spec.label == baseline) == by_label:
                reference[(grid_cell(spec), spec.round)] = speed
    ratios: dict[str, list[float]] = {}
    for spec, speed in speeds:
        base = reference.get((grid_cell(spec), spec.round))
        if base and not is_baseline(spec, baseline):
            ratios.setdefault(spec.cell, []).append(speed / base)
    wide = {}
    noise = pooled_log_sd(ratios.values())  # as the report floors it (reports/query.py)
    for cell, values in ratios.items():
        interval = ratio_interval(values, floor=noise)
        width = relative_half_width(*interval) if interval else math.inf
        if width > precision:
            wide[cell] = width
    return wide
