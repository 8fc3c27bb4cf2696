"""The work behind `farm report`, `sweeps`, `show`, `plot` and `compare` (the CLI stays thin)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.status import JobStatus
from db.models import Job, Sweep
from orchestrator.reports import plots, render
from orchestrator.reports.compare import compare
from orchestrator.reports.query import (
    ReportError,
    apply_filters,
    find_sweep,
    find_sweeps,
    group_rows,
    pivot,
    result_rows,
)


@dataclass
class ReportRequest:
    sweeps: list[str] = field(default_factory=list)
    every: bool = False
    backends: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    group_by: str | None = None
    pivot: str | None = None
    baseline: str = "hf"
    fmt: str = "table"


def report(session: Session, request: ReportRequest, console: Console) -> str | None:
    """Text for the chosen format; the table format prints itself and returns None."""
    sweeps = find_sweeps(session, request.sweeps, every=request.every)
    rows = result_rows(session, sweeps, request.baseline)
    rows = apply_filters(rows, backends=request.backends, hosts=request.hosts, where=request.where)
    title = "sweep " + ", ".join(s.name for s in sweeps)
    if request.fmt == "html":
        images = {
            name: png
            for name, (png, _) in draw(session, sweeps, rows, request.baseline).items()
            if png
        }
        sections = list(group_rows(rows, request.group_by).items())
        return render.render_html(title, sections, images)
    if request.pivot:
        headings, body = pivot(rows, request.pivot)
        output = render.render_pivot(headings, body, request.fmt, title)
        return _emit(output, rows, console)
    texts = []
    for heading, group in group_rows(rows, request.group_by).items():
        output = render.render_rows(group, request.fmt, f"{title} {heading}".strip())
        text = _emit(output, group, console)
        if text is not None:
            texts.append(
                (f"## {heading}\n\n" if heading and request.fmt == "markdown" else "") + text
            )
    return "\n".join(texts) if texts else None


def _emit(output: str | Table, rows: list[dict[str, Any]], console: Console) -> str | None:
    if isinstance(output, Table):
        render.print_table(console, output, rows)
        return None
    return output


def draw(session: Session, sweeps: list[Sweep], rows, baseline: str):
    samples = {job.key: job.result.samples for s in sweeps for job in s.jobs if job.result}
    return plots.draw_all(rows, samples, baseline)


def write_plots(session: Session, sweep_name: str | None, out: Path, baseline: str) -> list[str]:
    """Write each figure as DIR/NAME.png; return one line per figure (written or skipped)."""
    sweep = find_sweep(session, sweep_name)
    rows = result_rows(session, [sweep], baseline)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (png, why) in draw(session, [sweep], rows, baseline).items():
        if png is None:
            lines.append(f"skipped {name}: {why}")
        else:
            (out / f"{name}.png").write_bytes(png)
            lines.append(f"wrote {out / (name + '.png')}")
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
            sweep.name, f"{sweep.created_at:%Y-%m-%d %H:%M}", str(len(states)),
            str(states.count(JobStatus.DONE)), str(states.count(JobStatus.FAILED)),
            str(len(states) - states.count(JobStatus.DONE) - states.count(JobStatus.FAILED)),
            ", ".join(hosts) or "-",
        )  # fmt: skip
    return table


def show_job(session: Session, reference: str) -> dict[str, Any]:
    """One job by id or key prefix: spec, status, environment, figures, raw samples, error."""
    query = select(Job).where(Job.key.startswith(reference))
    if reference.isdigit():
        query = select(Job).where((Job.id == int(reference)) | Job.key.startswith(reference))
    jobs = session.scalars(query).all()
    if not jobs:
        raise ReportError(
            f"no job with id or key {reference!r}; see the key column of `farm report -f json`"
        )
    if len(jobs) > 1:
        names = ", ".join(f"{job.sweep.name}/{job.key}" for job in jobs[:5])
        raise ReportError(f"{reference!r} matches {len(jobs)} jobs ({names}); give more of the key")
    job = jobs[0]
    shown: dict[str, Any] = {
        "id": job.id, "sweep": job.sweep.name, "key": job.key, "status": job.status,
        "attempts": job.attempts, "worker": job.worker, "spec": job.spec, "error": job.error,
        "lost_attempts": job.lost_attempts or [],
    }  # fmt: skip
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
    session: Session, a: str, b: str, threshold: float
) -> tuple[Table, list[str], float]:
    """The comparison table, notes (jobs in one sweep only), and the worst regression."""
    result = compare(session, find_sweep(session, a), find_sweep(session, b), threshold=threshold)
    table = Table(title=f"{a} -> {b} (threshold {threshold:.0%}, Mann-Whitney U, alpha 0.05)")
    for heading in ("backend", "cell", "metric", a, b, "ratio", "p", "verdict"):
        table.add_column(heading)
    styles = {"regression": "red", "improvement": "green", "same": None}
    for change in result.changes:
        p_text = "-" if change.p_value is None else f"{change.p_value:.3f}"
        figures = (f"{change.before:.4g}", f"{change.after:.4g}", f"{change.ratio:.3f}", p_text)
        table.add_row(escape(change.label), change.cell, change.metric, *figures, change.verdict,
                      style=styles[change.verdict])  # fmt: skip
    notes = [f"only in {a}: {name}" for name in result.only_in_a]
    notes += [f"only in {b}: {name}" for name in result.only_in_b]
    notes += [f"not compared: {name}" for name in result.not_compared]
    return table, notes, result.worst_regression()
