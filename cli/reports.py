"""`farm report`, `sweeps`, `show`, `plot` and `compare`: reading what the farm measured.

Every one of them opens the database read-only: reading never creates or changes a file
(except the one `--out` names).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from whistle_stop.cli.common import DEFAULT_DB, DbOption, app, console, errors, fail, open_existing


class Format(StrEnum):
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"
    html = "html"


class View(StrEnum):  # reports/analyses.py: conclusions over many sweeps
    noise = "noise"
    calibration = "calibration"
    goals = "goals"
    fidelity = "fidelity"
    limits = "limits"


class CompareFormat(StrEnum):  # a comparison is a table of changes: no HTML page
    table = "table"
    markdown = "markdown"
    csv = "csv"
    json = "json"


FormatOption = Annotated[
    Format,
    typer.Option("--format", "-f", case_sensitive=False, help="How to print the results."),
]
SweepsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--sweep", metavar="NAME", help="Sweep name; repeat for several (default: the latest)."
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every sweep in the database.")]
BaselineOption = Annotated[
    str | None,
    typer.Option(
        help="Backend (name or label) the speedup compares against [default: the "
        "sweep's baseline:, hf unless it says otherwise]."
    ),
]


def _split(values: list[str] | None) -> list[str]:
    """`--columns a,b --columns c` -> [a, b, c]."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_out(out: Path | None, db: str | None, *, directory: bool = False) -> None:
    """Refuse an --out that cannot be written, or that would destroy data (the database
    this command reads, or any SQLite file), before anything is read."""
    if out is None:
        return
    if not out.name or "\x00" in str(out):
        raise fail(f"--out {str(out)!r} is not a file name")
    if directory:
        if out.exists() and not out.is_dir():
            raise fail(f"--out {out} is a file; farm plot writes a directory of PNG files")
        return
    if out.is_dir():
        raise fail(f"--out {out} is a directory; name a file, e.g. {out / 'report.html'}")
    if not out.parent.is_dir():
        raise fail(f"--out {out}: no directory {out.parent}; create it first")
    if _is_database(out, db):
        raise fail(f"--out {out} is a database; nothing was written: name another file")


def _is_database(path: Path, db: str | None) -> bool:
    from whistle_stop.db.session import database_url

    url = database_url(db) if db else ""
    here = Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
    targets = {here, *(here.with_name(here.name + s) for s in ("-wal", "-shm"))} if here else set()
    if any(path.resolve() == target.resolve() for target in targets):
        return True
    try:
        with open(path, "rb") as file:
            return file.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False  # absent (it will be created) or unreadable (the write will say)


def write(text: str, out: Path | None) -> None:
    """To stdout, or to `out` whole or not at all: written beside it, then renamed over it,
    so an interrupted write never leaves half a report (nor half of what was there)."""
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    from whistle_stop.artifacts import write_atomically

    try:
        write_atomically(out, text.encode())
    except OSError as error:
        raise fail(f"--out {out}: cannot write it ({error.strerror or error})") from None
    errors.print(f"wrote {out}", highlight=False)


@app.command()
def report(
    *,
    sweep: SweepsOption = None,
    all_sweeps: AllOption = False,
    backend: Annotated[
        list[str] | None,
        typer.Option(metavar="LABEL", help="Only this backend (name or label); repeatable."),
    ] = None,
    host: Annotated[
        list[str] | None, typer.Option(metavar="HOST", help="Only results from this host.")
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            metavar="CLAUSE",
            help="Only rows where COLUMN OP VALUE, OP one of = != < <= > >=; "
            "e.g. ctx=128 or 'tok/s>100'. Repeatable.",
        ),
    ] = None,
    group_by: Annotated[
        str | None, typer.Option(help="One table per value of this column, e.g. host.")
    ] = None,
    pivot: Annotated[
        str | None,
        typer.Option(help="ROWS:COLUMNS:VALUE, e.g. label:gen:tok/s (mean over the rest)."),
    ] = None,
    columns: Annotated[
        list[str] | None,
        typer.Option(
            metavar="COLUMNS",
            help="Columns to show, e.g. backend,ctx,tok/s,key, or all "
            "(default: as many as the terminal fits).",
        ),
    ] = None,
    sort: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN", help="Sort by this column; -COLUMN for descending."),
    ] = None,
    baseline: BaselineOption = None,
    view: Annotated[
        View | None,
        typer.Option(
            case_sensitive=False,
            help="Instead of the rows, a conclusion over the sweeps: noise (noise floor, "
            "intervals across sweeps), calibration (verdicts on known slowdowns), goals, "
            "fidelity (speed beside fidelity, and the reference's outlier channels), or "
            "limits (the native engine across model sizes and beside a busy neighbour).",
        ),
    ] = None,
    format: FormatOption = Format.table,
    out: Annotated[
        Path | None, typer.Option(help="Write to this file (markdown, csv, json, html).")
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Print results, one row per job, failed jobs included.

    Columns: prefill and decode times, tokens/s, speedup over --baseline, agreement
    with float32 (teacher-forced top-1, KL), share of the memory roofline, CV (with a
    noisy flag), status and the job key (`farm show KEY`). A terminal table shows the
    columns that fit; numbers are never cut. HTML is one page with the plots inline.
    """
    from whistle_stop.reports.query import ReportError
    from whistle_stop.reports.views import ReportRequest
    from whistle_stop.reports.views import report as make_report

    if out is not None and format is Format.table:
        raise fail("--out writes markdown, csv, json or html: add -f markdown (or csv, ...)")
    if view and format not in (Format.table, Format.markdown):
        raise fail(f"--view {view.value} is a markdown text: use -f markdown or the default")
    if view and (group_by or pivot or columns or sort):
        raise fail("--view takes the sweeps and filters only, not --group-by, --pivot, ...")
    _check_out(out, db)
    request = ReportRequest(
        sweeps=sweep or [],
        every=all_sweeps,
        backends=backend or [],
        hosts=host or [],
        where=where or [],
        group_by=group_by,
        pivot=pivot,
        baseline=baseline,
        fmt=format.value,
        columns=_split(columns),
        sort=_split(sort),
        width=console.width,
        view=view.value if view else None,
    )
    with open_existing(db) as session:
        try:
            text = make_report(session, request, console, errors)
        except ReportError as error:
            raise fail(str(error)) from None
    if text is not None:
        write(text, out)


@app.command()
def sweeps(*, db: DbOption = DEFAULT_DB) -> None:
    """List the sweeps: when, how many jobs done, failed and unfinished, and on which hosts."""
    from whistle_stop.reports.views import sweeps_table

    with open_existing(db) as session:
        console.print(sweeps_table(session))


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="Job id, key, unique key prefix, or SWEEP/KEY.")],
    *,
    sweep: Annotated[str | None, typer.Option(help="Look in this sweep only.")] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Print one job: spec, status, lost attempts, environment, figures, raw samples and
    error (JSON). The same spec in two sweeps is one key twice: name it SWEEP/KEY."""
    import json

    from whistle_stop.reports.query import ReportError
    from whistle_stop.reports.views import show_job

    with open_existing(db) as session:
        try:
            typer.echo(json.dumps(show_job(session, job, sweep), indent=2))
        except ReportError as error:
            raise fail(str(error)) from None


@app.command()
def plot(
    *,
    out: Annotated[Path, typer.Option(help="Directory for the PNG files.")],
    sweep: SweepsOption = None,
    all_sweeps: AllOption = False,
    baseline: BaselineOption = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write the sweep's figures as PNG: latency against generation length, decode speed
    in every cell, prefill against context, speed against fidelity (mean KL, log axis,
    with the Pareto front), and the roofline share. Several sweeps are drawn side by side.

    A figure whose data is missing (one context size only, say) is skipped, with the reason.
    """
    from whistle_stop.reports.query import ReportError
    from whistle_stop.reports.views import write_plots

    _check_out(out, db, directory=True)
    with open_existing(db) as session:
        try:
            lines = write_plots(session, sweep or [], all_sweeps, out, baseline)
        except ReportError as error:
            raise fail(str(error)) from None
        except OSError as error:
            raise fail(f"--out {out}: cannot write there ({error.strerror or error})") from None
    for line in lines:
        errors.print(line, highlight=False, markup=False)


def _fraction(text: str, option: str = "--threshold") -> float:
    """'5%' or '0.05' -> 0.05; a negative or non-finite fraction is refused (it would flag
    identical values as changes)."""
    try:
        value = float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise fail(f"{option} {text!r} is not a fraction; write 5% or 0.05") from None
    if not 0 <= value < float("inf"):
        raise fail(f"{option} {text!r}: a fraction of 0 or more, e.g. 5% or 0.05")
    return value


@app.command(name="compare")
def compare_sweeps(
    a: Annotated[str, typer.Argument(help="The sweep before (the reference).")],
    b: Annotated[str, typer.Argument(help="The sweep after.")],
    *,
    threshold: Annotated[
        str,
        typer.Option(
            help="The speed margin, e.g. 5% or 0.05: same when the interval lies inside "
            "±this, faster or slower when it lies beyond half of it."
        ),
    ] = "5%",
    fail_above: Annotated[
        str | None,
        typer.Option(
            help="Exit 1 on a decided speed regression (its whole interval below "
            "1 - margin/2) that lost more than this (e.g. 5%), or a decided fidelity "
            "regression, a newly failed or a missing job: a CI gate."
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            help="Exit 1 as --fail-above does (any decided regression, without it), "
            "and also where a cell's speed or fidelity is unknown: add rounds."
        ),
    ] = False,
    allow_missing: Annotated[
        bool, typer.Option(help="With --fail-above: jobs missing from B do not fail the gate.")
    ] = False,
    fidelity_threshold: Annotated[
        float, typer.Option(help="Top-1 agreement's margin (absolute), as --threshold's.")
    ] = 0.01,
    kl_factor: Annotated[
        float, typer.Option(help="Mean KL's margin, a factor: same within 1/this..this.")
    ] = 2.0,
    only_changes: Annotated[
        bool, typer.Option(help="Leave out the metrics that did not change.")
    ] = False,
    format: Annotated[
        CompareFormat,
        typer.Option("--format", "-f", case_sensitive=False, help="How to print it."),
    ] = CompareFormat.table,
    out: Annotated[
        Path | None, typer.Option(help="Write to this file (markdown, csv or json).")
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Compare the same jobs in two sweeps, figure by figure, each change with its 95%
    interval (over rounds; over repeats where a sweep ran one round) and a verdict:
    faster, slower, same or unknown. The last line counts the cells' verdicts."""
    from whistle_stop.reports.query import ReportError
    from whistle_stop.reports.views import comparison, comparison_notes, render_comparison

    if out is not None and format is CompareFormat.table:
        raise fail("--out writes markdown, csv or json: add -f markdown (or csv, json)")
    _check_out(out, db)
    limit = _fraction(fail_above, "--fail-above") if fail_above else (0.0 if strict else None)
    threshold_value = _fraction(threshold)
    if fidelity_threshold < 0 or kl_factor < 1:
        raise fail("--fidelity-threshold is 0 or more and --kl-factor 1 or more")
    with open_existing(db) as session:
        try:
            result = comparison(
                session,
                a,
                b,
                threshold=threshold_value,
                fidelity_threshold=fidelity_threshold,
                kl_factor=kl_factor,
            )
        except ReportError as error:
            raise fail(str(error)) from None
    output = render_comparison(
        result,
        a,
        b,
        format.value,
        threshold=threshold_value,
        only_changes=only_changes,
        width=console.width,
    )
    if isinstance(output, str):
        write(output, out)
    else:
        console.print(output)
    if format is CompareFormat.table:
        for note in comparison_notes(result, a, b):
            errors.print(note, highlight=False, markup=False, soft_wrap=True)
        errors.print(result.summary(), highlight=False)
    if limit is None:
        return
    reasons = []
    slower = result.speed_regressions(limit)
    if slower:
        worst = max(c.loss for c in slower)
        reasons.append(
            f"{len(slower)} decided speed regression(s) above --fail-above {limit:.1%} "
            f"(worst {worst:.1%})"
        )
    if strict and result.undecided():
        reasons.append(f"{len(result.undecided())} unknown verdict(s) (--strict)")
    if result.fidelity_regressions():
        reasons.append(f"{len(result.fidelity_regressions())} fidelity regression(s)")
    if result.newly_failed:
        reasons.append(f"{len(result.newly_failed)} job(s) newly failed")
    if result.only_in_a and not allow_missing:
        reasons.append(f"{len(result.only_in_a)} job(s) missing from {b} (--allow-missing)")
    if reasons:
        raise fail("; ".join(reasons), code=1)


@app.command()
def results(
    directory: Annotated[
        Path, typer.Argument(help="Where the exports (farm report -f json) are.")
    ] = Path("docs/results"),
    *,
    readme: Annotated[
        Path,
        typer.Option(help="Put the newest page's verdict in this file, between its markers."),
    ] = Path("README.md"),
    pages_only: Annotated[bool, typer.Option(help="Write the pages, leave the README.")] = False,
) -> None:
    """Results pages from stored exports: DIR/NAME.json -> DIR/NAME.md, and the README's
    headline from the newest. Nothing is read from a database: the exports are the record."""
    from whistle_stop.reports.results import ExportError, write_pages

    if not directory.is_dir():
        raise fail(f"{directory} is not a directory of exports (farm report -f json --out ...)")
    if not pages_only and not readme.is_file():
        raise fail(f"--readme {readme}: no such file (--pages-only leaves the README)")
    try:
        written = write_pages(directory, None if pages_only else readme)
    except ExportError as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(f"cannot write in {directory} ({error.strerror or error})") from None
    for path in written:
        errors.print(f"wrote {path}", highlight=False)
    if not written:
        errors.print("every page was up to date", highlight=False)


@app.command(hidden=True)
def reference(
    out: Annotated[Path, typer.Option(help="Where to write it.")] = Path("docs/sweep-file.md"),
) -> None:
    """Write the sweep-file reference from the validation models (`make docs`)."""
    from whistle_stop.artifacts import write_atomically
    from whistle_stop.orchestrator.reference import reference as make_reference

    _check_out(out, None)
    try:
        write_atomically(out, make_reference().encode())
    except OSError as error:
        raise fail(f"--out {out}: cannot write it ({error.strerror or error})") from None
    errors.print(f"wrote {out}", highlight=False)
