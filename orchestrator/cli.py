"""`farm`: the whistle-stop command line. Each command is a thin wrapper around one function.

Running sweeps and workers lives here; reading results in orchestrator/cli_reports.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from orchestrator import cli_reports  # noqa: F401  (registers the report commands)
from orchestrator.cli_common import (
    DEFAULT_CACHE,
    BrokerOption,
    CacheOption,
    DbOption,
    QueueOption,
    app,
    console,
    fail,
    sessions,
)
from worker.pinning import CpuSetError


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
    factory = sessions(db)
    console.print(
        f"sweep [bold]{plan.name}[/bold]: {len(plan.jobs)} job(s) on "
        f"{len(cpu_sets)} embedded worker(s) pinned to {_sets(cpu_sets)}"
    )
    try:
        summary = asyncio.run(
            submit_embedded(
                plan, factory, cpu_sets=cpu_sets, cache_dir=cache_dir, rerun=rerun, console=console
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
                lambda: sessions(db),
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
            collect_results(sweep, sessions(db), broker_url=broker, wait=wait, console=console)
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
        with sessions(db)() as session:
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


def _sets(cpu_sets: list[list[int]]) -> str:
    from worker.pinning import format_cpu_list

    return " ".join(f"[{format_cpu_list(s)}]" for s in cpu_sets)


def main() -> None:
    app()
