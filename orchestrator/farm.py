"""`farm submit/collect/status` against a broker: enqueue on Celery, collect from Redis.

Results come back through the sweep's Redis stream (see worker/channel.py), read
with `redis.asyncio` in a consumer group. Each entry is committed to SQLite and
only then acknowledged, so a crash between the two re-reads the entry and the
idempotent store ignores it: every job ends with exactly one result row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from kombu.utils.url import maybe_sanitize_url
from rich.console import Console
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, Sweep
from orchestrator import store
from orchestrator.progress import job_progress
from orchestrator.submit import SubmitSummary
from orchestrator.sweep import Sweep as SweepPlan
from worker.channel import GROUP, job_state_keys, results_stream, task_id_for

CONSUMER = "orchestrator"  # one orchestrator per sweep at a time: its pending entries are ours
UNFINISHED = ("pending", "queued", "running")


class BrokerError(RuntimeError):
    """The broker did not answer. The message never includes a password."""


def redacted(url: str) -> str:
    return maybe_sanitize_url(url)


async def connect(url: str) -> aioredis.Redis:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=15)
    try:
        await asyncio.wait_for(client.ping(), timeout=5)
    except (OSError, aioredis.RedisError, asyncio.TimeoutError) as error:
        await client.aclose()
        raise BrokerError(
            f"the broker at {redacted(url)} does not answer ({type(error).__name__}); "
            "start Redis (e.g. `docker compose up -d redis`) or fix --broker / FARM_BROKER_URL"
        ) from None
    return client


async def submit_farm(
    plan: SweepPlan,
    open_db: Callable[[], sessionmaker[Session]],
    *,
    broker_url: str,
    queue: str,
    rerun: bool,
    wait: bool,
    console: Console,
) -> SubmitSummary:
    client = await connect(broker_url)  # before anything is recorded, or even opened
    sessions = open_db()
    try:
        await _drain(client, plan.name, sessions)  # results that landed while nobody watched
        with sessions.begin() as session:
            recorded = store.record_sweep(session, plan, rerun=rerun)
            to_run = [(job.id, job.key, job.spec, job.id in recorded.restarted)
                      for job in recorded.to_run]  # fmt: skip
        if recorded.already_done:
            console.print(
                f"{recorded.already_done} job(s) already done: skipped (--rerun runs them again)"
            )
        enqueued = await _enqueue(client, plan.name, to_run, sessions, broker_url, queue)
        console.print(f"enqueued {enqueued} job(s) on {redacted(broker_url)} queue {queue!r}")
        summary = SubmitSummary(plan.name, enqueued, 0, 0, recorded.already_done)
        if wait:
            await _collect(client, plan.name, sessions, console, summary)
        return summary
    finally:
        await client.aclose()


async def _enqueue(client, sweep, jobs, sessions, broker_url, queue) -> int:
    """Publish each unfinished job once.

    A job whose marker is in Redis (beside the queue that holds it) was published
    before: it is queued, running, or finished with its result waiting in the stream,
    so it is not published again after an orchestrator crash. Only a job that failed
    (or --rerun) starts afresh, its Redis state cleared.
    """
    from worker.celery_app import TASK_NAME, make_app

    app = make_app(broker_url)
    enqueued = 0
    with sessions.begin() as session:
        for job_id, key, spec, restart in jobs:
            task_id = task_id_for(sweep, key)
            marker = f"farm:enqueued:{task_id}"
            if not restart and await client.exists(marker):
                session.get(Job, job_id).status = "queued"  # in flight, or its result is coming
                continue
            await client.delete(marker, *job_state_keys(task_id))  # a fresh start for this job
            await asyncio.to_thread(
                app.send_task, TASK_NAME, args=[sweep, job_id, spec], task_id=task_id, queue=queue
            )
            await client.set(marker, "1", ex=30 * 24 * 3600)
            session.get(Job, job_id).status = "queued"
            enqueued += 1
    return enqueued


async def collect(
    sweep_name: str,
    sessions: sessionmaker[Session],
    *,
    broker_url: str,
    wait: bool,
    console: Console,
) -> SubmitSummary:
    """Store every result waiting for this sweep; with `wait`, also those still to come."""
    client = await connect(broker_url)
    try:
        summary = SubmitSummary(sweep_name, 0, 0, 0, 0)
        stored = await _drain(client, sweep_name, sessions)
        summary.done, summary.failed = stored
        if wait:
            await _collect(client, sweep_name, sessions, console, summary)
        return summary
    finally:
        await client.aclose()


async def _drain(client, sweep: str, sessions) -> tuple[int, int]:
    """Store what is already in the stream (ours but unacknowledged, then new), no waiting."""
    await _ensure_group(client, sweep)
    counts = [0, 0]
    for start in ("0", ">"):
        while entries := await _read(client, sweep, start, block_ms=None):
            for entry_id, fields in entries:
                outcome = _store_entry(sessions, fields)
                await client.xack(results_stream(sweep), GROUP, entry_id)
                if outcome:
                    counts[outcome == "failed"] += 1
            if start == "0" and len(entries) < 100:
                break
    return counts[0], counts[1]


async def _collect(client, sweep: str, sessions, console: Console, summary: SubmitSummary) -> None:
    """Block on the stream (no polling loop of our own) until no job is unfinished."""
    remaining = _unfinished(sessions, sweep)
    if remaining == 0:
        return
    with job_progress(console) as progress:
        bar = progress.add_task(sweep, total=remaining, failed=0, current="waiting for workers")
        while _unfinished(sessions, sweep):
            try:
                entries = await _read(client, sweep, ">", block_ms=5000)
            except (OSError, aioredis.ConnectionError, aioredis.TimeoutError):
                progress.update(bar, current="broker unreachable, retrying")
                await asyncio.sleep(2)
                continue
            for entry_id, fields in entries or []:
                outcome = _store_entry(sessions, fields)
                await client.xack(results_stream(sweep), GROUP, entry_id)
                if outcome in ("done", "failed"):
                    summary.done += outcome == "done"
                    summary.failed += outcome == "failed"
                    progress.update(bar, advance=1, failed=summary.failed)
                elif outcome and outcome.startswith("started"):
                    progress.update(bar, current=outcome.removeprefix("started "))


async def _ensure_group(client, sweep: str) -> None:
    try:
        await client.xgroup_create(results_stream(sweep), GROUP, id="0", mkstream=True)
    except aioredis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def _read(client, sweep: str, start: str, block_ms: int | None):
    if block_ms is not None:
        await _ensure_group(client, sweep)  # the stream may be new after a broker restart
    reply = await client.xreadgroup(
        GROUP, CONSUMER, {results_stream(sweep): start}, count=100, block=block_ms
    )
    return reply[0][1] if reply else []


def _store_entry(sessions, fields: dict[bytes, bytes]) -> str | None:
    """Commit one stream entry; returns 'done', 'failed', 'started ...', or None if stale."""
    kind = fields[b"kind"].decode()
    payload: dict[str, Any] = json.loads(fields[b"payload"])
    with sessions.begin() as session:
        job = session.get(Job, int(fields[b"job_id"]))
        if job is None:
            return None
        if kind == "started":
            if job.status in ("pending", "queued", "running"):
                job.status, job.worker = "running", payload.get("worker")
                job.attempts = max(job.attempts, int(payload.get("attempt", 1)))
                return f"started {payload.get('worker')}: {job.label} ctx={job.context} gen={job.generation}"  # noqa: E501
            return None
        if not store.store_result(session, job, payload):
            return None  # a duplicate: this job has its result already
        if "attempt" in payload:
            job.attempts = max(job.attempts, int(payload["attempt"]))
        return job.status


def _unfinished(sessions, sweep: str) -> int:
    with sessions() as session:
        sweep_row = session.scalar(select(Sweep).where(Sweep.name == sweep))
        if sweep_row is None:
            return 0
        return sum(job.status in UNFINISHED for job in sweep_row.jobs)


async def farm_status(broker_url: str, queue: str) -> tuple[int, dict[str, list[str]]]:
    """Queue depth and live workers with what each is running (Celery remote control)."""
    from worker.celery_app import make_app

    client = await connect(broker_url)
    try:
        depth = await client.llen(queue)
    finally:
        await client.aclose()
    app = make_app(broker_url)
    inspect = app.control.inspect(timeout=1.5)
    active = await asyncio.to_thread(inspect.active) or {}
    workers = {name: [_describe_task(task) for task in tasks] for name, tasks in active.items()}
    return depth, workers


def _describe_task(task: dict) -> str:
    args = task.get("args") or []
    if len(args) == 3 and isinstance(args[2], dict):
        spec = args[2]
        return (
            f"{args[0]}: {spec.get('label')} ctx={spec.get('context')} gen={spec.get('generation')}"  # noqa: E501
        )
    return str(task.get("name"))
