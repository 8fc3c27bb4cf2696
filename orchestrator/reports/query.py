"""`farm report`: select sweeps and jobs, and turn each job into one flat row.

Rendering (table, markdown, CSV, JSON, HTML) lives in orchestrator/render.py.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from contract.status import JobStatus
from db.models import Job, Result, Sweep

# Every figure a result stores, as a row column (None for a job without a result); the
# raw samples, tokens and violations stay out of rows (`farm show` has them).
NOT_IN_ROWS = {"id", "job_id", "environment_id", "worker", "cpus", "created_at", "samples",
               "tokens", "pinning_violations", "load_extra"}  # fmt: skip
FIGURES = tuple(c.name for c in Result.__table__.columns if c.name not in NOT_IN_ROWS)


class ReportError(LookupError):
    """Nothing to report (no such sweep, empty database, a malformed filter)."""


def find_sweeps(session: Session, names: list[str] | None, *, every: bool = False) -> list[Sweep]:
    """The named sweeps, all of them, or the latest one."""
    if every:
        sweeps = list(session.scalars(select(Sweep).order_by(Sweep.id)))
    elif names:
        sweeps = [find_sweep(session, name) for name in names]
    else:
        sweeps = [find_sweep(session, None)]
    if not sweeps:
        raise ReportError("no sweeps in this database yet; run `farm submit --grid FILE` first")
    return sweeps


def find_sweep(session: Session, name: str | None) -> Sweep:
    """The named sweep, or the latest one."""
    query = select(Sweep).order_by(Sweep.id.desc())
    if name is not None:
        query = select(Sweep).where(Sweep.name == name)
    sweep = session.scalars(query.limit(1)).first()
    if sweep is None:
        if name is None:
            raise ReportError("no sweeps in this database yet; run `farm submit --grid FILE` first")
        known = ", ".join(session.scalars(select(Sweep.name)).all()) or "none"
        raise ReportError(f"no sweep named {name!r}; known sweeps: {known}")
    return sweep


def status_counts(session: Session, sweep: Sweep) -> dict[str, int]:
    """How many of the sweep's jobs are in each state, counted by the database."""
    query = select(Job.status, func.count()).where(Job.sweep_id == sweep.id).group_by(Job.status)
    return {str(status): count for status, count in session.execute(query)}


def result_rows(session: Session, sweeps: list[Sweep], baseline: str) -> list[dict[str, Any]]:
    """One dict per job: sweep, spec fields, figures (None when failed) and the speedup."""
    jobs = session.scalars(
        select(Job)
        .where(Job.sweep_id.in_([sweep.id for sweep in sweeps]))
        .options(selectinload(Job.result).selectinload(Result.environment), selectinload(Job.sweep))
        .order_by(Job.sweep_id, Job.label, Job.context, Job.generation, Job.threads)
    ).all()
    rows = [job_row(job) for job in jobs]
    add_speedup(rows, baseline)
    return rows


def job_row(job: Job) -> dict[str, Any]:
    result = job.result
    row: dict[str, Any] = {
        "sweep": job.sweep.name,
        "key": job.key,
        "label": job.label,
        "backend": job.backend,
        "context": job.context,
        "generation": job.generation,
        "threads": job.threads,
        "status": job.status,
        "attempts": job.attempts,
        "error": (job.error or "").strip().splitlines()[-1] if job.error else None,
    }
    for name in FIGURES:
        row[name] = getattr(result, name) if result else None
    row["pinning_ok"] = (not result.pinning_violations) if result else None
    row["host"] = result.environment.hostname if result else None
    row["cpus"] = result.cpus if result else None
    row["worker"] = result.worker if result else job.worker
    return row


def add_speedup(rows: list[dict[str, Any]], baseline: str) -> None:
    """Decode tokens/s against the baseline backend's row in the same sweep and grid cell."""

    def cell(row):
        return (row["sweep"], row["context"], row["generation"], row["threads"], row["host"])

    done = [r for r in rows if r["status"] == JobStatus.DONE]
    reference = {cell(r): r for r in done if r["backend"] == baseline}
    reference |= {cell(r): r for r in done if r["label"] == baseline}  # a label is more exact
    for row in rows:
        base = reference.get(cell(row))
        ok = base and row["decode_tokens_per_s"] and base["decode_tokens_per_s"]
        row["speedup"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"] if ok else None


def apply_filters(
    rows: list[dict[str, Any]], *, backends: list[str], hosts: list[str], where: list[str]
) -> list[dict[str, Any]]:
    """Keep rows whose backend (name or label) and host match, and every `key=value`."""
    conditions = []
    for clause in where:
        key, sep, value = clause.partition("=")
        if not sep or not rows or key not in rows[0]:
            known = ", ".join(rows[0]) if rows else "none"
            raise ReportError(f"--where {clause!r}: use KEY=VALUE with a KEY among: {known}")
        conditions.append((key, value))
    return [
        row
        for row in rows
        if (not backends or row["backend"] in backends or row["label"] in backends)
        and (not hosts or row["host"] in hosts)
        and all(str(row[key]) == value for key, value in conditions)
    ]


def group_rows(rows: list[dict[str, Any]], field: str | None) -> dict[str, list[dict[str, Any]]]:
    if field is None:
        return {"": rows}
    if rows and field not in rows[0]:
        raise ReportError(f"--group-by {field!r}: not a column; use one of: {', '.join(rows[0])}")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[f"{field}={row[field]}"].append(row)
    return dict(groups)


def pivot(rows: list[dict[str, Any]], spec: str) -> tuple[list[str], list[list[Any]]]:
    """`ROWS:COLUMNS:VALUE`, e.g. label:generation:decode_tokens_per_s -> headings, cells.

    A cell holds the mean of VALUE over the matching done rows (None if there are none).
    """
    parts = spec.split(":")
    if len(parts) != 3 or (rows and any(part not in rows[0] for part in parts)):
        known = ", ".join(rows[0]) if rows else "none"
        raise ReportError(f"--pivot {spec!r}: write ROWS:COLUMNS:VALUE with columns among: {known}")
    row_key, column_key, value_key = parts
    cells: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row[value_key] is not None:
            cells[(row[row_key], row[column_key])].append(row[value_key])
    row_values = sorted({row[row_key] for row in rows}, key=str)
    column_values = sorted({row[column_key] for row in rows}, key=lambda v: (str(type(v)), v))
    headings = [f"{row_key} \\ {column_key}", *map(str, column_values)]
    body = [
        [
            value,
            *(fmean(cells[(value, c)]) if cells.get((value, c)) else None for c in column_values),
        ]
        for value in row_values
    ]
    return headings, body
