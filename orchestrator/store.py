"""Every database write the farm makes. Callers open the session and commit.

`store_result` is idempotent: a result for a job that already has one is
ignored, so a re-delivered or re-collected result never becomes a second row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Environment, Job, Result, Sweep
from orchestrator.sweep import Sweep as SweepPlan

RESULT_FIELDS = [
    column.name
    for column in Result.__table__.columns
    if column.name not in {"id", "job_id", "environment_id", "worker", "cpus", "created_at"}
]


@dataclass
class Recorded:
    sweep: Sweep
    to_run: list[Job]
    already_done: int
    restarted: set[int]  # ids of jobs that had failed (or --rerun): start them afresh


def record_sweep(session: Session, plan: SweepPlan, *, rerun: bool = False) -> Recorded:
    """Create or update the sweep and its jobs; return the jobs that still need to run."""
    sweep = session.scalar(select(Sweep).where(Sweep.name == plan.name))
    if sweep is None:
        sweep = Sweep(name=plan.name, source_text=plan.source_text)
        session.add(sweep)
        session.flush()
    sweep.source_text = plan.source_text
    existing = {job.key: job for job in sweep.jobs}
    to_run, already_done, restarted = [], 0, set()
    for spec in plan.jobs:
        job = existing.get(spec.key)
        if job is None:
            job = Job(
                sweep=sweep,
                key=spec.key,
                spec=spec.to_dict(),
                label=spec.label,
                backend=spec.backend,
                context=spec.context,
                generation=spec.generation,
                threads=spec.threads,
                status="pending",
                attempts=0,
            )
            session.add(job)
        elif job.status == "done" and not rerun:
            already_done += 1
            continue
        else:
            if job.status == "failed" or rerun:
                restarted.add(job.id)
            if job.result is not None:  # --rerun: the old figures make way for new ones
                session.delete(job.result)
                job.result = None
        job.status, job.error = "pending", None
        to_run.append(job)
    session.flush()
    return Recorded(sweep, to_run, already_done, restarted)


def mark_running(session: Session, job: Job, worker: str) -> None:
    job.status, job.worker = "running", worker
    job.attempts += 1


def store_result(session: Session, job: Job, payload: dict[str, Any]) -> bool:
    """Record a worker's payload on `job`. Returns False if the job already had a result."""
    if job.result is not None or job.status == "done":
        return False
    job.worker = payload.get("worker")
    if payload.get("status") != "done":
        job.status = "failed"
        job.error = payload.get("error") or "failed without an error message"
        return True
    environment = _environment(session, payload["environment"])
    figures = {**payload["metrics"]}
    figures.update(
        samples=payload["samples"],
        tokens=payload["tokens"],
        pinning_violations=payload["pinning_violations"],
    )
    job.result = Result(
        environment=environment,
        worker=payload["worker"],
        cpus=payload["cpus"],
        **{name: figures.get(name) for name in RESULT_FIELDS},
    )
    job.status, job.error = "done", None
    return True


def _environment(session: Session, facts: dict[str, Any]) -> Environment:
    found = session.scalar(
        select(Environment).where(Environment.fingerprint == facts["fingerprint"])
    )
    if found is None:
        columns = {c.name for c in Environment.__table__.columns} - {"id"}
        found = Environment(**{name: facts.get(name) for name in columns})
        session.add(found)
    return found
