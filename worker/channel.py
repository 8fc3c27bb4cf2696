"""The worker's side of Redis: publish results, count attempts, hold leases, claim CPUs.

The key names and what each means are in contract/queue.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from whistle_stop.contract.payload import ResultPayload
from whistle_stop.contract.queue import (
    DONE_TTL_S,
    EntryKind,
    attempts_key,
    claim_key,
    cpu_claim_key,
    crash_key,
    delivery_key,
    done_key,
    lease_key,
    results_stream,
)


class WorkerChannel:
    """The worker's side: publish, count attempts, hold leases, claim CPUs."""

    def __init__(self, url: str, lease_s: float = 30) -> None:
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self.lease_s = max(1, round(lease_s))  # a dead holder's lease lapses this long after

    def is_done(self, task_id: str) -> bool:
        return bool(self._retrying(self.redis.exists, done_key(task_id)))

    def count_attempt(self, task_id: str) -> int:
        return int(self._retrying(self.redis.incr, attempts_key(task_id)))

    def crashed(self, task_id: str, death: str, said: str) -> None:
        """How the job's worker died ("killed by SIGILL") and its last stderr lines."""
        how = json.dumps({"death": death, "said": said})
        self._retrying(self.redis.set, crash_key(task_id), how, ex=DONE_TTL_S)

    def last_crash(self, task_id: str) -> dict[str, str]:
        how = self._retrying(self.redis.get, crash_key(task_id))
        return json.loads(how) if how else {"death": "", "said": ""}

    def started(self, sweep: str, job_id: int, task_id: str, worker: str, attempt: int) -> None:
        payload = {"worker": worker, "attempt": attempt}
        self._publish(sweep, EntryKind.STARTED, job_id, task_id, json.dumps(payload))

    def result(self, sweep: str, job_id: int, task_id: str, result: ResultPayload) -> None:
        """Append the result to the sweep's stream and mark the task done, atomically."""
        self._publish(sweep, EntryKind.RESULT, job_id, task_id, result.to_json())

    def _publish(self, sweep: str, kind: EntryKind, job_id: int, task_id: str, payload: str):
        entry = {"kind": kind.value, "job_id": job_id, "task_id": task_id, "payload": payload}

        def send() -> None:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(results_stream(sweep), entry)
                if kind is EntryKind.RESULT:
                    pipe.set(done_key(task_id), "1", ex=DONE_TTL_S)
                pipe.execute()

        self._retrying(send)

    @contextmanager
    def lease(self, task_id: str, holder: str) -> Iterator[bool]:
        """Hold the job's lease while running it. Yields False if another live process
        finished the job while we waited (then this delivery is a duplicate)."""
        key = lease_key(task_id)
        while not self._retrying(self.redis.set, key, holder, nx=True, ex=self.lease_s):
            if self.is_done(task_id):
                yield False
                return
            current = self.redis.get(key)
            if current and _dead_here(current.decode()):
                self.redis.delete(key)  # its process is gone: no need to wait for the TTL
                continue
            time.sleep(1)  # the holder is alive (it renews) or its lease lapses soon
        stop = threading.Event()
        beat = threading.Thread(target=self._renew, args=(key, holder, stop), daemon=True)
        beat.start()
        try:
            yield True
        finally:
            stop.set()
            beat.join()
            try:
                if self.redis.get(key) == holder.encode():
                    self.redis.delete(key)
            except redis.RedisError:
                pass  # the lease lapses by itself; never mask the job's own outcome

    def _renew(self, key: str, holder: str, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 3):
            try:
                if self.redis.get(key) == holder.encode():
                    self.redis.expire(key, self.lease_s)
            except redis.RedisError:
                pass  # the broker is away; the next beat tries again

    def claim_delivery(self, task_id: str, node: str) -> None:
        """The moment a message arrives: count the delivery, name its worker, and claim the
        job for this worker's main process (renewed by `renew_claims` until it is over)."""

        def send() -> None:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(delivery_key(task_id), "count", 1)
                pipe.hset(delivery_key(task_id), "worker", node)
                pipe.expire(delivery_key(task_id), DONE_TTL_S)
                pipe.set(claim_key(task_id), node, ex=self.lease_s)
                pipe.execute()

        self._retrying(send, deadline_s=30)

    def requeued(self, task_id: str) -> None:
        """The job's child died and Celery put its message back on the queue: it waits
        there, delivered to no one, and no claim is missed."""
        self._retrying(self.redis.hincrby, delivery_key(task_id), "requeued", 1, deadline_s=30)

    def renew_claims(self, task_ids: list[str], node: str) -> None:
        """The heartbeat of the jobs this worker holds, delivered, starting or running."""
        with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.set(claim_key(task_id), node, ex=self.lease_s)
            pipe.execute()

    def claim_cpus(self, cpus: list[int], node: str, ttl_s: int = 30) -> list[str]:
        """Claim each CPU of this host for `node`; return the conflicting claims (none: ok)."""
        host = socket.gethostname()
        conflicts = []
        for cpu in cpus:
            key = cpu_claim_key(host, cpu)
            if not self.redis.set(key, node, nx=True, ex=ttl_s):
                holder = (self.redis.get(key) or b"?").decode()
                if holder != node:
                    conflicts.append(f"CPU {cpu} is used by worker {holder}")
        if conflicts:
            self.release_cpus(cpus, node)
        return conflicts

    def renew_cpus(self, cpus: list[int], node: str, ttl_s: int = 30) -> None:
        host = socket.gethostname()
        for cpu in cpus:
            self.redis.set(cpu_claim_key(host, cpu), node, ex=ttl_s)

    def release_cpus(self, cpus: list[int], node: str) -> None:
        host = socket.gethostname()
        for cpu in cpus:
            key = cpu_claim_key(host, cpu)
            if self.redis.get(key) == node.encode():
                self.redis.delete(key)

    def _retrying(self, call, *args, deadline_s: float = 600, **kwargs) -> Any:
        """Redis may be restarting: retry instead of losing a result.

        The backoff stays short (at most 1 s): a restart takes seconds, and each second
        spent waiting past it counts against the job's time limit.
        """
        started, delay = time.monotonic(), 0.25
        while True:
            try:
                return call(*args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                if time.monotonic() - started > deadline_s:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 1)


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(holder: str) -> bool:
    """True if `holder` names a process of this host that no longer exists."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's process: only its lease expiry tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
