"""`farm`: the whistle-stop command line. Each command is a thin wrapper around one function."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from worker.pinning import CpuSetError

app = typer.Typer(
    help="whistle-stop: a benchmark farm for fast GPT inference on CPUs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,  # a plain traceback: short, and pastes into an issue
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        help="SQLite file path or any SQLAlchemy URL for the results database.",
        envvar="FARM_DB_URL",
    ),
]
CacheOption = Annotated[
    Path,
    typer.Option(
        help="Where workers keep materialised models and exported artifacts.",
        envvar="FARM_CACHE_DIR",
    ),
]
BrokerOption = Annotated[
    str | None,
    typer.Option(
        help="Redis URL of the Celery broker, e.g. redis://host:6379/0. "
        "Without one, jobs run here on the embedded default.",
        envvar="FARM_BROKER_URL",
    ),
]
QueueOption = Annotated[str, typer.Option(help="Celery queue the jobs go through.")]
DEFAULT_CACHE = Path("~/.cache/whistle-stop").expanduser()


def fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    return typer.Exit(code)


@app.command()
def submit(
    *,
    grid: Annotated[Path, typer.Option(help="The sweep YAML file (see examples/).")],
    db: DbOption = "farm.db",
    broker: BrokerOption = None,
    queue: QueueOption = "farm",
    wait: Annotated[
        bool,
        typer.Option(help="With a broker: wait for the results (--no-wait: enqueue and exit)."),
    ] = True,
    workers: Annotated[
        int | None,
        typer.Option(help="Embedded mode: split this machine's CPUs into N pinned workers."),
    ] = None,
    cpus: Annotated[
        list[str] | None,
        typer.Option(help="Embedded mode: one pinned worker per CPU set, e.g. --cpus 0 --cpus 1."),
    ] = None,
    rerun: Annotated[bool, typer.Option(help="Run jobs again even if already done.")] = False,
    cache_dir: CacheOption = DEFAULT_CACHE,
) -> None:
    """Expand a sweep file into jobs and run them, storing each result as it lands.

    With no broker configured, jobs run on this machine in pinned worker
    processes (the embedded default): nothing to install, no server. With
    --broker, jobs go to `farm worker` processes through Celery and Redis.
    Re-submitting a sweep skips the jobs already done.
    """
    from orchestrator.submit import plan_cpu_sets, submit_embedded
    from orchestrator.sweep import SweepError, load_sweep

    try:
        plan = load_sweep(grid)
        cpu_sets = plan_cpu_sets(workers, cpus)
    except (SweepError, CpuSetError) as error:
        raise fail(str(error)) from None
    if broker:
        _submit_farm(plan, db, broker, queue, rerun, wait)
        return
    sessions = _sessions(db)
    console.print(
        f"sweep [bold]{plan.name}[/bold]: {len(plan.jobs)} job(s) on "
        f"{len(cpu_sets)} embedded worker(s) pinned to {_sets(cpu_sets)}"
    )
    try:
        summary = asyncio.run(
            submit_embedded(
                plan, sessions, cpu_sets=cpu_sets, cache_dir=cache_dir, rerun=rerun, console=console
            )
        )
    except KeyboardInterrupt:
        raise fail(
            "interrupted; finished results are kept, submit again to run the rest", 130
        ) from None
    console.print(
        f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped. "
        f"See the results with: farm report --sweep {summary.sweep}"
    )


def _submit_farm(plan, db: str, broker: str, queue: str, rerun: bool, wait: bool) -> None:
    from orchestrator.farm import BrokerError, submit_farm

    try:
        summary = asyncio.run(
            submit_farm(
                plan,
                lambda: _sessions(db),
                broker_url=broker,
                queue=queue,
                rerun=rerun,
                wait=wait,
                console=console,
            )  # fmt: skip
        )
    except BrokerError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        raise fail(
            f"stopped waiting; the jobs go on: farm collect --sweep {plan.name}", 130
        ) from None
    if wait:
        console.print(f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped.")
    else:
        console.print(f"collect the results later with: farm collect --sweep {plan.name}")


@app.command()
def worker(
    *,
    cpus: Annotated[str, typer.Option(help="CPU set to pin this worker to, e.g. 0-3 or 0,2.")],
    broker: BrokerOption = None,
    threads: Annotated[
        int | None, typer.Option(help="OpenMP threads (default: one per CPU of the set).")
    ] = None,
    queue: QueueOption = "farm",
    name: Annotated[
        str | None, typer.Option(help="Worker name (default: farm-cpus<LIST>@<host>).")
    ] = None,
    cache_dir: CacheOption = DEFAULT_CACHE,
) -> None:
    """Serve jobs from the broker, one at a time, pinned to a CPU set.

    Start one per CPU set on each machine, all against the same broker. Jobs
    run in a fresh child process each; limits come from FARM_JOB_TIME_LIMIT
    (seconds, soft), FARM_JOB_GRACE (extra seconds before the kill) and
    FARM_MAX_ATTEMPTS (crashes before a job is failed).
    """
    from worker.serve import WorkerStartError, serve

    if not broker:
        raise fail("farm worker needs a broker: --broker redis://HOST:6379/0 or FARM_BROKER_URL")
    try:
        serve(broker_url=broker, cpus=cpus, threads=threads, queue=queue, name=name,
              cache_dir=cache_dir)  # fmt: skip
    except (CpuSetError, WorkerStartError) as error:
        raise fail(str(error)) from None


@app.command()
def bandwidth(
    *,
    cpus: Annotated[
        str | None, typer.Option(help="CPU set to measure, e.g. 0-3 (default: all of them).")
    ] = None,
    remeasure: Annotated[
        bool, typer.Option(help="Measure again instead of using the cache.")
    ] = False,
    cache_dir: CacheOption = DEFAULT_CACHE,
) -> None:
    """Memory read bandwidth of a CPU set: the roofline every result is compared with.

    Workers measure it once per host and CPU set and cache it; this shows (or renews) it.
    """
    from worker.pinning import format_cpu_list, parse_cpu_list, pin_process

    try:
        cpu_set = parse_cpu_list(cpus) if cpus else sorted(os.sched_getaffinity(0))
    except CpuSetError as error:
        raise fail(str(error)) from None
    pin_process(cpu_set)  # before torch is imported
    from worker.roofline import cached_bandwidth

    text = format_cpu_list(cpu_set)
    figures = cached_bandwidth(text, len(cpu_set), cache_dir, remeasure=remeasure)
    console.print(
        f"CPUs {text} on {figures['host']}: read {figures['read_bytes_per_s'] / 1e9:.1f} GB/s, "
        f"copy {figures['copy_bytes_per_s'] / 1e9:.1f} GB/s ({figures['threads']} threads)"
    )


@app.command()
def collect(
    *,
    sweep: Annotated[str, typer.Option(help="The sweep whose results to store.")],
    db: DbOption = "farm.db",
    broker: BrokerOption = None,
    wait: Annotated[
        bool, typer.Option(help="Wait for unfinished jobs too (--no-wait: store what is there).")
    ] = True,
) -> None:
    """Store results that finished while no `farm submit` was watching."""
    from orchestrator.farm import BrokerError
    from orchestrator.farm import collect as collect_results

    if not broker:
        raise fail("farm collect needs a broker: --broker redis://HOST:6379/0 or FARM_BROKER_URL")
    try:
        summary = asyncio.run(
            collect_results(sweep, _sessions(db), broker_url=broker, wait=wait, console=console)
        )
    except BrokerError as error:
        raise fail(str(error)) from None
    console.print(f"stored {summary.done} done and {summary.failed} failed result(s)")


@app.command()
def status(
    *,
    sweep: Annotated[str | None, typer.Option(help="Sweep name (default: the latest).")] = None,
    db: DbOption = "farm.db",
    broker: BrokerOption = None,
    queue: QueueOption = "farm",
) -> None:
    """Jobs by state; with a broker, the queue depth and what each worker is running."""
    from orchestrator.report import ReportError, find_sweep

    if "://" in db or Path(db).exists():
        with _sessions(db)() as session:
            try:
                found = find_sweep(session, sweep)
            except ReportError as error:
                raise fail(str(error)) from None
            counts: dict[str, int] = {}
            for job in found.jobs:
                counts[job.status] = counts.get(job.status, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        console.print(f"sweep {found.name}: {states}")
    if broker:
        from orchestrator.farm import BrokerError, farm_status

        try:
            depth, workers = asyncio.run(farm_status(broker, queue))
        except BrokerError as error:
            raise fail(str(error)) from None
        console.print(f"queue {queue!r}: {depth} job(s) waiting")
        if not workers:
            console.print("no workers answered")
        for name, running in sorted(workers.items()):
            console.print(f"  {name}: {', '.join(running) or 'idle'}", highlight=False)


def _open_existing(db: str):
    if "://" not in db and not Path(db).exists():
        raise fail(f"no database at {db}; run `farm submit --grid FILE` first, or pass --db")
    return _sessions(db)()


def _write(text: str, out: Path | None) -> None:
    if out:
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        typer.echo(text, nl=not text.endswith("\n"))


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
    db: DbOption = "farm.db",
) -> None:
    """Print results, one row per job, failed jobs included.

    Columns: prefill and decode times, tokens/s, speedup over --baseline, agreement
    with float32 (teacher-forced top-1, KL), share of the memory roofline, CV (with a
    noisy flag) and status. HTML is one self-contained page with the plots inline.
    """
    from orchestrator.render import FORMATS
    from orchestrator.report import ReportError
    from orchestrator.reporting import ReportRequest
    from orchestrator.reporting import report as make_report

    if format not in FORMATS:
        raise fail(f"unknown --format {format!r}; use one of: {', '.join(FORMATS)}")
    request = ReportRequest(
        sweeps=sweep or [], every=all_sweeps, backends=backend or [], hosts=host or [],
        where=where or [], group_by=group_by, pivot=pivot, baseline=baseline, fmt=format,
    )  # fmt: skip
    with _open_existing(db) as session:
        try:
            text = make_report(session, request, console)
        except ReportError as error:
            raise fail(str(error)) from None
    if text is not None:
        _write(text, out)


@app.command()
def sweeps(*, db: DbOption = "farm.db") -> None:
    """List the sweeps: when, how many jobs done, failed and pending, and on which hosts."""
    from orchestrator.reporting import sweeps_table

    with _open_existing(db) as session:
        console.print(sweeps_table(session))


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="Job id, or its key (or a unique prefix of it).")],
    *,
    db: DbOption = "farm.db",
) -> None:
    """Print one job: spec, status, environment, figures, raw samples and error (JSON)."""
    import json

    from orchestrator.report import ReportError
    from orchestrator.reporting import show_job

    with _open_existing(db) as session:
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
    db: DbOption = "farm.db",
) -> None:
    """Write the sweep's figures as PNG: latency against generation length, decode speed,
    prefill against context, speed against fidelity, and the roofline share.

    A figure whose data is missing (one context size only, say) is skipped, with the reason.
    """
    from orchestrator.report import ReportError
    from orchestrator.reporting import write_plots

    with _open_existing(db) as session:
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
    db: DbOption = "farm.db",
) -> None:
    """Compare the same jobs in two sweeps, metric by metric, with a significance test
    (Mann-Whitney U on the raw repeats). Jobs present in only one sweep are listed."""
    from orchestrator.report import ReportError
    from orchestrator.reporting import comparison

    limit = _fraction(fail_above) if fail_above else None
    with _open_existing(db) as session:
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


def _sessions(db: str):
    from db.session import make_session_factory

    return make_session_factory(db)


def _sets(cpu_sets: list[list[int]]) -> str:
    from worker.pinning import format_cpu_list

    return " ".join(f"[{format_cpu_list(s)}]" for s in cpu_sets)


def main() -> None:
    app()
