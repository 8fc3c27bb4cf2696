"""`farm report`, `sweeps`, `show`, `plot` and `compare`: reading what the farm measured."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cli.common import DEFAULT_DB, DbOption, app, console, fail, open_existing, write


@app.command()
def report(
    *,
    sweep: Annotated[
        list[str] | None, typer.Option(help="Sweep name; repeat for several (default: the latest).")
    ] = None,
    all_sweeps: Annotated[bool, typer.Option("--all", help="Every sweep in the database.")] = False,
    backend: Annotated[
        list[str] | None, typer.Option(help="Only this backend (name or label); repeatable.")
    ] = None,
    host: Annotated[list[str] | None, typer.Option(help="Only results from this host.")] = None,
    where: Annotated[
        list[str] | None, typer.Option(help="Only rows where KEY=VALUE, e.g. context=128.")
    ] = None,
    group_by: Annotated[
        str | None, typer.Option(help="One table per value of this column, e.g. host.")
    ] = None,
    pivot: Annotated[
        str | None,
        typer.Option(help="ROWS:COLUMNS:VALUE, e.g. label:generation:decode_tokens_per_s."),
    ] = None,
    baseline: Annotated[
        str, typer.Option(help="Backend (name or label) the speedup column compares against.")
    ] = "hf",
    format: Annotated[
        str, typer.Option("--format", "-f", help="table, markdown, csv, json or html.")
    ] = "table",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Print results, one row per job, failed jobs included.

    Columns: prefill and decode times, tokens/s, speedup over --baseline, agreement
    with float32 (teacher-forced top-1, KL), share of the memory roofline, CV (with a
    noisy flag) and status. HTML is one self-contained page with the plots inline.
    """
    from orchestrator.reports.query import ReportError
    from orchestrator.reports.render import FORMATS
    from orchestrator.reports.views import ReportRequest
    from orchestrator.reports.views import report as make_report

    if format not in FORMATS:
        raise fail(f"unknown --format {format!r}; use one of: {', '.join(FORMATS)}")
    request = ReportRequest(
        sweeps=sweep or [], every=all_sweeps, backends=backend or [], hosts=host or [],
        where=where or [], group_by=group_by, pivot=pivot, baseline=baseline, fmt=format,
    )  # fmt: skip
    with open_existing(db) as session:
        try:
            text = make_report(session, request, console)
        except ReportError as error:
            raise fail(str(error)) from None
    if text is not None:
        write(text, out)


@app.command()
def sweeps(*, db: DbOption = DEFAULT_DB) -> None:
    """List the sweeps: when, how many jobs done, failed and pending, and on which hosts."""
    from orchestrator.reports.views import sweeps_table

    with open_existing(db) as session:
        console.print(sweeps_table(session))


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="Job id, or its key (or a unique prefix of it).")],
    *,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Print one job: spec, status, environment, figures, raw samples and error (JSON)."""
    import json

    from orchestrator.reports.query import ReportError
    from orchestrator.reports.views import show_job

    with open_existing(db) as session:
        try:
            typer.echo(json.dumps(show_job(session, job), indent=2))
        except ReportError as error:
            raise fail(str(error)) from None


@app.command()
def plot(
    *,
    out: Annotated[Path, typer.Option(help="Directory for the PNG files.")],
    sweep: Annotated[str | None, typer.Option(help="Sweep name (default: the latest).")] = None,
    baseline: Annotated[
        str, typer.Option(help="Backend the speedup labels compare against.")
    ] = "hf",
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write the sweep's figures as PNG: latency against generation length, decode speed,
    prefill against context, speed against fidelity, and the roofline share.

    A figure whose data is missing (one context size only, say) is skipped, with the reason.
    """
    from orchestrator.reports.query import ReportError
    from orchestrator.reports.views import write_plots

    with open_existing(db) as session:
        try:
            lines = write_plots(session, sweep, out, baseline)
        except ReportError as error:
            raise fail(str(error)) from None
    for line in lines:
        console.print(line, highlight=False)


def _fraction(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    try:
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a fraction; write 5% or 0.05") from None


@app.command(name="compare")
def compare_sweeps(
    a: Annotated[str, typer.Argument(help="The sweep before (the reference).")],
    b: Annotated[str, typer.Argument(help="The sweep after.")],
    *,
    threshold: Annotated[
        str, typer.Option(help="Smallest change that counts, e.g. 5% or 0.05.")
    ] = "5%",
    fail_above: Annotated[
        str | None,
        typer.Option(help="Exit 1 if any regression is worse than this (e.g. 5%): a CI gate."),
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Compare the same jobs in two sweeps, metric by metric, with a significance test
    (Mann-Whitney U on the raw repeats). Jobs present in only one sweep are listed."""
    from orchestrator.reports.query import ReportError
    from orchestrator.reports.views import comparison

    limit = _fraction(fail_above) if fail_above else None
    with open_existing(db) as session:
        try:
            table, notes, worst = comparison(session, a, b, _fraction(threshold))
        except ReportError as error:
            raise fail(str(error)) from None
    render_out = console if console.is_terminal else Console(width=200, file=console.file)
    render_out.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False)
    if limit is not None and worst > limit:
        raise fail(f"a regression of {worst:.1%} is above --fail-above {limit:.1%}", code=1)
