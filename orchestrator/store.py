"""The only code that writes the farm's database.

Each method opens its own session and commits before it returns, so what it wrote
survives a crash of whatever comes next. Storing a result is idempotent: a result for
a job that already has one is refused, so a re-delivered or re-collected result never
becomes a second row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from whistle_stop.contract.events import Event, Failed, Finished, Lost, PendingJob, Queued, Started
from whistle_stop.contract.jobspec import JobSpec
from whistle_stop.contract.payload import HostFacts, ResultPayload
from whistle_stop.contract.status import UNFINISHED, JobStatus
from whistle_stop.db.models import Environment, Job, Result, Sweep, utcnow
from whistle_stop.orchestrator.sweep import SweepPlan


@dataclass(frozen=True)
class Recorded:
    to_run: list[PendingJob]
    already_done: int


@dataclass(frozen=True)
class Applied:
    """What an event did to its job (`status` None: the event was stale and ignored)."""

    label: str
    context: int
    generation: int
    threads: int
    status: JobStatus | None
    worker: str | None = None
    error: str | None = None
    decode_tokens_per_s: float | None = None
    model: str = ""

    def describe(self, *, model: bool = False) -> str:
        """The job in one phrase; `model`: named too (a sweep with a models: axis)."""
        on = f" {self.model}" if model else ""
        return f"{self.label}{on} ctx={self.context} gen={self.generation} threads={self.threads}"


class Store:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def record_sweep(self, plan: SweepPlan, *, rerun: bool = False) -> Recorded:
        """Create or update the sweep and its jobs; return the jobs that still need to run."""
        with self.sessions.begin() as session:
            sweep = session.scalar(select(Sweep).where(Sweep.name == plan.name))
            if sweep is None:
                sweep = Sweep(name=plan.name, source_text=plan.source_text)
                session.add(sweep)
                session.flush()
            sweep.source_text = plan.source_text
            sweep.baseline, sweep.rounds = plan.baseline, plan.rounds
            sweep.precision = plan.precision
            pending, already_done = _record_jobs(session, sweep, plan.jobs, rerun)
        return Recorded(pending, already_done)

    def add_jobs(self, sweep_name: str, specs: list[JobSpec]) -> list[PendingJob]:
        """More jobs for a recorded sweep (rounds: auto's next round); those to run."""
        with self.sessions.begin() as session:
            sweep = session.scalar(select(Sweep).where(Sweep.name == sweep_name))
            pending, _ = _record_jobs(session, sweep, specs, rerun=False)
        return pending

    def speeds(self, sweep_name: str) -> list[tuple[JobSpec, float]]:
        """Every done job of the sweep with its decode tokens/s (rounds: auto reads them)."""
        with self.sessions() as session:
            query = (
                select(Job.spec, Result.decode_tokens_per_s)
                .join(Result, Result.job_id == Job.id)
                .join(Sweep, Job.sweep_id == Sweep.id)
                .where(Sweep.name == sweep_name, Job.status == JobStatus.DONE)
            )
            found = session.execute(query).all()
        return [(JobSpec.from_dict(spec), speed) for spec, speed in found if speed]

    def provenance_changes(self, sweep_name: str, now: dict) -> tuple[int, list[str]]:
        """How many done jobs of the sweep ran under other software than `now` (a host
        environment), and what differs: library versions, whistle-stop's own source."""
        with self.sessions() as session:
            query = (
                select(Environment, func.count())
                .join(Result, Result.environment_id == Environment.id)
                .join(Job, Result.job_id == Job.id)
                .join(Sweep, Job.sweep_id == Sweep.id)
                .where(Sweep.name == sweep_name, Job.status == JobStatus.DONE)
                .group_by(Environment.id)
            )
            jobs, changes = 0, set()
            for environment, count in session.execute(query):
                found = _differences(environment, now)
                jobs += count if found else 0
                changes.update(found)
        return jobs, sorted(changes)

    def apply(self, event: Event) -> Applied | None:
        """Record one executor event; None if its job is not in this database."""
        return self.apply_many([event])[0]

    def apply_many(self, events: list[Event]) -> list[Applied | None]:
        """Record events that arrived together, in one transaction (committed on return)."""
        applied: list[Applied | None] = []
        with self.sessions.begin() as session, session.no_autoflush:
            # the batch's jobs with their results in two queries, not one query per event
            query = select(Job).where(Job.id.in_({e.job_id for e in events}))
            jobs = {job.id: job for job in session.scalars(query.options(selectinload(Job.result)))}
            environments = Environments(session)
            for event in events:
                job = jobs.get(event.job_id)
                if job is None:
                    applied.append(None)
                    continue
                changed = _apply(session, job, event, environments)
                applied.append(
                    Applied(
                        job.label,
                        job.context,
                        job.generation,
                        job.threads,
                        job.status if changed else None,
                        job.worker,
                        job.error,
                        job.result.decode_tokens_per_s if job.result else None,
                        job.spec.get("model", ""),
                    )
                )
        return applied

    def release_running(self, job_ids: list[int]) -> None:
        """Interrupted: jobs that were running go back to pending, to run on the next submit."""
        with self.sessions.begin() as session:
            for job_id in job_ids:
                job = session.get(Job, job_id)
                if job is not None and job.status == JobStatus.RUNNING:
                    job.status = JobStatus.PENDING

    def unfinished(self, sweep_name: str) -> list[PendingJob]:
        """Jobs without a result, but not those of rounds that have not started (only a
        submit starts a round, when the one before it is stored)."""
        with self.sessions() as session:
            query = (
                select(Job)
                .join(Sweep)
                .where(Sweep.name == sweep_name, Job.status.in_(UNFINISHED))
                .order_by(Job.id)
            )
            jobs = list(session.scalars(query))
            first = min((job.round or 1 for job in jobs), default=1)
            return [
                PendingJob(job.id, job.key, job.spec, round=job.round or 1)
                for job in jobs
                if (job.round or 1) == first or job.status != JobStatus.PENDING
            ]


def _differences(environment: Environment, now: dict) -> list[str]:
    found = []
    for name, version in sorted(now["versions"].items()):
        then = (environment.versions or {}).get(name)
        if then != version:
            found.append(f"{name} {then or 'absent'} -> {version or 'absent'}")
    if environment.source_hash != now["source_hash"]:
        found.append(
            "whistle-stop's source changed"
            if environment.source_hash
            else "whistle-stop's source not recorded (an older version)"
        )
    return found


def _new_job(sweep: Sweep, spec: JobSpec, position: int) -> Job:
    return Job(
        sweep=sweep,
        key=spec.key,
        cell=spec.cell,
        round=spec.round,
        position=position,
        spec=spec.to_dict(),
        label=spec.label,
        backend=spec.backend,
        context=spec.context,
        generation=spec.generation,
        threads=spec.threads,
        status=JobStatus.PENDING,
        attempts=0,
    )


class Environments:
    """Environment rows by fingerprint, looked up once per transaction (a batch of results
    from a few hosts names the same few environments over and over)."""

    def __init__(self, session: Session) -> None:
        self.session, self.known = session, {}

    def row(self, facts: HostFacts) -> Environment:
        if facts.fingerprint not in self.known:
            query = select(Environment).where(Environment.fingerprint == facts.fingerprint)
            found = self.session.scalar(query)
            if found is None:
                found = Environment(**asdict(facts))
                self.session.add(found)
            self.known[facts.fingerprint] = found
        return self.known[facts.fingerprint]


def _apply(session: Session, job: Job, event: Event, environments: Environments) -> bool:
    if isinstance(event, Queued):
        if job.status == JobStatus.PENDING:
            job.status = JobStatus.QUEUED
        return True
    if isinstance(event, Started):
        if job.status not in UNFINISHED:
            return False  # a late 'started' of a job that has its result already
        job.status, job.worker = JobStatus.RUNNING, event.worker
        job.attempts = max(job.attempts + 1, event.attempt)
        return True
    if isinstance(event, Lost):
        if job.status not in UNFINISHED:
            return False  # it finished after all: nothing was lost
        lost = {
            "worker": event.worker,
            "at": utcnow().isoformat(timespec="seconds"),
            "why": event.why,
        }
        job.lost_attempts = [*(job.lost_attempts or []), lost]  # a new list: JSON is replaced
        job.status = JobStatus.QUEUED
        return True
    assert isinstance(event, Finished | Failed)
    return store_result(job, event.result, environments)


def store_result(job: Job, payload: ResultPayload, environments: Environments) -> bool:
    """Record a worker's payload on `job`. Returns False if the job already had a result."""
    if job.result is not None or job.status == JobStatus.DONE:
        return False
    if payload.key is not None and payload.key != job.key:
        return False  # a result for another spec under this job's id: not this job's
    job.worker = payload.worker
    job.attempts = max(job.attempts, payload.attempt)
    if payload.status == JobStatus.FAILED:
        job.status = JobStatus.FAILED
        job.error = payload.error or "failed without an error message"
        return True
    assert payload.metrics is not None and payload.environment is not None
    job.result = Result(
        environment=environments.row(payload.environment),
        worker=payload.worker,
        cpus=payload.cpus or "",
        # field by field, not asdict(): that would deep-copy every raw sample list
        **{f.name: _stored(getattr(payload.metrics, f.name)) for f in fields(payload.metrics)},
    )
    job.status, job.error = JobStatus.DONE, None
    return True


def _stored(value):
    """A figure as every database stores it alike: NaN (no decode step in a one-token
    generation) becomes NULL, which SQLite would make it anyway."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _record_jobs(session, sweep: Sweep, specs, rerun: bool) -> tuple[list[PendingJob], int]:
    """Create (or reset) the jobs of `specs` in `sweep`: those that must run, and how many
    were done already. A job's position is its place in its round's order."""
    existing = {job.key: job for job in sweep.jobs}
    to_run, already_done, restarted = [], 0, set()
    positions: dict[int, int] = {}
    for spec in specs:
        job = existing.get(spec.key)
        position = positions[spec.round] = positions.get(spec.round, 0) + 1
        if job is not None:
            job.cell, job.round, job.position = spec.cell, spec.round, position
        if job is None:
            job = _new_job(sweep, spec, position)
            session.add(job)
        elif job.status == JobStatus.DONE and not rerun:
            already_done += 1
            continue
        else:
            if job.status == JobStatus.FAILED or rerun:
                restarted.add(job.key)
            if job.result is not None:  # --rerun: the old figures make way for new ones
                session.delete(job.result)
                job.result = None
        job.status, job.error = JobStatus.PENDING, None
        to_run.append(job)
    session.flush()
    pending = [
        PendingJob(job.id, job.key, job.spec, job.key in restarted, job.round or 1)
        for job in to_run
    ]
    return pending, already_done
