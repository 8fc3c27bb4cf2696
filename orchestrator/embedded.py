"""The embedded executor: pinned local worker processes fed by asyncio, no server needed.

Each worker slot runs `python -m worker.local` pinned to one CPU set; the job
goes down its stdin and the result comes back on its stdout as one JSON line.
Every job gets a fresh process, as on a Celery worker (one child per job): its
peak memory is its own and its thread pools are sized for it alone. A process
that dies mid-job fails that job, and the rest go on.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.pinning import format_cpu_list

# Big enough for a result line with every per-token sample of a long generation.
LINE_LIMIT = 64 * 1024 * 1024


class LocalWorker:
    """One pinned child process and the pipe to it."""

    def __init__(self, name: str, cpus: list[int], cache_dir: Path, log_dir: Path) -> None:
        self.name, self.cpus, self.cache_dir, self.log_dir = name, cpus, cache_dir, log_dir
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker.local",
            "--cpus", format_cpu_list(self.cpus),
            "--name", self.name,
            "--cache-dir", str(self.cache_dir),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=LINE_LIMIT,
            env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"},
        )  # fmt: skip
        log.close()

    async def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one job in a fresh process; its payload, or a failed one if the process died."""
        await self.start()
        try:
            return await self._exchange(spec)
        finally:
            await self.stop()

    async def _exchange(self, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.process and self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write((json.dumps(spec) + "\n").encode())
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        except (BrokenPipeError, ConnectionResetError):
            line = b""
        if line:
            return json.loads(line)
        code = await self.process.wait()
        return {
            "status": "failed",
            "worker": self.name,
            "cpus": format_cpu_list(self.cpus),
            "error": f"worker process {self.name} died during the job (exit code {code}); "
            f"see {self.log_dir / (self.name + '.log')}",
        }

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        if self.process.stdin:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self.process.kill()
            await self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


async def run_jobs(
    jobs: list[tuple[Any, dict[str, Any]]],
    workers: list[LocalWorker],
    on_start: Callable[[Any, LocalWorker], None],
    on_result: Callable[[Any, dict[str, Any]], None],
) -> None:
    """Run `(handle, spec)` jobs on `workers`, one job per worker at a time.

    Callbacks run in the event loop, so the caller's database writes stay in
    one thread. On cancellation (Ctrl-C) the workers are killed at once.
    """
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def serve(worker: LocalWorker) -> None:
        while not queue.empty():
            handle, spec = queue.get_nowait()
            on_start(handle, worker)
            on_result(handle, await worker.run(spec))

    try:
        await asyncio.gather(*(serve(worker) for worker in workers))
    finally:
        for worker in workers:
            worker.kill()
