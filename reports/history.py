"""`farm history`: each cell's results across sweeps and versions, with change points.

A series is one path on one machine class: model, label, backend and options, context,
generation length and threads, CPU model and ISA. Its points are the sweeps that measured
it, in the order they were submitted, each with its 95% interval over rounds (where the
sweep ran two or more), the project's revision (a `*` when the checkout had uncommitted
changes) and which software versions differ from the point before. `--changes` runs
reports/changes.py on decode tokens/s and on the fidelity figures (mean KL, top-1): a
drop of fidelity is a change as much as a drop of speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from whistle_stop.contract.status import JobStatus
from whistle_stop.reports.changes import ChangePoint, change_points
from whistle_stop.reports.render import to_markdown

SERIES = ("model", "label", "backend", "options", "context", "generation", "threads")
MACHINE = ("cpu_model", "isa")
# the figures a change is looked for in, and how each is shown
# (speedup: against the sweep's baseline within each round, so the host's drift between
# sweeps cancels in it, as it cannot in tok/s; the baseline must be a path the change
# under watch leaves alone)
WATCHED = {"decode_tokens_per_s": "tok/s", "speedup": "speedup"}
WATCHED |= {"mean_kl": "mean KL", "top1_agreement": "top-1"}


@dataclass
class Series:
    key: dict[str, Any]
    points: list[dict[str, Any]]
    changes: dict[str, list[ChangePoint]] = field(default_factory=dict)
    searched: bool = False  # --changes asked for (a series may still be too short)

    @property
    def title(self) -> str:
        k = self.key  # the options are in the JSON: the label names the path
        return (
            f"{k['label']} ({k['backend']}) on {k['model']}, ctx {k['context']}, "
            f"gen {k['generation']}, {k['threads']} thr; {k['cpu_model']}"
        )


def build_series(rows: list[dict[str, Any]], *, changes: bool, alpha: float) -> list[Series]:
    """Rows of many sweeps (reports/query.py's, pooled over rounds, oldest sweep first) ->
    one Series per cell and machine class with a done point; failed points are kept out
    of the change search but shown."""
    grouped: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == JobStatus.DONE:
            grouped.setdefault(tuple(row[k] for k in SERIES + MACHINE), []).append(row)
    found = []
    for key, points in grouped.items():
        series = Series(dict(zip(SERIES + MACHINE, key, strict=True)), points, searched=changes)
        if changes:
            for figure in WATCHED:
                values = [p[figure] for p in points]
                if len(values) >= 4 and all(v is not None and v > 0 for v in values):
                    series.changes[figure] = change_points(values, alpha=alpha)
        found.append(series)
    return found


def _revision(point: dict[str, Any]) -> str:
    revision = (point["git_revision"] or "-")[:8]
    return revision + ("*" if point.get("git_dirty") else "")


def _versions_changed(before: dict[str, Any] | None, point: dict[str, Any]) -> str:
    """Which versions differ from the point before: `onnxruntime 1.31.0>1.32.0`."""
    if before is None:
        return ""
    old, new = before["versions"] or {}, point["versions"] or {}
    return ", ".join(
        f"{name} {old.get(name, '-')}>{new.get(name, '-')}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    )


def _change_text(figure: str, change: ChangePoint) -> str:
    interval = f" [{change.low:.2f}-{change.high:.2f}]" if change.low else ""
    return f"{WATCHED[figure]} {change.ratio:.2f}x{interval} p={change.p_value:.3f}"


HEADINGS = ["sweep", "#", "measured", "revision", "tok/s", "95% interval", "speedup", "rounds"]
HEADINGS += ["mean KL", "top-1", "change", "versions changed"]  # the change's interval: the summary


def table_lines(series: Series) -> list[list[str]]:
    at = {}
    for figure, found in series.changes.items():
        for change in found:
            at.setdefault(change.index, []).append(f"{WATCHED[figure]} {change.ratio:.2f}x")
    lines = []
    for index, point in enumerate(series.points):
        low, high = point["decode_tokens_per_s_lo"], point["decode_tokens_per_s_hi"]
        kl, top1 = point["mean_kl"], point["top1_agreement"]
        lines.append(
            [point["sweep"], str(index + 1), (point["measured_at"] or "")[5:16].replace("T", " ")]
            + [_revision(point), f"{point['decode_tokens_per_s']:.1f}"]
            + [f"{low:.1f}-{high:.1f}" if low else "-", _speedup(point), str(point["rounds"])]
            + [f"{kl:.2e}" if kl is not None else "-", f"{top1:.3f}" if top1 is not None else "-"]
            + [
                "; ".join(at.get(index, [])) or "",
                _versions_changed(series.points[index - 1] if index else None, point),
            ]
        )
    return lines


def _speedup(point: dict[str, Any]) -> str:
    speedup, low, high = point["speedup"], point["speedup_lo"], point["speedup_hi"]
    if speedup is None:
        return "-"
    return f"{speedup:.3f}x" + (f" ({low:.2f}-{high:.2f})" if low else "")


def summary(series: Series) -> str:
    """One line: the changes found, or that none was (and on how many points)."""
    found = [
        f"{WATCHED[figure]} at point {change.index + 1} ({_change_text(figure, change)})"
        for figure, changes in series.changes.items()
        for change in changes
    ]
    points = len(series.points)
    if found:
        return f"changes over {points} points: " + "; ".join(found)
    searched = ", ".join(WATCHED[f] for f in series.changes) or "nothing (fewer than 4 points)"
    return f"no change found over {points} points (searched: {searched})"


def print_tables(all_series: list[Series], console, width: int) -> None:
    """Terminal tables fitted to `width`: columns empty in every point left out, the sweep
    name (first) shortened before any figure."""
    from whistle_stop.reports.columns import Column
    from whistle_stop.reports.render import to_table

    for series in all_series:
        lines = table_lines(series)
        keep = [i for i in range(len(HEADINGS)) if any(line[i] not in ("", "-") for line in lines)]
        columns = [Column(HEADINGS[i], HEADINGS[i], "{}", 0) for i in keep]
        body = [[line[i] for i in keep] for line in lines]
        console.print(to_table(series.title, columns, body, width=width))
        if series.searched:
            console.print(summary(series), markup=False, highlight=False)


def render(all_series: list[Series], fmt: str) -> str:
    """markdown, csv or json text of the series."""
    if fmt == "json":
        return json.dumps([_as_json(s) for s in all_series], indent=2, default=str) + "\n"
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["series", *HEADINGS])
        for number, series in enumerate(all_series, 1):
            writer.writerows([str(number), *line] for line in table_lines(series))
        return out.getvalue()
    parts = []
    for series in all_series:
        parts.append(f"### {series.title}\n\n{to_markdown(HEADINGS, table_lines(series))}")
        if series.searched:
            parts.append(summary(series) + "\n")
    return "\n".join(parts)


def _as_json(series: Series) -> dict[str, Any]:
    keep = ("sweep", "measured_at", "git_revision", "git_dirty", "versions", "rounds")
    keep += ("decode_tokens_per_s", "decode_tokens_per_s_lo", "decode_tokens_per_s_hi")
    keep += ("speedup", "speedup_lo", "speedup_hi", "baseline", "mean_kl", "top1_agreement")
    return {
        "series": series.key,
        "points": [{k: p[k] for k in keep} for p in series.points],
        "changes": {
            figure: [vars(change) for change in changes]
            for figure, changes in series.changes.items()
        },
    }


def render_html(all_series: list[Series]) -> str:
    """The history page: per series its table, its figure inline and what changed."""
    import base64
    import html

    from whistle_stop.reports import plots

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>farm history</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}</style></head><body>"
        "<h1>History</h1>"
    ]
    for series in all_series:
        parts.append(f"<h2>{html.escape(series.title)}</h2><table><tr>")
        parts.append("".join(f"<th>{html.escape(h)}</th>" for h in HEADINGS) + "</tr>")
        for line in table_lines(series):
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>")
        indices = [c.index for c in series.changes.get("decode_tokens_per_s", [])]
        png = base64.b64encode(plots.history(series.title, series.points, indices)).decode()
        parts.append(f"</table><img alt='history' src='data:image/png;base64,{png}'>")
        parts.append(f"<p>{html.escape(summary(series))}</p>")
    return "\n".join(parts) + "</body></html>\n"
