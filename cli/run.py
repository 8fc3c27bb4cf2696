"""`farm submit`, `collect` and `status`: running sweeps and watching them."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from whistle_stop.cli.common import (
    DEFAULT_CACHE,
    DEFAULT_DB,
    BrokerOption,
    CacheOption,
    DbOption,
    QueueOption,
    QuietOption,
    app,
    errors,
    fail,
    open_existing,
    sessions,
)
from whistle_stop.contract.cpus import CpuSetError

if TYPE_CHECKING:  # the plan's module imports the backends' registry: not for `--help`
    from whistle_stop.orchestrator.sweep import SweepPlan


@app.command()
def submit(
    *,
    grid: Annotated[Path, typer.Option(help="The sweep YAML file (see examples/).")],
    db: DbOption = DEFAULT_DB,
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
        typer.Option(
            metavar="CPUS",
            help="Embedded mode: one pinned worker per CPU set, e.g. --cpus 0 --cpus 1.",
        ),
    ] = None,
    rerun: Annotated[bool, typer.Option(help="Run jobs again even if already done.")] = False,
    keep: Annotated[
        bool,
        typer.Option(
            help="Keep done jobs even if they ran under other library versions or "
            "other whistle-stop source (without it, submit asks)."
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="Run a grid of more than 10,000 jobs without asking.")
    ] = False,
    skip_missing: Annotated[
        bool,
        typer.Option(
            help="Leave out the backends whose optional engine is not installed (each "
            "named) instead of refusing the sweep; embedded workers only."
        ),
    ] = False,
    cache_dir: CacheOption = DEFAULT_CACHE,
    quiet: QuietOption = False,
) -> None:
    """Expand a sweep file into jobs and run them, storing each result as it lands.

    With no broker configured, jobs run on this machine in pinned worker
    processes (the embedded default): nothing to install, no server. With
    --broker, jobs go to `farm worker` processes through Celery and Redis.
    Re-submitting a sweep skips the jobs already done. Exits 3 if any job failed.
    """
    from whistle_stop.executors.local import plan_cpu_sets
    from whistle_stop.orchestrator.sweep import MAX_JOBS, SweepError, load_sweep

    try:
        plan = load_sweep(grid, max_jobs=None if yes else MAX_JOBS)
        cpu_sets = None if broker else plan_cpu_sets(workers, cpus)
    except (SweepError, CpuSetError) as error:
        raise fail(str(error)) from None
    most = max(job.threads for job in plan.jobs)
    if cpu_sets and most > min(map(len, cpu_sets)):
        raise fail(
            f"{grid}: threads: {most} is more than the {min(map(len, cpu_sets))} CPU(s) of "
            "an embedded worker: the job would oversubscribe them; lower threads or give "
            "the workers more CPUs (--workers, --cpus)"
        )
    request = Submission(
        plan=plan,
        db=db,
        executor=ExecutorChoice(broker, queue, cpu_sets, cache_dir),
        rerun=rerun,
        keep=keep,
        wait=wait,
        quiet=quiet,
    )
    if not broker:  # the embedded workers run this installation: an engine it lacks fails now
        request = replace(request, plan=_check_extras(plan, grid, skip_missing))
    if broker and not wait and plan.rounds > 1:
        raise fail(
            f"{grid}: rounds: {plan.rounds} needs a submit that waits (each round "
            "starts when the one before it is stored); drop --no-wait"
        )
    summary = asyncio_run(_submit(request), plan.name, detached=bool(broker))
    if broker and not wait:
        errors.print(
            f"collect the results later with: farm collect --sweep {plan.name}", highlight=False
        )
        return
    _finish(summary)


@dataclass(frozen=True)
class ExecutorChoice:
    """Where the jobs run: Celery workers through `broker`, or pinned local processes."""

    broker: str | None
    queue: str
    cpu_sets: list[list[int]] | None  # embedded mode only
    cache_dir: Path

    async def open(self):
        """Connect first: a broker that does not answer is refused before the database is
        even opened, so nothing is written."""
        from whistle_stop.executors.celery import CeleryExecutor
        from whistle_stop.executors.local import LocalExecutor

        if self.broker:
            return await CeleryExecutor.open(self.broker, self.queue)
        return LocalExecutor(self.cpu_sets, self.cache_dir)


@dataclass(frozen=True)
class Submission:
    """One `farm submit`, wired: the validated plan, the store's database, the executor."""

    plan: SweepPlan
    db: str
    executor: ExecutorChoice
    rerun: bool  # measure done jobs again
    keep: bool  # keep done jobs measured under other software without asking
    wait: bool
    quiet: bool


def _check_extras(plan: SweepPlan, grid: Path, skip: bool) -> SweepPlan:
    """The plan if every backend's engine is installed; with `skip`, the plan without the
    backends whose engine is missing (each said in one line); else one error line."""
    from whistle_stop.backends.registry import MissingDependencyError, check_extra

    missing = {}
    for name in sorted({job.backend for job in plan.jobs}):
        try:
            check_extra(name)
        except MissingDependencyError as error:
            if not skip:
                raise fail(f"{grid}: {error} (or --skip-missing)") from None
            missing[name] = error
    for name, error in missing.items():
        errors.print(f"left out {name}: {error}", highlight=False)
    kept = tuple(job for job in plan.jobs if job.backend not in missing)
    if not kept:
        raise fail(f"{grid}: no backend left to run")
    return replace(plan, jobs=kept)


async def _submit(request: Submission):
    from whistle_stop.orchestrator.dispatch import run_sweep
    from whistle_stop.orchestrator.store import Store

    plan = request.plan
    executor = await request.executor.open()
    try:
        store = Store(sessions(request.db))
        if not (request.rerun or request.keep):
            _check_provenance(store, plan.name)
        if not request.quiet:
            errors.print(
                f"sweep [bold]{plan.name}[/bold]: {len(plan.jobs)} job(s) on {executor.describe()}",
                highlight=False,
            )
        return await run_sweep(
            plan,
            store,
            executor,
            errors,
            rerun=request.rerun,
            wait=request.wait,
            quiet=request.quiet,
        )
    finally:
        await executor.aclose()


def _check_provenance(store, sweep: str) -> None:
    """Done jobs measured under other software are neither skipped nor rerun silently."""
    from whistle_stop.contract.provenance import library_versions, source_hash

    now = {"versions": library_versions(), "source_hash": source_hash()}
    jobs, changes = store.provenance_changes(sweep, now)
    if jobs:
        raise fail(
            f"sweep {sweep!r}: {jobs} done job(s) ran under other software ("
            f"{'; '.join(changes)}); --rerun measures them again, --keep keeps "
            "them"
        )


def asyncio_run(coroutine, sweep: str, *, detached: bool):
    """Run a command's coroutine; a broker that does not answer, Ctrl-C or SIGTERM is one
    line. SIGTERM (`kill`, a supervisor, a CI runner's cancel) stops the way Ctrl-C does:
    running jobs go back to pending and the worker processes stop, not mid-write."""
    from whistle_stop.executors.celery import BrokerError

    terminated: list[int] = []

    async def main():
        # SIGTERM cancels the command as asyncio.run's Ctrl-C does, through the loop: a
        # farm started in the background by a script (`farm submit ... &`) has SIGINT
        # ignored, and a SIGINT raised from a handler would be ignored with it
        command = asyncio.current_task()

        def on_sigterm() -> None:
            terminated.append(signal.SIGTERM)
            command.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        return await coroutine

    previous = signal.getsignal(signal.SIGTERM)
    try:
        return asyncio.run(main())
    except BrokerError as error:
        raise fail(str(error)) from None  # a wrong URL or password: nothing was written
    except (KeyboardInterrupt, asyncio.CancelledError):
        what, code = ("terminated", 143) if terminated else ("interrupted", 130)
        if detached:
            raise fail(
                f"stopped waiting; the jobs go on: farm collect --sweep {sweep}", code
            ) from None
        raise fail(
            f"{what}; finished results are kept, submit again to run the rest", code
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _finish(summary) -> None:
    errors.print(
        f"{summary.done} done, {summary.failed} failed, {summary.skipped} skipped.", highlight=False
    )
    if summary.failed:
        raise fail(
            f"{summary.failed} job(s) failed; see why with: farm report --sweep "
            f"{summary.sweep} (failed rows end the table), or farm show KEY",
            3,
        )
    errors.print(f"See the results with: farm report --sweep {summary.sweep}", highlight=False)


@app.command()
def collect(
    *,
    sweep: Annotated[str, typer.Option(help="The sweep whose results to store.")],
    db: DbOption = DEFAULT_DB,
    broker: BrokerOption = None,
    queue: QueueOption = "farm",
    wait: Annotated[
        bool, typer.Option(help="Wait for unfinished jobs too (--no-wait: store what is there).")
    ] = True,
    quiet: QuietOption = False,
) -> None:
    """Store results that finished while no `farm submit` was watching; while waiting for
    the rest, hand back the jobs of lost workers (see FARM_LEASE_S)."""
    if not broker:
        raise fail("farm collect needs a broker: --broker redis://HOST:6379/0 or FARM_BROKER_URL")

    async def run():
        from whistle_stop.executors.celery import CeleryExecutor
        from whistle_stop.orchestrator.dispatch import collect as collect_results
        from whistle_stop.orchestrator.store import Store

        executor = await CeleryExecutor.open(broker, queue)
        try:
            return await collect_results(
                sweep, Store(sessions(db)), executor, errors, wait=wait, quiet=quiet
            )
        finally:
            await executor.aclose()

    summary = asyncio_run(run(), sweep, detached=True)
    if not quiet:
        errors.print(
            f"stored {summary.done} done and {summary.failed} failed result(s)", highlight=False
        )


@app.command()
def status(
    *,
    sweep: Annotated[str | None, typer.Option(help="Sweep name (default: the latest).")] = None,
    db: DbOption = DEFAULT_DB,
    broker: BrokerOption = None,
    queue: QueueOption = "farm",
) -> None:
    """Jobs by state; with a broker, the queue depth and what each worker is running."""
    from whistle_stop.reports.query import ReportError, find_sweep, status_counts

    if not broker or "://" in db or Path(db).exists():
        with open_existing(db) as session:
            try:
                found = find_sweep(session, sweep)
            except ReportError as error:
                raise fail(str(error)) from None
            counts = status_counts(session, found)
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        typer.echo(f"sweep {found.name}: {states or 'no jobs'}")
    if broker:
        from whistle_stop.executors.celery import farm_status

        depth, workers = asyncio_run(farm_status(broker, queue), sweep or "", detached=True)
        typer.echo(f"queue {queue!r}: {depth} job(s) waiting")
        if not workers:
            typer.echo("no workers answered")
        for name, running in sorted(workers.items()):
            typer.echo(f"  {name}: {', '.join(running) or 'idle'}")
