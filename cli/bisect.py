"""`farm bisect`: the first revision that made one cell slower."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Annotated

import typer

from whistle_stop.cli.common import (
    DEFAULT_CACHE,
    DEFAULT_DB,
    CacheOption,
    DbOption,
    app,
    errors,
    fail,
    sessions,
)
from whistle_stop.cli.reports import _fraction
from whistle_stop.cli.run import asyncio_run
from whistle_stop.contract.cpus import CpuSetError


@app.command()
def bisect(
    *,
    good: Annotated[str, typer.Option(help="A revision where the cell was fast.")],
    bad: Annotated[str, typer.Option(help="A later revision where it is slower.")],
    grid: Annotated[Path, typer.Option(help="A sweep file of one cell (one job).")],
    repo: Annotated[Path, typer.Option(help="The git checkout to take revisions from.")] = Path(),
    threshold: Annotated[
        str, typer.Option(help="Smaller changes are 'same' (as in farm compare).")
    ] = "5%",
    attempts: Annotated[
        int, typer.Option(min=2, help="Attempts at a revision before judging.")
    ] = 3,
    max_attempts: Annotated[
        int, typer.Option(min=2, help="Attempts at a revision before it is called undecided.")
    ] = 20,
    cpus: Annotated[
        str | None, typer.Option(help="The CPU set the jobs run on (default: all).")
    ] = None,
    db: DbOption = DEFAULT_DB,
    cache_dir: CacheOption = DEFAULT_CACHE,
) -> None:
    """Binary search between --good and --bad for the first revision that made the cell
    slower, each revision's worker run from a git worktree of --repo.

    Revisions are compared within an attempt (good, probe, bad, one job each). The
    ends are measured until bad is shown slower (a 99% interval below
    1 - threshold/2); each midpoint until it is shown slower than the good side or faster
    than the bad side, adding jobs while it is unknown. Every job is stored as a one-job
    sweep NAME@REVISION-N (see farm history). Exits 3 if no revision could be named.
    """
    from whistle_stop.executors.local import LocalExecutor, plan_cpu_sets
    from whistle_stop.orchestrator import bisect as search
    from whistle_stop.orchestrator.store import Store
    from whistle_stop.orchestrator.sweep import SweepError, load_sweep

    margin = _fraction(threshold, "--threshold")
    try:
        plan = load_sweep(grid)
        cpu_sets = plan_cpu_sets(None, [cpus] if cpus else None)
        revisions = search.revision_range(repo, good, bad)
    except (SweepError, CpuSetError, search.BisectError) as error:
        raise fail(str(error)) from None
    if len(plan.jobs) != 1 or plan.auto:
        raise fail(
            f"{grid}: farm bisect measures one cell: the file gives {len(plan.jobs)} jobs "
            "(one backend, context, generation length and thread count; rounds: 1)"
        )
    if attempts > max_attempts:
        raise fail(f"--attempts {attempts} is more than --max-attempts {max_attempts}")
    store = Store(sessions(db))
    under = cache_dir / "bisect"
    executors: dict[str, LocalExecutor] = {}

    async def executor_for(revision: str) -> LocalExecutor:
        if revision not in executors:
            code = search.checkout(repo, revision, under)
            executors[revision] = LocalExecutor(cpu_sets, cache_dir, code=code)
        return executors[revision]

    async def run():
        measure = search.one_job_runner(plan, store, executor_for, errors)
        try:
            return await search.bisect(
                revisions, measure, plan.name, margin, (attempts, max_attempts), say
            )
        finally:
            for executor in executors.values():
                await executor.aclose()

    def say(line: str) -> None:
        errors.print(line, highlight=False, markup=False)

    say(f"{len(revisions)} revisions from {revisions[0][:8]} to {revisions[-1][:8]}")
    try:
        found = asyncio_run(run(), plan.name, detached=False)
    except search.BisectError as error:
        raise fail(str(error), code=3) from None
    finally:
        search.remove_worktrees(repo, under)
    for revision in revisions:
        speeds = found.speeds.get(revision)
        subject = search.git(repo, "log", "-1", "--format=%s", revision)[:50]
        figure = f"{statistics.median(speeds):8.1f} tok/s ({len(speeds)} jobs)" if speeds else ""
        mark = " <- first bad" if revision == found.first_bad else ""
        typer.echo(f"{revision[:8]} {figure:>24} {subject}{mark}")
    if found.first_bad is None:
        raise fail(found.why, code=3)
    typer.echo(f"first bad revision: {found.first_bad}")
