"""The embedded executor: pinned local worker processes fed by asyncio, no server needed.

Each worker slot runs `python -m worker.local` pinned to one CPU set; the job goes
down its stdin and the result comes back on its stdout as one JSON line. Every job
gets a fresh process, as on a Celery worker (one child per job): its peak memory is
its own and its thread pools are sized for it alone. A process that dies mid-job
fails that job, and the rest go on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from whistle_stop.contract.cpus import CpuSetError, available_cpus, format_cpu_list, parse_cpu_list
from whistle_stop.contract.events import Event, PendingJob, Started, outcome
from whistle_stop.contract.payload import MalformedPayloadError, ResultPayload, last_words
from whistle_stop.contract.queue import FarmSettings

# Big enough for a result line with every per-token sample of a long generation.
LINE_LIMIT = 64 * 1024 * 1024


class LocalWorker:
    """One pinned fork server (worker/local.py) per CPU set, and the pipe to it: each job
    runs in a fresh child it forks, so no job pays the imports of torch."""

    def __init__(
        self, name: str, cpus: list[int], cache_dir: Path, log_dir: Path, code: Path | None = None
    ) -> None:
        self.name, self.cpus, self.cache_dir, self.log_dir = name, cpus, cache_dir, log_dir
        self.code = code  # a directory holding another revision's whistle_stop (farm bisect)
        self.process: asyncio.subprocess.Process | None = None
        # killed servers not yet reaped: stop() waits for them, in the loop that made
        # them (a transport left to the garbage collector after the loop closes prints
        # "Event loop is closed" with a traceback after Ctrl-C)
        self.killed: list[asyncio.subprocess.Process] = []

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    async def start(self) -> None:
        """Start the fork server if it is not running (first job, or after one died)."""
        if self.process is not None and self.process.returncode is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
        if self.code is not None:  # first on the path: its whistle_stop, not this one
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(self.code), env.get("PYTHONPATH")])
            )
        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",  # not the current directory: a folder there named like a package shadows it
                "-m",
                "whistle_stop.worker.local",
                "--cpus",
                format_cpu_list(self.cpus),
                "--name",
                self.name,
                "--cache-dir",
                str(self.cache_dir),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=LINE_LIMIT,
                env=env,
            )

    async def run(self, spec: dict[str, Any]) -> ResultPayload:
        """Run one job in a fresh child; its payload, or a failed one if the child died."""
        await self.start()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        return await self._exchange(spec, offset)

    async def _exchange(self, spec: dict[str, Any], offset: int) -> ResultPayload:
        """Here the orchestrator is the worker's parent: a job process that dies is seen
        at once (its server says so, or its pipe closes), in any window of its life. One
        that hangs or is frozen is killed at the farm's hard time limit, as a Celery
        worker's would be."""
        assert self.process and self.process.stdin and self.process.stdout
        limit_s = FarmSettings().hard_limit_s
        try:
            self.process.stdin.write((json.dumps(spec) + "\n").encode())
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), limit_s)
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        except TimeoutError:
            server = self.process
            self.kill()  # the server, and with it the job's child (PDEATHSIG)
            await server.wait()
            return self._failed(
                f"TimeLimitExceeded: the job passed the hard time limit of {limit_s:g} s "
                "(FARM_JOB_TIME_LIMIT + FARM_JOB_GRACE) and was killed"
            )
        if not line:
            code = await self.process.wait()
            return self._died(_exit(code), offset)
        try:
            died = json.loads(line).get("child_died")
        except (json.JSONDecodeError, AttributeError):
            died = None
        if died:
            return self._died(died, offset)
        try:
            return ResultPayload.from_json(line)
        except MalformedPayloadError as error:
            return self._failed(f"worker process {self.name} answered nonsense: {error}")

    def _died(self, how: str, offset: int) -> ResultPayload:
        said = last_words(self.log_path, offset)
        # the last line is what a report shows; farm show has the rest
        return self._failed(
            f"{said}worker process {self.name} died during the job ({how}); see {self.log_path}"
        )

    def _failed(self, error: str) -> ResultPayload:
        return ResultPayload.failed(self.name, error, cpus=format_cpu_list(self.cpus))

    async def stop(self) -> None:
        while self.killed:
            await self.killed.pop().wait()
        if self.process is None or self.process.returncode is not None:
            return
        if self.process.stdin:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except (TimeoutError, asyncio.CancelledError):
            self.process.kill()
            await self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            self.killed.append(self.process)
        self.process = None  # never written to again: the next job starts a new server


def _exit(code: int) -> str:
    if code < 0:
        import signal

        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class LocalExecutor:
    """Jobs on this machine, one pinned worker process per CPU set at a time."""

    detached = False

    def __init__(
        self, cpu_sets: list[list[int]], cache_dir: Path, code: Path | None = None
    ) -> None:
        self.workers = [
            LocalWorker(f"local-{i}", cpus, cache_dir, cache_dir / "logs", code)
            for i, cpus in enumerate(cpu_sets)
        ]

    def describe(self) -> str:
        sets = " ".join(f"[{format_cpu_list(w.cpus)}]" for w in self.workers)
        return f"{len(self.workers)} embedded worker(s) pinned to {sets}"

    async def run(
        self, sweep: str, jobs: Sequence[PendingJob], *, wait: bool = True
    ) -> AsyncIterator[list[Event]]:
        """Each worker takes the next job when its last one is done. On cancellation
        (Ctrl-C) every worker process is killed at once."""
        todo: asyncio.Queue[PendingJob] = asyncio.Queue()
        for job in jobs:
            todo.put_nowait(job)
        events: asyncio.Queue[Event | None] = asyncio.Queue()

        async def serve(worker: LocalWorker) -> None:
            while not todo.empty():
                job = todo.get_nowait()
                await events.put(Started(job.id, worker.name))
                await events.put(outcome(job.id, await worker.run(job.spec)))

        async def serve_all() -> None:
            try:
                await asyncio.gather(*(serve(worker) for worker in self.workers))
            finally:
                await events.put(None)

        runner = asyncio.create_task(serve_all())
        try:
            while (event := await events.get()) is not None:
                yield [event]
            await runner  # re-raise what a worker slot raised, if anything
        except BaseException:  # Ctrl-C, or the caller stopped listening: kill every job
            for worker in self.workers:
                worker.kill()
            raise
        finally:
            runner.cancel()
        # done: the fork servers stay up for the next round (aclose() stops them)

    async def follow(
        self, sweep: str, jobs: Sequence[PendingJob], *, wait: bool
    ) -> AsyncIterator[list[Event]]:
        """Nothing outlives the orchestrator here: there is never anything to follow."""
        return
        yield  # an async generator that yields nothing

    async def aclose(self) -> None:
        for worker in self.workers:
            await worker.stop()  # stdin closed: the server ends after its current job


def plan_cpu_sets(workers: int | None, cpus: list[str] | None) -> list[list[int]]:
    """Explicit `--cpus` sets, or the available CPUs split evenly into `workers` sets."""
    if cpus and workers:
        raise CpuSetError("--workers and --cpus both split the CPUs: give one of them")
    if cpus:
        sets = [parse_cpu_list(text) for text in cpus]
        seen: set[int] = set()
        for cpu_set in sets:
            if seen & set(cpu_set):
                raise CpuSetError(
                    f"CPU sets overlap on {format_cpu_list(sorted(seen & set(cpu_set)))}"
                )
            seen |= set(cpu_set)
        return sets
    available = available_cpus()
    count = workers or 1
    if not 1 <= count <= len(available):
        raise CpuSetError(f"--workers must be between 1 and {len(available)} here")
    size = len(available) // count
    return [available[i * size : (i + 1) * size] for i in range(count)]
