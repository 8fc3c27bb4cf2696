"""`farm report`: result rows of a sweep as a terminal table, markdown, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from db.models import Job, Result, Sweep

FORMATS = ("table", "markdown", "csv", "json")

# (row key, column heading, format) in display order.
COLUMNS: list[tuple[str, str, str]] = [
    ("label", "backend", "{}"),
    ("context", "context", "{}"),
    ("generation", "gen", "{}"),
    ("threads", "threads", "{}"),
    ("prefill_ms", "prefill ms", "{:.1f}"),
    ("decode_ms", "decode ms/tok", "{:.2f}"),
    ("decode_ms_p50", "p50", "{:.2f}"),
    ("decode_ms_p90", "p90", "{:.2f}"),
    ("decode_tokens_per_s", "tok/s", "{:.1f}"),
    ("e2e_s", "e2e s", "{:.3f}"),
    ("cv", "cv", "{:.1%}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("status", "status", "{}"),
]


# Result columns every row carries (None for a job without a result).
FIGURES = ("prefill_ms", "decode_ms", "decode_ms_p50", "decode_ms_p90", "decode_ms_p99",
           "decode_tokens_per_s", "e2e_s", "cv", "noisy", "rss_peak_bytes", "load_s")  # fmt: skip


class ReportError(LookupError):
    """Nothing to report (no such sweep, empty database)."""


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


def result_rows(session: Session, sweep: Sweep, baseline: str) -> list[dict[str, Any]]:
    """One dict per job: spec fields, figures (None when failed) and the speedup."""
    jobs = session.scalars(
        select(Job)
        .where(Job.sweep_id == sweep.id)
        .options(selectinload(Job.result).selectinload(Result.environment))
        .order_by(Job.label, Job.context, Job.generation, Job.threads)
    ).all()
    rows = [_row(job) for job in jobs]
    _add_speedup(rows, baseline)
    return rows


def _row(job: Job) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": job.key,
        "label": job.label,
        "backend": job.backend,
        "context": job.context,
        "generation": job.generation,
        "threads": job.threads,
        "status": job.status,
        "error": (job.error or "").strip().splitlines()[-1] if job.error else None,
    }
    result = job.result
    for name in FIGURES:
        row[name] = getattr(result, name) if result else None
    row["host"] = result.environment.hostname if result else None
    row["cpus"] = result.cpus if result else None
    return row


def _add_speedup(rows: list[dict[str, Any]], baseline: str) -> None:
    """Decode tokens/s against the baseline backend's row in the same grid cell."""
    cell = lambda row: (row["context"], row["generation"], row["threads"])  # noqa: E731
    reference = {cell(r): r for r in rows if r["backend"] == baseline and r["status"] == "done"}
    reference |= {cell(r): r for r in rows if r["label"] == baseline and r["status"] == "done"}
    for row in rows:
        base = reference.get(cell(row))
        ok = base and row["decode_tokens_per_s"] and base["decode_tokens_per_s"]
        row["speedup"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"] if ok else None


def render(rows: list[dict[str, Any]], fmt: str, *, title: str, console: Console) -> str | None:
    """Text for markdown/csv/json; the table format prints straight to `console`."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=_json_value)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["key"])
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    cells = [[_cell(row, key, spec) for key, _, spec in COLUMNS] for row in rows]
    headings = [heading for _, heading, _ in COLUMNS]
    if fmt == "markdown":
        lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
        lines += ["| " + " | ".join(line) + " |" for line in cells]
        lines += _failures(rows)
        return "\n".join(lines) + "\n"
    table = Table(title=title)
    for _, heading, spec in COLUMNS:
        table.add_column(heading, justify="left" if spec == "{}" else "right")
    for row, line in zip(rows, cells, strict=True):
        table.add_row(*map(Text, line), style="red" if row["status"] == "failed" else None)
    # Piped output has no terminal width to fit; never squeeze figures into ellipses.
    out = console if console.is_terminal else Console(width=220, file=console.file)
    out.print(table)
    for line in _failures(rows):
        out.print(line, style="red", markup=False, highlight=False)
    return None


def _cell(row: dict[str, Any], key: str, spec: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = spec.format(value)
    if key == "cv" and row.get("noisy"):
        text += " noisy"
    return text


def _failures(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"failed: {row['label']} ctx={row['context']} gen={row['generation']}: {row['error']}"
        for row in rows
        if row["status"] == "failed"
    ]


def _json_value(value: Any) -> Any:
    return str(value)
