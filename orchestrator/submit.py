"""`farm submit` on the embedded default: record the sweep, run it here, store each result.

The database is written only from this event loop: a job is marked running
when a worker takes it and its result is committed the moment it lands, so
Ctrl-C (or a crash) keeps everything that finished.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job
from orchestrator import store
from orchestrator.embedded import LocalWorker, run_jobs
from orchestrator.progress import job_progress
from orchestrator.sweep import Sweep
from worker.pinning import CpuSetError, available_cpus, parse_cpu_list


@dataclass
class SubmitSummary:
    sweep: str
    ran: int
    done: int
    failed: int
    skipped: int


def plan_cpu_sets(workers: int | None, cpus: list[str] | None) -> list[list[int]]:
    """Explicit `--cpus` sets, or the available CPUs split evenly into `workers` sets."""
    if cpus:
        sets = [parse_cpu_list(text) for text in cpus]
        seen: set[int] = set()
        for cpu_set in sets:
            if seen & set(cpu_set):
                raise CpuSetError(f"CPU sets overlap on {sorted(seen & set(cpu_set))}")
            seen |= set(cpu_set)
        return sets
    available = available_cpus()
    count = workers or 1
    if not 1 <= count <= len(available):
        raise CpuSetError(f"--workers must be between 1 and {len(available)} here")
    size = len(available) // count
    return [available[i * size : (i + 1) * size] for i in range(count)]


async def submit_embedded(
    plan: Sweep,
    sessions: sessionmaker[Session],
    *,
    cpu_sets: list[list[int]],
    cache_dir: Path,
    rerun: bool,
    console: Console,
) -> SubmitSummary:
    with sessions.begin() as session:
        recorded = store.record_sweep(session, plan, rerun=rerun)
        pending = [(job.id, job.spec) for job in recorded.to_run]
        skipped = recorded.already_done
    if skipped:
        console.print(
            f"{skipped} job(s) of sweep {plan.name!r} already done: skipped "
            "(--rerun runs them again)"
        )
    summary = SubmitSummary(plan.name, len(pending), 0, 0, skipped)
    if not pending:
        return summary

    workers = [
        LocalWorker(f"local-{i}", cpus, cache_dir, cache_dir / "logs")
        for i, cpus in enumerate(cpu_sets)
    ]
    session = sessions()
    with job_progress(console) as progress:
        bar = progress.add_task(plan.name, total=len(pending), failed=0, current="")

        def on_start(job_id: int, worker: LocalWorker) -> None:
            job = session.get(Job, job_id)
            store.mark_running(session, job, worker.name)
            session.commit()
            progress.update(bar, current=f"{worker.name}: {_describe(job)}")

        def on_result(job_id: int, payload: dict) -> None:
            job = session.get(Job, job_id)
            store.store_result(session, job, payload)
            session.commit()
            summary.done += job.status == "done"
            summary.failed += job.status == "failed"
            progress.update(bar, advance=1, failed=summary.failed)

        try:
            await run_jobs(pending, workers, on_start, on_result)
        except asyncio.CancelledError:
            _release_running(session, [job_id for job_id, _ in pending])
            raise
        finally:
            session.close()
    return summary


def _describe(job: Job) -> str:
    return f"{job.label} ctx={job.context} gen={job.generation} threads={job.threads}"


def _release_running(session: Session, job_ids: list[int]) -> None:
    """Interrupted: jobs that were running go back to pending, to run on the next submit."""
    session.rollback()
    for job_id in job_ids:
        job = session.get(Job, job_id)
        if job is not None and job.status == "running":
            job.status = "pending"
    session.commit()
