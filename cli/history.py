"""`farm history`: every cell's results across sweeps and versions, change points found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whistle_stop.cli.common import DEFAULT_DB, DbOption, app, console, fail, open_existing
from whistle_stop.cli.reports import Format, FormatOption, _check_out, _fraction, write


@app.command()
def history(
    *,
    backend: Annotated[
        list[str] | None,
        typer.Option(metavar="LABEL", help="Only this backend (name or label); repeatable."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CLAUSE", help="Only rows where COLUMN OP VALUE, e.g. ctx=128. Repeatable."
        ),
    ] = None,
    changes: Annotated[
        bool, typer.Option("--changes", help="Find change points in speed and fidelity.")
    ] = False,
    alpha: Annotated[
        str, typer.Option(help="A change's permutation p-value must be below this.")
    ] = "0.05",
    format: FormatOption = Format.table,
    out: Annotated[
        Path | None, typer.Option(help="Write to this file (markdown, csv, json, html).")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Also draw each series as DIR/history-N.png.")
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Each cell's results across every sweep, oldest first: tok/s with its 95% interval,
    fidelity, the revision and what software changed between points.

    A series is one path (label, backend, options) on one model, context, generation
    length and thread count, on one machine class (CPU model and ISA). With --changes,
    each series is searched for change points (binary segmentation with a permutation
    test, reports/changes.py), in speed and in fidelity, each with its size and p-value.
    """
    from whistle_stop.reports import history as timeline
    from whistle_stop.reports.query import ReportError, apply_filters, find_sweeps, result_rows

    if out is not None and format is Format.table:
        raise fail("--out writes markdown, csv, json or html: add -f markdown (or csv, ...)")
    level = _fraction(alpha, "--alpha")
    if not 0 < level < 1:
        raise fail(f"--alpha {alpha!r}: a p-value threshold between 0 and 1, e.g. 0.05")
    _check_out(out, db)
    if plot is not None:
        _check_out(plot, db, directory=True)
    with open_existing(db) as session:
        try:
            sweeps = find_sweeps(session, None, every=True)
            by_baseline: dict[str, list] = {}  # each sweep's speedups against its own
            for sweep in sweeps:
                by_baseline.setdefault(sweep.baseline or "hf", []).append(sweep)
            rows = [r for b, group in by_baseline.items() for r in result_rows(session, group, b)]
            order = {sweep.name: index for index, sweep in enumerate(sweeps)}
            rows.sort(key=lambda row: order[row["sweep"]])  # oldest sweep first, as before
            rows = apply_filters(rows, backends=backend or [], hosts=[], where=where or [])
        except ReportError as error:
            raise fail(str(error)) from None
    series = timeline.build_series(rows, changes=changes, alpha=level)
    if not series:
        raise fail("no finished results match; farm history needs at least one done job")
    if plot is not None:
        from whistle_stop.artifacts import write_atomically
        from whistle_stop.reports import plots

        try:
            plot.mkdir(parents=True, exist_ok=True)
            for number, one in enumerate(series, 1):
                indices = [c.index for c in one.changes.get("decode_tokens_per_s", [])]
                png = plots.history(one.title, one.points, indices)
                write_atomically(plot / f"history-{number}.png", png)
        except OSError as error:
            raise fail(f"--plot {plot}: cannot write there ({error.strerror or error})") from None
    if format is Format.table:
        timeline.print_tables(series, console, console.width)
    else:
        html = format is Format.html
        write(timeline.render_html(series) if html else timeline.render(series, format.value), out)
