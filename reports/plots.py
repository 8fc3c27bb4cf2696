"""`farm plot`: the five figures a sweep is read by, as PNG files.

Each figure is drawn only when its data exists (two generation lengths for a line,
fidelity figures for the trade-off plot ...); otherwise it is skipped with a reason.
Whiskers on decode speed are its 95% interval over rounds (one standard deviation over
the repeats where a cell ran once); elsewhere one standard deviation over the repeats.
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from whistle_stop.contract.figures import decode_tokens_per_s
from whistle_stop.contract.status import JobStatus
from whistle_stop.reports.query import cache_bytes

Rows = list[dict[str, Any]]
Samples = dict[str, dict[str, list]]  # job key -> raw per-repeat samples


def figures() -> dict[str, Callable[[Rows, Samples, str], tuple[bytes | None, str]]]:
    return {
        "latency_vs_generation": latency_vs_generation,
        "decode_tokens_per_s": decode_speed,
        "prefill_vs_context": prefill_vs_context,
        "speed_vs_fidelity": speed_vs_fidelity,
        "roofline": roofline_fraction,
        "speed_vs_model_size": speed_vs_model_size,
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


def _finish(figure, axis, *, grid: str = "both", legend: bool = True, **labels) -> bytes:
    """Titles and axis labels (with units), a light grid, the legend; then the PNG."""
    axis.set(**labels)
    axis.grid(axis=grid, alpha=0.3)
    if legend:
        axis.legend(fontsize=8)
    return _png(figure)


def _done(rows: Rows) -> Rows:
    return [r for r in rows if r["status"] == JobStatus.DONE]


def _stdev(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def latency_vs_generation(rows: Rows, samples: Samples, baseline: str) -> tuple[bytes | None, str]:
    rows = _done(rows)
    if len({r["generation"] for r in rows}) < 2:
        return None, "needs at least two generation lengths"
    plt = _pyplot()
    contexts = sorted({r["context"] for r in rows})
    figure, axes = plt.subplots(
        1, len(contexts), figsize=(5 * len(contexts), 4), squeeze=False, sharey=True
    )
    for axis, context in zip(axes[0], contexts, strict=True):
        for label in sorted({r["label"] for r in rows}):
            points = sorted(
                (r["generation"], r["e2e_s"], r["e2e_s_stdev"] or 0)
                for r in rows
                if r["label"] == label and r["context"] == context
            )
            if points:
                x, y, err = zip(*points, strict=True)
                axis.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        axis.set(
            title=f"context {context} tokens",
            xlabel="generated tokens",
            ylabel="end-to-end latency (s)",
        )
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    title = "End-to-end latency against generation length (mean and s.d. over repeats)"
    figure.suptitle(title)
    return _png(figure), title


def decode_speed(rows: Rows, samples: Samples, baseline: str) -> tuple[bytes | None, str]:
    """One panel per (context, generation) cell: every cell, not just the biggest."""
    rows = _done(rows)
    if not rows:
        return None, "no finished jobs"
    cells = sorted({(r["context"], r["generation"]) for r in rows})
    labels = sorted({r["label"] for r in rows})
    columns = min(2, len(cells))  # at most ~1,000 px wide: a page, not a banner
    lines = -(-len(cells) // columns)
    plt = _pyplot()
    figure, axes = plt.subplots(
        lines,
        columns,
        figsize=(4.5 * columns, (0.4 * len(labels) + 1.2) * lines),
        squeeze=False,
        sharey=True,
        sharex=True,  # one tokens/s scale for every panel, so panels compare by eye
    )
    widest = 0.0
    for axis, (context, generation) in zip(axes.flat, cells, strict=False):
        here = (context, generation)
        cell = {r["label"]: r for r in rows if (r["context"], r["generation"]) == here}
        values = [cell[name]["decode_tokens_per_s"] if name in cell else 0 for name in labels]
        below, above = zip(*(_error_bar(cell.get(name), samples) for name in labels), strict=True)
        bars = axis.barh(labels, values, xerr=[below, above], capsize=3)
        errors = above
        for bar, label, error in zip(bars, labels, errors, strict=True):
            speedup = cell.get(label, {}).get("speedup")
            note = f"  {speedup:.2f}x" if speedup else ""
            axis.text(
                bar.get_width() + error,
                bar.get_y() + bar.get_height() / 2,
                note,
                va="center",
                fontsize=7,
            )
        widest = max(widest, *(v + e for v, e in zip(values, errors, strict=True)))
        axis.set(title=f"context {context}, {generation} tokens", xlabel="decode tokens/s")
        axis.grid(axis="x", alpha=0.3)
    axes.flat[0].set_xlim(0, widest * 1.25 or 1)  # shared: room for the speedup labels
    for axis in list(axes.flat)[len(cells) :]:
        axis.set_visible(False)
    title = (
        f"Decode speed in every cell (labels: speedup over {baseline}; "
        "whiskers: 95% over rounds, else s.d. over repeats)"
    )
    figure.suptitle(title)
    figure.tight_layout()
    return _png(figure), title


def _error_bar(row: dict | None, samples: Samples) -> tuple[float, float]:
    """Below and above a bar: its 95% interval over rounds where the cell ran several,
    else one standard deviation over the repeats of its one job."""
    if row is None:
        return 0.0, 0.0
    low, high = row.get("decode_tokens_per_s_lo"), row.get("decode_tokens_per_s_hi")
    if low is not None and high is not None:
        value = row["decode_tokens_per_s"]
        return max(0.0, value - low), max(0.0, high - value)
    spread = _stdev(_repeat_speeds(samples.get(row["key"], {})))
    return spread, spread


def _repeat_speeds(raw: dict[str, list]) -> list[float]:
    """Decode tokens/s of each timed repeat, from its per-token intervals."""
    return [decode_tokens_per_s(steps) for steps in raw.get("decode_steps_s", []) if steps]


def prefill_vs_context(rows: Rows, samples: Samples, baseline: str) -> tuple[bytes | None, str]:
    rows = _done(rows)
    if len({r["context"] for r in rows}) < 2:
        return None, "needs at least two context sizes"
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label in sorted({r["label"] for r in rows}):
        by_context = defaultdict(list)
        for r in rows:
            if r["label"] == label:
                by_context[r["context"]] += [
                    1e3 * s for s in samples.get(r["key"], {}).get("prefill_s", [])
                ]
        x = sorted(c for c in by_context if by_context[c])
        if x:
            means = [statistics.fmean(by_context[c]) for c in x]
            spread = [_stdev(by_context[c]) for c in x]
            axis.errorbar(x, means, yerr=spread, marker="o", capsize=3, label=label)
    title = "Prefill time against context size (mean and s.d. over repeats)"
    return _finish(
        figure,
        axis,
        xlabel="context (prompt tokens)",
        ylabel="time to first token (ms)",
        title=title,
    ), title


def _per_backend(rows: Rows, key: str) -> dict[str, float]:
    values = defaultdict(list)
    for r in rows:
        if r[key] is not None:
            values[r["label"]].append(r[key])
    return {label: statistics.fmean(v) for label, v in values.items()}


KL_FLOOR = 1e-10  # float32 against itself is exactly 0: drawn here on the log axis


def speed_vs_fidelity(rows: Rows, samples: Samples, baseline: str) -> tuple[bytes | None, str]:
    """Mean KL from float32 (log axis; lower is better) against decode speed, with the
    Pareto front. Top-1 on random weights is flat at 1.000, so KL tells paths apart.
    Several sweeps: a panel each, side by side on one KL axis (a front per sweep: trained
    weights beside untrained ones, say, each its own tradeoff)."""
    rows = _done(rows)
    sweeps = dict.fromkeys(r["sweep"] for r in rows)  # in the order the rows name them
    panels = [[r for r in rows if r["sweep"] == sweep] for sweep in sweeps]
    panels = [p for p in panels if len(_fidelity_points(p)) >= 2]
    if not panels:
        return None, "needs fidelity figures (mean KL) for at least two backends"
    plt = _pyplot()
    figure, axes = plt.subplots(
        1, len(panels), figsize=(9 * len(panels), 5.6), squeeze=False, sharey=True
    )
    for axis, panel in zip(axes[0], panels, strict=True):
        _fidelity_panel(axis, panel)
        axis.set(xlabel="decode tokens/s")
        if len(panels) > 1:
            axis.set_title(f"sweep {panel[0]['sweep']} ({panel[0].get('model') or '?'})")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set(ylabel="mean KL from transformers float32 (log; lower is closer)")
    title = "Speed against fidelity (means over each backend's cells)"
    figure.suptitle(title)
    return _png(figure), title


def _fidelity_points(rows: Rows) -> list[tuple[float, float, str]]:
    kl = _per_backend(rows, "mean_kl")
    speed = _per_backend(rows, "decode_tokens_per_s")
    labels = [label for label in kl if label in speed]
    return sorted(((speed[l], kl[l], _unprefixed(l)) for l in labels), reverse=True)  # noqa: E741


def _unprefixed(label: str) -> str:
    return label.split(": ", 1)[-1]  # "sweep: label" when rows span sweeps: a panel each


def _fidelity_panel(axis, rows: Rows) -> None:
    exact = _fidelity_points(rows)
    points = [(s, max(k, KL_FLOOR), label) for s, k, label in exact]
    kl = {label: k for _, k, label in exact}
    front, best = [], float("inf")
    for s, k, label in points:  # fastest first: on the front if closer than all faster
        if k < best:
            front.append((s, k, label))
            best = k
    engine = {_unprefixed(r["label"]): r["backend"] for r in rows}
    axis.set_yscale("log")
    for name in sorted({engine[p[2]] for p in points}):  # one colour per engine
        mine = [p for p in points if engine[p[2]] == name]
        axis.scatter([p[0] for p in mine], [p[1] for p in mine], zorder=3, label=name)
    for index, (s, k, label) in enumerate(sorted(points)):  # alternate sides: close points
        offset = (4, 6) if index % 2 == 0 else (4, -12)
        below = "exact" if kl[label] == 0 else f"KL {kl[label]:.0e}"
        floor = f" ({below}, drawn at {KL_FLOOR:.0e})" if kl[label] < KL_FLOOR else ""
        axis.annotate(label + floor, (s, k), textcoords="offset points", xytext=offset, fontsize=8)
    # rings on the front's points: a front of one point is drawn too, not only named
    axis.plot(
        [p[0] for p in front],
        [p[1] for p in front],
        "r--o",
        mfc="none",
        ms=11,
        label="Pareto front",
        zorder=2,
    )


def roofline_fraction(rows: Rows, samples: Samples, baseline: str) -> tuple[bytes | None, str]:
    fractions = _per_backend(_done(rows), "roofline_fraction")
    if not fractions:
        return None, "no roofline figures (results from before the bandwidth was measured)"
    labels = sorted(fractions, key=fractions.get)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    axis.barh(labels, [100 * fractions[l] for l in labels])  # noqa: E741
    axis.axvline(100, color="r", linestyle="--", label="memory-bandwidth bound")
    title = "Decode speed against the memory-bandwidth roofline (mean over each backend's cells)"
    return _finish(
        figure,
        axis,
        grid="x",
        xlabel="achieved share of the roofline (%)",
        title=title,
    ), title


def speed_vs_model_size(rows: Rows, samples: Samples, baseline: str) -> tuple[bytes | None, str]:
    """A `models:` sweep: decode tokens/s and the roofline share against the model's
    weights (bytes a token reads), a line per path and context; the dotted line on the
    share panel is where weights are 10x the last-level cache (beyond it: DRAM)."""
    rows = [r for r in _done(rows) if r.get("weight_bytes_per_token")]
    if len({r["model"] for r in rows}) < 2:
        return None, "needs at least two models (models:)"
    plt = _pyplot()
    figure, (speed, share) = plt.subplots(1, 2, figsize=(9, 4))
    contexts = sorted({r["context"] for r in rows})
    for label in sorted({r["label"] for r in rows}):
        for context in contexts:
            line = sorted(
                (r for r in rows if r["label"] == label and r["context"] == context),
                key=lambda r: r["weight_bytes_per_token"],
            )
            name = label if len(contexts) == 1 else f"{label} ctx {context}"
            x = [r["weight_bytes_per_token"] / 2**20 for r in line]
            speed.plot(x, [r["decode_tokens_per_s"] for r in line], marker="o", label=name)
            fractions = [(a, r["roofline_fraction"]) for a, r in zip(x, line, strict=True)]
            fractions = [(a, 100 * f) for a, f in fractions if f is not None]
            if fractions:
                share.plot(*zip(*fractions, strict=True), marker="o", label=name)
    llc = [size for r in rows if (size := cache_bytes(r))]
    if llc:
        share.axvline(10 * max(llc) / 2**20, color="grey", linestyle=":", label="10x LLC")
    share.axhline(100, color="r", linestyle="--", label="memory-bandwidth bound")
    speed.set(xscale="log", yscale="log", ylabel="decode tokens/s", title="Decode speed")
    share.set(xscale="log", ylabel="share of the roofline (%)", title="Roofline share")
    for axis in (speed, share):
        axis.set(xlabel="weights read per token (MiB)")
        axis.grid(alpha=0.3)
    share.legend(fontsize=7)
    title = "Decode speed and roofline share against model size"
    figure.suptitle(title)
    figure.tight_layout()
    return _png(figure), title


def draw_all(rows: Rows, samples: Samples, baseline: str) -> dict[str, tuple[bytes | None, str]]:
    """name -> (PNG bytes, its title) or (None, why it was skipped). Where a sweep has
    several models, the per-path figures name each path with its model."""
    if len({r["model"] for r in rows}) > 1:
        named = [{**r, "label": f"{r['label']} {_short(r['model'])}"} for r in rows]
        return {  # the size figure has a line per path: it takes the plain labels
            name: draw(rows if draw is speed_vs_model_size else named, samples, baseline)
            for name, draw in figures().items()
        }
    return {name: draw(rows, samples, baseline) for name, draw in figures().items()}


def _short(model: str) -> str:
    return model.removeprefix("random:").removeprefix("trained:")


def history(title: str, points: Rows, change_indices: list[int]) -> bytes:
    """One series across sweeps (farm history): decode tok/s a point, its 95% interval
    over rounds as a whisker, a dashed line before each change point, and each point's
    revision under it."""
    figure, axis = _pyplot().subplots(figsize=(7, 3.5))
    xs = list(range(1, len(points) + 1))
    speeds = [p["decode_tokens_per_s"] for p in points]
    below = [s - (p["decode_tokens_per_s_lo"] or s) for s, p in zip(speeds, points, strict=True)]
    above = [(p["decode_tokens_per_s_hi"] or s) - s for s, p in zip(speeds, points, strict=True)]
    axis.errorbar(xs, speeds, yerr=[below, above], fmt="o-", capsize=3, label="tok/s, 95% interval")
    for index in change_indices:
        axis.axvline(index + 0.5, linestyle="--", color="tab:red", label="change point")
    revisions = [(p["git_revision"] or "-")[:7] for p in points]
    axis.set_xticks(xs, [f"{x}\n{r}" for x, r in zip(xs, revisions, strict=True)], fontsize=7)
    axis.set_ylim(bottom=0)
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one legend entry per kind
    axis.legend(unique.values(), unique.keys(), fontsize=8)
    return _finish(
        figure, axis, legend=False, title=title, xlabel="point (revision)", ylabel="decode tok/s"
    )
