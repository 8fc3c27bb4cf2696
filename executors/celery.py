"""The Celery executor: jobs go to `farm worker`s through Redis; results come back in a stream.

Results come back through the sweep's Redis stream (contract/queue.py), read with
`redis.asyncio` in a consumer group. An entry is acknowledged only after the event it
became has been handed back to the caller and the caller asked for the next one (the
dispatch loop stores each event before it asks), so a crash between storing and
acknowledging re-reads the entry, and the idempotent store ignores it: every job ends
with exactly one result row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis
from kombu.utils.url import maybe_sanitize_url

from whistle_stop.contract.events import (
    Event,
    Failed,
    Finished,
    Lost,
    PendingJob,
    Queued,
    Started,
    outcome,
)
from whistle_stop.contract.payload import MalformedPayloadError, ResultPayload
from whistle_stop.contract.queue import (
    RESULTS_GROUP,
    TASK_NAME,
    EntryKind,
    FarmSettings,
    broker_problem,
    celery_config,
    claim_key,
    delivery_key,
    done_key,
    enqueued_key,
    job_state_keys,
    lease_key,
    results_stream,
    task_id_for,
)

CONSUMER = "orchestrator"  # one orchestrator per sweep at a time: its pending entries are ours
LOOK_EVERY_S = 5  # how often a watcher looks for lost jobs (and how long a read blocks)
READ_COUNT = 500  # stream entries per read: one batch, one transaction in the store
COALESCE_MS = 20  # after a read finds entries, how long to wait for more to join them
PUBLISH_BATCH = 1000  # jobs published per round trip
ENQUEUED_TTL_S = 30 * 24 * 3600


class BrokerError(RuntimeError):
    """The broker did not answer. The message never includes a password."""


def redacted(url: str) -> str:
    return maybe_sanitize_url(url)


async def connect(url: str) -> aioredis.Redis:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=15)
    try:
        await asyncio.wait_for(client.ping(), timeout=5)
    except (TimeoutError, OSError, aioredis.RedisError) as error:
        await client.aclose()
        raise BrokerError(broker_problem(redacted(url), error)) from None
    return client


def make_app(broker_url: str):
    """A Celery app that can publish the farm's task (the worker defines what it does)."""
    from celery import Celery

    app = Celery("whistle_stop")
    app.conf.update(celery_config(broker_url, FarmSettings()))
    return app


class CeleryExecutor:
    """Publish jobs on a Celery queue and follow the sweep's result stream."""

    detached = True

    def __init__(self, client: aioredis.Redis, broker_url: str, queue: str) -> None:
        self.client, self.broker_url, self.queue = client, broker_url, queue

    @classmethod
    async def open(cls, broker_url: str, queue: str) -> CeleryExecutor:
        """Connect first: a broker that does not answer is refused before anything else."""
        return cls(await connect(broker_url), broker_url, queue)

    def describe(self) -> str:
        return f"Celery workers via {redacted(self.broker_url)} queue {self.queue!r}"

    async def run(
        self, sweep: str, jobs: Sequence[PendingJob], *, wait: bool = True
    ) -> AsyncIterator[list[Event]]:
        for start in range(0, len(jobs), PUBLISH_BATCH):
            published = await self._publish(sweep, jobs[start : start + PUBLISH_BATCH])
            yield [Queued(job_id) for job_id in published]
        if wait:
            async for batch in self.follow(sweep, jobs, wait=True):
                yield batch

    async def _publish(self, sweep: str, jobs: Sequence[PendingJob]) -> list[int]:
        """Publish each job once; return the ids of every job now in flight.

        A job whose marker is in Redis (beside the queue that holds it) was published
        before: it is queued, running, or finished with its result waiting in the
        stream, so it is not published again after an orchestrator crash. Only a job
        that failed (or --rerun) starts afresh, its Redis state cleared.
        """
        app = make_app(self.broker_url)
        task_ids = [task_id_for(sweep, job.key) for job in jobs]
        async with self.client.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.exists(enqueued_key(task_id))
            in_flight = await pipe.execute()
        fresh = [
            (job, task_id)
            for job, task_id, marked in zip(jobs, task_ids, in_flight, strict=True)
            if job.restart or not marked
        ]
        async with self.client.pipeline(transaction=False) as pipe:
            for _, task_id in fresh:
                pipe.delete(enqueued_key(task_id), *job_state_keys(task_id))
            await pipe.execute()

        def send_all() -> None:  # one thread for the batch: kombu's publish is blocking
            with app.producer_or_acquire() as producer:
                for job, task_id in fresh:
                    app.send_task(
                        TASK_NAME,
                        args=[sweep, job.id, job.spec],
                        task_id=task_id,
                        queue=self.queue,
                        producer=producer,
                    )

        await asyncio.to_thread(send_all)
        async with self.client.pipeline(transaction=False) as pipe:
            for _, task_id in fresh:
                pipe.set(enqueued_key(task_id), "1", ex=ENQUEUED_TTL_S)
            await pipe.execute()
        return [job.id for job in jobs]

    async def follow(
        self, sweep: str, jobs: Sequence[PendingJob], *, wait: bool
    ) -> AsyncIterator[list[Event]]:
        """What is in the stream already (ours but unacknowledged, then new), then, with
        `wait`, block on the stream (no polling loop of our own) until each job finished,
        handing a job whose worker was lost back to the queue along the way.

        Each stream read is one batch; its entries are acknowledged once the caller has
        stored the batch (when it asks for the next one)."""
        await self._ensure_group(sweep)
        outstanding = {job.id: job for job in jobs}
        watch = LeaseWatch(self, sweep)
        for start in ("0", ">"):
            while entries := await self._read(sweep, start, block_ms=None):
                yield self._batch(entries, watch, outstanding)
                await self._ack(sweep, entries)
                if start == "0" and len(entries) < READ_COUNT:
                    break
        while wait and outstanding:
            try:
                entries = await self._read(sweep, ">", block_ms=watch.wait_ms())
                lost = await watch.lost(outstanding.values())
            except (OSError, aioredis.ConnectionError, aioredis.TimeoutError):
                await asyncio.sleep(2)  # the broker is restarting: read again
                continue
            if lost:
                yield lost
            if entries:
                yield self._batch(entries, watch, outstanding)
                await self._ack(sweep, entries)

    @staticmethod
    def _batch(entries, watch: LeaseWatch, outstanding: dict[int, PendingJob]) -> list[Event]:
        batch = [event for _, fields in entries for event in _events(fields)]
        for event in batch:
            watch.saw(event, outstanding)
        return batch

    async def _ack(self, sweep: str, entries) -> None:
        await self.client.xack(results_stream(sweep), RESULTS_GROUP, *(eid for eid, _ in entries))

    async def republish(self, sweep: str, job: PendingJob) -> None:
        """The job's message again, with its own task id: a new attempt of the same job."""
        app = make_app(self.broker_url)
        await asyncio.to_thread(
            app.send_task,
            TASK_NAME,
            args=[sweep, job.id, job.spec],
            task_id=task_id_for(sweep, job.key),
            queue=self.queue,
        )

    async def _ensure_group(self, sweep: str) -> None:
        try:
            await self.client.xgroup_create(
                results_stream(sweep), RESULTS_GROUP, id="0", mkstream=True
            )
        except aioredis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _read(self, sweep: str, start: str, block_ms: int | None):
        """Entries of the sweep's stream. A blocking read that finds some waits a few ms
        more for their neighbours, so a busy farm writes one transaction per handful of
        results rather than one per result."""
        entries = await self._read_once(sweep, start, block_ms)
        if block_ms is not None and 0 < len(entries) < READ_COUNT:
            entries += await self._read_once(sweep, start, COALESCE_MS, READ_COUNT - len(entries))
        return entries

    async def _read_once(self, sweep: str, start: str, block_ms: int | None, count=READ_COUNT):
        streams = {results_stream(sweep): start}
        try:
            reply = await self.client.xreadgroup(
                RESULTS_GROUP, CONSUMER, streams, count=count, block=block_ms
            )
        except aioredis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self._ensure_group(sweep)  # the stream is new after a broker restart
            return []
        return reply[0][1] if reply else []

    async def aclose(self) -> None:
        await self.client.aclose()


class LeaseWatch:
    """Notices a delivered job whose worker is gone, and hands it back to the queue.

    A worker's main process claims each job the moment its message arrives and renews
    the claim every third of FARM_LEASE_S until the job is over; the process running the
    job also holds its lease (worker/channel.py). A worker that dies (power cut, OOM
    kill, lost VM) or freezes stops renewing both. Without this watch the job would come
    back only after the broker's visibility timeout (hours), whichever moment of its life
    the worker died in: before its child started, during the child's start-up, while it
    ran, or before its acknowledgement.

    A job counts as lost when it was delivered (its delivery counter exists) and has
    neither a claim, a lease nor a result on two looks in a row (two looks, so a job is
    never handed back on one slow heartbeat). It is then published again: the attempt
    check fails it after FARM_MAX_ATTEMPTS, and the done marker drops any stale copy the
    broker hands out later. Every outstanding job is looked at, in one round trip: a job
    can be delivered without anything in the result stream saying so.
    """

    def __init__(self, executor: CeleryExecutor, sweep: str) -> None:
        self.executor, self.sweep = executor, sweep
        self.settings = FarmSettings()
        self.workers: dict[int, str] = {}  # job id -> the worker that last started it
        self.suspects: set[int] = set()
        self.handed_back: dict[int, int] = {}  # job id -> its deliveries when handed back
        self.last_look = 0.0

    def saw(self, event: Event, outstanding: dict[int, PendingJob]) -> None:
        if isinstance(event, Started):
            self.workers[event.job_id] = event.worker
        if isinstance(event, Finished | Failed):
            outstanding.pop(event.job_id, None)

    def wait_ms(self) -> int:
        """How long to block on the stream: a suspect is looked at again after a second."""
        return 1000 if self.suspects else LOOK_EVERY_S * 1000

    async def lost(self, jobs) -> list[Event]:
        now = asyncio.get_running_loop().time()
        if now - self.last_look < self.wait_ms() / 1000:
            return []
        self.last_look = now
        jobs = list(jobs)
        async with self.executor.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                task_id = task_id_for(self.sweep, job.key)
                pipe.hgetall(delivery_key(task_id)).exists(claim_key(task_id))
                pipe.exists(lease_key(task_id)).exists(done_key(task_id))
            replies = await pipe.execute()
        events: list[Event] = []
        for index, job in enumerate(jobs):
            delivery, claimed, leased, done = replies[4 * index : 4 * index + 4]
            delivered = int(delivery.get(b"count", 0))
            # a worker whose child crashed puts the message back itself: queued, not lost
            queued = delivered <= int(delivery.get(b"requeued", 0))
            held = claimed or leased or done or queued
            if not delivered or held or delivered <= self.handed_back.get(job.id, 0):
                self.suspects.discard(job.id)
                continue
            if job.id not in self.suspects:
                self.suspects.add(job.id)
                continue
            self.suspects.discard(job.id)
            self.handed_back[job.id] = delivered
            await self.executor.republish(self.sweep, job)
            worker = delivery.get(b"worker", b"").decode() or self.workers.get(job.id)
            why = (
                f"no heartbeat for {self.settings.lease_s:g} s (FARM_LEASE_S) from the worker "
                f"it was delivered to: it died, froze or lost its network; handed to the "
                f"queue again (delivery {delivered + 1})"
            )
            events.append(Lost(job.id, worker, why))
        return events


def _events(fields: dict[bytes, bytes]) -> list[Event]:
    """A stream entry as an event; none for an entry that is not one of ours."""
    try:
        kind = EntryKind(fields[b"kind"].decode())
        job_id = int(fields[b"job_id"])
        if kind is EntryKind.STARTED:
            started = json.loads(fields[b"payload"])
            return [Started(job_id, str(started["worker"]), int(started.get("attempt", 1)))]
        return [outcome(job_id, ResultPayload.from_json(fields[b"payload"]))]
    except (KeyError, ValueError, TypeError, MalformedPayloadError):
        return []  # not an entry a worker of this version wrote: acknowledged and dropped


async def farm_status(broker_url: str, queue: str) -> tuple[int, dict[str, list[str]]]:
    """Queue depth and live workers with what each is running (Celery remote control)."""
    client = await connect(broker_url)
    try:
        depth = await client.llen(queue)
    finally:
        await client.aclose()
    inspect = make_app(broker_url).control.inspect(timeout=1.5)
    active = await asyncio.to_thread(inspect.active) or {}
    workers = {name: [_describe_task(task) for task in tasks] for name, tasks in active.items()}
    return depth, workers


def _describe_task(task: dict) -> str:
    args = task.get("args") or []
    if len(args) == 3 and isinstance(args[2], dict):
        sweep, spec = args[0], args[2]
        return (
            f"{sweep}: {spec.get('label')} ctx={spec.get('context')} gen={spec.get('generation')}"
        )
    return str(task.get("name"))
