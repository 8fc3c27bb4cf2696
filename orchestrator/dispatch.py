"""The dispatch loop: a plan, an executor and the store, written once for every executor.

    record the sweep -> executor.run(jobs) -> each event to the store -> a summary

The executor says what happens (queued, started, finished, failed); the store
records it the moment it happens, so Ctrl-C (or a crash) keeps everything that
finished; the progress display shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rich.console import Console

from whistle_stop.contract.events import Event, Failed, Finished, Lost, PendingJob
from whistle_stop.contract.status import JobStatus
from whistle_stop.executors.base import Executor
from whistle_stop.orchestrator.progress import SweepProgress
from whistle_stop.orchestrator.rounds import undecided
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import SweepPlan, extra_round


@dataclass
class SweepSummary:
    sweep: str
    done: int = 0
    failed: int = 0
    skipped: int = 0  # done before; not run again


async def run_sweep(
    plan: SweepPlan,
    store: Store,
    executor: Executor,
    console: Console,
    *,
    rerun: bool = False,
    wait: bool = True,
    quiet: bool = False,
) -> SweepSummary:
    """Run every job of `plan` that is not done yet (all of them with `rerun`)."""
    summary = SweepSummary(plan.name)
    # results that landed while nobody watched: stored first, so that their jobs count as
    # done (skipped) below rather than run again
    backlog = SweepProgress(console, plan.name, 0, quiet=quiet)  # notes only, no bar
    await _consume(executor.follow(plan.name, [], wait=False), store, SweepSummary(""), backlog)
    recorded = store.record_sweep(plan, rerun=rerun)
    summary.skipped = recorded.already_done
    if recorded.already_done and not quiet:
        console.print(
            f"{recorded.already_done} job(s) of sweep {plan.name!r} already done: skipped "
            "(--rerun runs them again)",
            highlight=False,
        )
    if not recorded.to_run:
        return summary
    models = len({job.model for job in plan.jobs}) > 1
    progress = SweepProgress(
        console, plan.name, len(recorded.to_run), quiet=quiet or not wait, models=models
    )
    try:
        for number, jobs in _rounds(recorded.to_run):
            if plan.rounds > 1:
                progress.note(f"round {number} of {plan.rounds}: {len(jobs)} job(s)")
            await _run_round(plan.name, jobs, store, executor, summary, progress, wait)
        if plan.auto and wait:
            await _more_rounds(plan, store, executor, summary, progress)
    finally:
        progress.close()
    return summary


async def _run_round(name, jobs, store, executor, summary, progress, wait) -> None:
    """A round is handed over whole and stored whole before the next one starts, so two
    rounds never overlap and each round's jobs share the same minutes."""
    events = executor.run(name, jobs, wait=wait)
    try:
        await _consume(events, store, summary, progress)
    except asyncio.CancelledError:
        if not executor.detached:  # the jobs died with us: they run again next submit
            store.release_running([job.id for job in jobs])
        raise


async def _more_rounds(plan, store, executor, summary, progress) -> None:
    """rounds: auto (orchestrator/rounds.py): a round more for the cells whose speedup is
    not yet within ±precision, until none is left or max_rounds is spent; it says why."""
    speeds = store.speeds(plan.name)
    number = max([plan.rounds, *(spec.round for spec, _ in speeds)])  # resubmits keep rounds
    wide = undecided(speeds, plan.baseline, plan.precision)
    while wide and number < plan.max_rounds:
        number += 1
        worst = max(wide.values())
        widest = "fewer than two rounds" if worst == float("inf") else f"widest ±{worst:.0%}"
        jobs = store.add_jobs(plan.name, extra_round(plan, number, set(wide)))
        progress.more(len(jobs))
        progress.note(
            f"round {number}: {len(wide)} cell(s) not yet within ±{plan.precision:.0%} "
            f"({widest}): {len(jobs)} job(s)"
        )
        await _run_round(plan.name, jobs, store, executor, summary, progress, True)
        wide = undecided(store.speeds(plan.name), plan.baseline, plan.precision)
    if wide:
        progress.note(
            f"{len(wide)} cell(s) stopped undecided after {number} rounds (max_rounds): "
            "the report says which"
        )


def _rounds(jobs: list[PendingJob]) -> list[tuple[int, list[PendingJob]]]:
    """The jobs round by round, each round in its recorded order."""
    rounds: dict[int, list[PendingJob]] = {}
    for job in jobs:
        rounds.setdefault(job.round, []).append(job)
    return sorted(rounds.items())


async def collect(
    sweep: str,
    store: Store,
    executor: Executor,
    console: Console,
    *,
    wait: bool,
    quiet: bool = False,
) -> SweepSummary:
    """Store the results of jobs started earlier; with `wait`, those still to come too."""
    summary = SweepSummary(sweep)
    backlog = SweepProgress(console, sweep, 0, quiet=quiet)  # notes only, no bar
    await _consume(executor.follow(sweep, [], wait=False), store, summary, backlog)
    unfinished = store.unfinished(sweep)
    if wait and unfinished:
        progress = SweepProgress(console, sweep, len(unfinished), quiet=quiet)
        try:
            await _consume(executor.follow(sweep, unfinished, wait=True), store, summary, progress)
        finally:
            progress.close()
    return summary


async def _consume(
    batches: AsyncIterator[list[Event]],
    store: Store,
    summary: SweepSummary,
    progress: SweepProgress,
) -> None:
    async for events in batches:
        for event, applied in zip(events, store.apply_many(events), strict=True):
            if applied is None:
                continue  # a job of another database
            if applied.status is None:  # first committed result wins; say what was refused
                if isinstance(event, Finished | Failed):
                    late = f"{applied.describe()} from {event.result.worker}"
                    progress.note(f"ignored a late result for {late}: the job has its result")
                continue
            if isinstance(event, Lost):
                progress.note(
                    f"lost {applied.describe()} on {event.worker or 'a worker'}: {event.why}"
                )
            summary.done += applied.status is JobStatus.DONE
            summary.failed += applied.status is JobStatus.FAILED
            progress.update(applied)
