"""The work behind `farm report`, `sweeps`, `show`, `plot` and `compare` (the CLI stays thin)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from whistle_stop.artifacts import write_atomically
from whistle_stop.contract.figures import FASTER, SAME, SLOWER, UNKNOWN
from whistle_stop.contract.status import JobStatus
from whistle_stop.db.models import Job, Sweep
from whistle_stop.reports import plots, render
from whistle_stop.reports.analyses import VIEWS
from whistle_stop.reports.columns import BY_NAME, COLUMNS, Column, resolve
from whistle_stop.reports.compare import BETTER, WORSE, Change, Comparison, compare
from whistle_stop.reports.query import (
    EMPTY_ROW_KEYS,
    ReportError,
    apply_filters,
    check_baseline,
    find_sweep,
    find_sweeps,
    group_rows,
    noise_floor,
    pivot,
    pooled_samples,
    result_rows,
    sort_rows,
)
from whistle_stop.reports.verdict import verdicts


@dataclass
class ReportRequest:
    sweeps: list[str] = field(default_factory=list)
    every: bool = False
    backends: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    group_by: str | None = None
    pivot: str | None = None
    baseline: str | None = None  # None: the sweeps' own baseline (hf unless they say)
    fmt: str = "table"
    columns: list[str] = field(default_factory=list)
    sort: list[str] = field(default_factory=list)
    width: int = 80
    view: str | None = None  # one of reports.analyses.VIEWS: a conclusion over the sweeps


def report(
    session: Session, request: ReportRequest, console: Console, notes: Console
) -> str | None:
    """Text for the chosen format; the table format prints itself and returns None.

    What the reader should know but is not a result (no rows matched, what a pivot
    cell means) goes to `notes` (stderr)."""
    sweeps = find_sweeps(session, request.sweeps, every=request.every)
    baseline = request.baseline or sweep_baseline(sweeps)
    rows = result_rows(session, sweeps, baseline)
    check_baseline(rows, baseline)
    floors = noise_floor(rows, baseline)
    rows = apply_filters(rows, backends=request.backends, hosts=request.hosts, where=request.where)
    rows = sort_rows(rows, request.sort)
    names = _column_names(rows, request.columns)
    title = (
        "sweep "
        + ", ".join(s.name for s in sweeps)
        + "".join(
            f"; {name + ': ' if len(sweeps) > 1 else ''}noise floor {low:.2f}-{high:.2f}x "
            f"({baseline}-control/{baseline} within rounds; ~: inside it)"
            for name, (low, high) in floors.items()
        )
    )
    if not rows:
        notes.print(
            "no jobs match; drop a filter (--backend, --host, --where) to see more", highlight=False
        )
    if request.view:
        text = VIEWS[request.view](rows, [s.name for s in sweeps], baseline)
        if request.fmt == "table":
            text = render.wrap_prose(text, request.width)
            console.print(text, highlight=False, markup=False, soft_wrap=True)
            return None
        return text
    if request.fmt == "html":
        figures = draw(session, sweeps, rows, baseline)
        images = {name: (caption, png) for name, (png, caption) in figures.items() if png}
        skipped = [f"not drawn: {name}: {why}" for name, (png, why) in figures.items() if not png]
        sections = list(group_rows(rows, request.group_by).items())
        return render.render_html(title, sections, images, skipped, provenance(sweeps))
    if request.pivot:
        headings, body, meaning = pivot(rows, request.pivot)
        notes.print(meaning, highlight=False)
        output = render.render_pivot(headings, body, request.fmt, f"{title}: {meaning}")
        return _emit(output, rows, console)
    verdict = [v.line(baseline) for v in verdicts(rows, baseline)]
    texts = []
    for heading, group in group_rows(rows, request.group_by).items():
        output = render.render_rows(
            group, request.fmt, f"{title} {heading}".strip(), width=request.width, names=names
        )
        text = _emit(output, group, console)
        if text is not None:
            texts.append(
                (f"## {heading}\n\n" if heading and request.fmt == "markdown" else "") + text
            )
    if verdict and request.fmt in ("table", "markdown"):
        lines = ["", "Verdict (95% intervals from the rounds):", *(f"- {v}" for v in verdict)]
        if request.fmt == "table":
            console.print("\n".join(lines), highlight=False, markup=False)
        else:
            texts.append("\n".join(lines) + "\n")
    return "\n".join(texts) if texts else None


def _column_names(rows: list[dict[str, Any]], wanted: list[str]) -> list[str] | None:
    """`--columns tok/s,top-1` or `--columns all`; None: chosen by the terminal's width."""
    if not wanted:
        return None
    if wanted == ["all"]:
        return [c.key for c in COLUMNS]
    keys = list(rows[0]) if rows else list(EMPTY_ROW_KEYS)
    try:
        return [resolve(name, keys) for name in wanted]
    except KeyError as error:
        raise ReportError(
            f"--columns: no column {error.args[0]!r}; use keys or headings: "
            f"{', '.join(c.heading for c in COLUMNS)}, or all"
        ) from None


def _emit(output: str | Table, rows: list[dict[str, Any]], console: Console) -> str | None:
    if isinstance(output, Table):
        render.print_table(console, output, rows)
        return None
    return output


def provenance(sweeps: list[Sweep]) -> list[tuple[str, str]]:
    """Hosts, CPUs, models, versions, revisions and dates behind these sweeps' results."""
    environments = {job.result.environment for s in sweeps for job in s.jobs if job.result}
    models = sorted({job.spec.get("model", "?") for s in sweeps for job in s.jobs})
    dates = sorted(job.result.created_at for s in sweeps for job in s.jobs if job.result)

    def joined(values) -> str:
        return ", ".join(sorted({str(v) for v in values if v is not None})) or "-"

    versions = joined(f"{k} {v}" for e in environments for k, v in (e.versions or {}).items())
    return [
        ("hosts", joined(e.hostname for e in environments)),
        ("CPUs", joined(f"{e.cpu_model} ({' '.join(e.cpu_features)})" for e in environments)),
        ("models", ", ".join(models) or "-"),
        ("versions", versions),
        ("git revisions", joined(e.git_revision for e in environments)),
        (
            "measured",
            f"{dates[0]:%Y-%m-%d %H:%M} to {dates[-1]:%Y-%m-%d %H:%M} UTC" if dates else "-",
        ),
    ]


def sweep_baseline(sweeps: list[Sweep]) -> str:
    """The baseline the sweeps name (the first that names one), else transformers eager."""
    return next((s.baseline for s in sweeps if s.baseline), "hf")


def draw(session: Session, sweeps: list[Sweep], rows, baseline: str):
    """Every figure; with several sweeps each backend is drawn once per sweep
    ("sweep: label"), so two runs of one backend are never averaged together."""
    samples = {f"{name}/{cell}": found for (name, cell), found in pooled_samples(sweeps).items()}
    several = len(sweeps) > 1
    rows = [
        {
            **row,
            "key": f"{row['sweep']}/{row['key']}",
            "label": f"{row['sweep']}: {row['label']}" if several else row["label"],
        }
        for row in rows
    ]
    return plots.draw_all(rows, samples, baseline)


def write_plots(
    session: Session, sweep_names: list[str], every: bool, out: Path, baseline: str | None
) -> list[str]:
    """Write each figure as DIR/NAME.png; return one line per figure (written or skipped)."""
    sweeps = find_sweeps(session, sweep_names, every=every)
    baseline = baseline or sweep_baseline(sweeps)
    rows = result_rows(session, sweeps, baseline)
    check_baseline(rows, baseline)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (png, why) in draw(session, sweeps, rows, baseline).items():
        if png is None:
            lines.append(f"skipped {name}: {why}")
        else:
            write_atomically(out / f"{name}.png", png)
            lines.append(f"wrote {out / (name + '.png')}")
    failed = [r for r in rows if r["status"] == JobStatus.FAILED]
    if failed:
        lines.append(
            f"not plotted: {len(failed)} failed job(s): "
            + ", ".join(sorted({r["label"] for r in failed}))
        )
    return lines


def sweeps_table(session: Session) -> Table:
    table = Table(title="sweeps")
    for heading in (
        "name",
        "created",
        "jobs",
        JobStatus.DONE,
        JobStatus.FAILED,
        "unfinished",
        "hosts",
    ):
        table.add_column(heading)
    for sweep in session.scalars(select(Sweep).order_by(Sweep.id)):
        states = [job.status for job in sweep.jobs]
        hosts = sorted({job.result.environment.hostname for job in sweep.jobs if job.result})
        table.add_row(
            sweep.name,
            f"{sweep.created_at:%Y-%m-%d %H:%M}",
            str(len(states)),
            str(states.count(JobStatus.DONE)),
            str(states.count(JobStatus.FAILED)),
            str(len(states) - states.count(JobStatus.DONE) - states.count(JobStatus.FAILED)),
            ", ".join(hosts) or "-",
        )
    return table


def show_job(session: Session, reference: str, sweep: str | None = None) -> dict[str, Any]:
    """One job by id, key, key prefix, or SWEEP/KEY: spec, status, lost attempts,
    environment, figures, raw samples, error."""
    if sweep is None and "/" in reference:
        sweep, _, reference = reference.rpartition("/")
    # autoescape: a key prefix is text, never a LIKE pattern (`farm show %` matches nothing)
    by_key = Job.key.startswith(reference, autoescape=True)
    query = select(Job).join(Sweep).where(by_key)
    if reference.isdigit() and int(reference) < 2**63:  # ids are 64-bit integers
        query = select(Job).join(Sweep).where((Job.id == int(reference)) | by_key)
    if sweep is not None:
        find_sweep(session, sweep)  # an unknown sweep says which exist
        query = query.where(Sweep.name == sweep)
    jobs = session.scalars(query.order_by(Job.id)).all()
    if not jobs:
        raise ReportError(
            f"no job with id or key {reference!r}"
            + (f" in sweep {sweep!r}" if sweep else "")
            + "; the key column of `farm report --columns key,backend` lists them"
        )
    if len(jobs) > 1:
        names = ", ".join(f"{job.sweep.name}/{job.key}" for job in jobs[:5])
        raise ReportError(
            f"{reference!r} matches {len(jobs)} jobs ({names}); "
            "name one as SWEEP/KEY, e.g. farm show " + f"{jobs[0].sweep.name}/{jobs[0].key}"
        )
    job = jobs[0]
    shown: dict[str, Any] = {
        "id": job.id,
        "sweep": job.sweep.name,
        "key": job.key,
        "status": job.status,
        "attempts": job.attempts,
        "worker": job.worker,
        "spec": job.spec,
        "error": job.error,
        "lost_attempts": job.lost_attempts or [],
    }
    if job.result:
        result = job.result
        columns = [c.name for c in type(result).__table__.columns]
        shown["result"] = {name: getattr(result, name) for name in columns if name != "samples"}
        shown["samples"] = result.samples
        environment = result.environment
        shown["environment"] = {
            c.name: getattr(environment, c.name) for c in type(environment).__table__.columns
        }
    return json.loads(json.dumps(shown, default=str))


def comparison(
    session: Session,
    a: str,
    b: str,
    *,
    threshold: float,
    fidelity_threshold: float,
    kl_factor: float,
) -> Comparison:
    return compare(
        session,
        find_sweep(session, a),
        find_sweep(session, b),
        threshold=threshold,
        fidelity_threshold=fidelity_threshold,
        kl_factor=kl_factor,
    )


def render_comparison(
    result: Comparison,
    a: str,
    b: str,
    fmt: str,
    *,
    threshold: float,
    only_changes: bool,
    width: int = 80,
) -> str | Table:
    """The comparison in one format; changes first by backend, cell, metric (a fixed order)."""
    changes = [c for c in result.changes if c.verdict != SAME or not only_changes]
    headings = ["backend", "cell", "metric", a, b, "change", "95% interval", "over", "verdict"]

    def line(change: Change, short: bool = False) -> list[str]:
        metric = (
            BY_NAME[change.metric].heading
            if short and change.metric in BY_NAME
            else ("prefill ms" if short and change.metric == "prefill_ms_p50" else change.metric)
        )
        cell = change.cell.replace("ctx=", "").replace(" gen=", "/").replace(" threads=", "/")
        return [
            change.label,
            cell if short else change.cell,
            metric,
            f"{change.before:.4g}",
            f"{change.after:.4g}",
            _change_text(change),
            _interval_text(change),
            change.basis,
            change.verdict,
        ]

    if fmt == "json":
        return json.dumps(
            {
                "a": a,
                "b": b,
                "margin": threshold,
                "summary": result.summary(),
                "changes": [
                    {
                        "backend": c.label,
                        "cell": c.cell,
                        "metric": c.metric,
                        "before": c.before,
                        "after": c.after,
                        "change": c.ratio,  # after / before; top-1: after - before
                        "low": c.low,
                        "high": c.high,
                        "basis": c.basis,
                        "verdict": c.verdict,
                    }
                    for c in changes
                ],
                "newly_failed": result.newly_failed,
                "missing": result.only_in_a,
                "only_in_b": result.only_in_b,
                "not_compared": result.not_compared,
            },
            indent=2,
            default=str,
        )
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows([headings, *(line(c) for c in changes)])
        return out.getvalue()
    if fmt == "markdown":
        notes = "".join(f"- {note}\n" for note in comparison_notes(result, a, b))
        return (
            render.to_markdown(headings, [line(c) for c in changes])
            + f"\n{result.summary()}\n"
            + (f"\n{notes}" if notes else "")
        )
    title = f"{a} -> {b} (95% intervals; same: inside ±{threshold:.0%})"
    colours = {SLOWER: "red", WORSE: "red", FASTER: "green", BETTER: "green", UNKNOWN: "yellow"}
    styles = {i: colours.get(c.verdict) for i, c in enumerate(changes)}
    headings[1] = "ctx/gen/thr"
    del headings[7]  # the basis: at 80 columns it is a note line instead (comparison_notes)
    columns = [Column(h, h, "{}", 0) for h in headings]
    body = [line(c, short=True)[:7] + [c.verdict] for c in changes]
    return render.to_table(title, columns, body, styles, width=width)


def _change_text(change: Change) -> str:
    if change.metric == "top1_agreement":
        return f"{change.ratio:+.3f}"
    return f"{change.ratio:.3f}x"


def _interval_text(change: Change) -> str:
    if change.low is None or change.high is None:
        return "-"
    if change.metric == "top1_agreement":
        return f"{change.low:+.3f}..{change.high:+.3f}"
    return f"{change.low:.3f}-{change.high:.3f}"


def comparison_notes(result: Comparison, a: str, b: str) -> list[str]:
    notes = [f"newly failed in {b}: {name}" for name in result.newly_failed]
    notes += [f"missing in {b} (only in {a}): {name}" for name in result.only_in_a]
    notes += [f"only in {b}: {name}" for name in result.only_in_b]
    notes += [f"not compared: {name}" for name in result.not_compared]
    lone = sorted({c.basis for c in result.changes if c.basis.endswith("repeats")})
    if lone:
        notes.append(
            f"speed intervals over {', '.join(lone)}: a sweep ran these cells in one round, "
            "so the drift between runs is not in them (rounds: 2 or more measure it)"
        )
    return notes
