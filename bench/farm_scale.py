"""The farm at scale: how fast no-op jobs flow through the real Celery path.

submit -> Redis -> W `farm worker`s -> the result stream -> the store, with the `noop`
test backend (tests/plugin: no model, no torch), so what is measured is the farm itself.
Starts its own redis-server and workers (each under a hostname of its own, spread over
this machine's CPUs). Prints, per worker count:

- enqueue rate (jobs/s) and end-to-end throughput (stored results/s);
- per-job overhead: each worker's cycle (W / throughput) minus the job's own time;
- the orchestrator's CPU seconds and peak RSS (`farm submit --no-wait` then `farm
  collect`, each a process of its own, measured with wait4), and Redis's peak memory;

then the latency of one job alone (enqueue -> stored, minus its own time, p50 and p99)
and, with --big, how long `farm status` and `farm report` take on a database of
100,000 results (SQLite, and PostgreSQL when one answers).

    farm bench farm-scale --workers 1,4,16 --jobs 10000 [--big]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console
from sqlalchemy import func, select

from whistle_stop.bench.common import table
from whistle_stop.bench.harness import FARM, RedisServer, farm_env, noop_workers, save_tiny_gpt2
from whistle_stop.contract.events import Failed, Finished, Queued
from whistle_stop.db.models import Result
from whistle_stop.db.session import make_session_factory
from whistle_stop.executors.celery import CeleryExecutor
from whistle_stop.orchestrator.dispatch import run_sweep
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep

quiet = Console(quiet=True)


def sweep_text(model: Path, name: str, jobs: int, step_s: float) -> str:
    """A grid of `jobs` cells: contexts x generation lengths of a no-op backend."""
    generations = list(range(1, min(jobs, 100) + 1))
    contexts = list(range(1, -(-jobs // len(generations)) + 1))
    return (
        f"name: {name}\nmodel: {model}\nbackends:\n  - name: noop\n    step_s: {step_s}\n"
        f"context_sizes: {contexts}\ngeneration_lengths: {generations}\nthreads: [1]\n"
        "warmups: 0\nrepeats: 1\nfidelity_tokens: 0\nbandwidth: host\n"
    )


class TimedStore(Store):
    """The store, noting per job when it was queued and stored, and its own time."""

    def __init__(self, sessions) -> None:
        super().__init__(sessions)
        self.queued: dict[int, float] = {}
        self.overheads: list[float] = []

    def apply_many(self, events):
        applied = super().apply_many(events)
        now = time.time()
        for event in events:
            if isinstance(event, Queued):
                self.queued[event.job_id] = now
            elif isinstance(event, Finished | Failed):
                result = event.result
                own = (result.finished_at or now) - (result.started_at or now)
                self.overheads.append(now - self.queued.get(event.job_id, now) - own)
        return applied


async def submit(plan, store: Store, broker: str):
    executor = await CeleryExecutor.open(broker, "farm")
    try:
        return await run_sweep(plan, store, executor, quiet, quiet=True)
    finally:
        await executor.aclose()


def redis_peak_mb(redis: RedisServer) -> float:
    import redis as redis_client

    info = redis_client.Redis(port=redis.port).info("memory")
    return info["used_memory_peak"] / 1e6


def orchestrator(args: list[str]) -> tuple[float, float, float]:
    """Run a `farm` command; its wall time, CPU seconds (wait4) and peak RSS in MB (sampled
    every 20 ms: wait4's maxrss would count the pages this process shared at the fork)."""
    import psutil

    clock = time.perf_counter()
    errors = tempfile.TemporaryFile()  # a pipe nobody reads would fill and block the command
    process = subprocess.Popen([FARM, *args, "-q"], stdout=subprocess.DEVNULL, stderr=errors)
    peak, watched = 0, psutil.Process(process.pid)
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.02)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if process.returncode != 0:
        errors.seek(0)
        raise RuntimeError(f"farm {args[0]} failed: {errors.read().decode()[-2000:]}")
    return time.perf_counter() - clock, usage.ru_utime + usage.ru_stime, peak / 2**20


def one_size(tmp: Path, model: Path, workers: int, jobs: int, step_s: float, db: str) -> list:
    """`farm submit --no-wait` then `farm collect`: the real orchestrator, measured alone."""
    redis = RedisServer(tmp / f"redis-{workers}", fsync="everysec")
    redis.start()
    started = []
    try:
        launched = time.perf_counter()
        started = noop_workers(redis.url(), workers, tmp / f"w{workers}", farm_env())
        ready_s = time.perf_counter() - launched
        grid = tmp / f"scale-{workers}.yaml"
        grid.write_text(sweep_text(model, grid.stem, jobs, step_s))
        common = ["--broker", redis.url(), "--db", db]
        enqueue = orchestrator(["submit", "--grid", str(grid), "--no-wait", "--yes", *common])
        collect = orchestrator(["collect", "--sweep", grid.stem, *common])
        with make_session_factory(db)() as session:
            stored = session.scalar(select(func.count()).select_from(Result))
        wall = enqueue[0] + collect[0]
        own_s = step_s * statistics.fmean(range(1, min(jobs, 100) + 1))  # a job's own time
        throughput = stored / wall
        return [
            str(workers),
            f"{stored}/{jobs}",
            f"{ready_s:.0f}",
            f"{jobs / enqueue[0]:.0f}",
            f"{wall:.1f}",
            f"{throughput:.0f}",
            f"{1e3 * (workers / throughput - own_s):.1f}",
            f"{enqueue[1] + collect[1]:.1f}",
            f"{max(enqueue[2], collect[2]):.0f}",
            f"{redis_peak_mb(redis):.0f}",
        ]
    finally:
        for worker in started:
            worker.kill9()
        redis.stop()


def alone(tmp: Path, model: Path, runs: int, db: str) -> tuple[float, float]:
    """One job at a time on one worker: (enqueue -> stored) minus the job's own time
    (its worker's start to end), p50 and p99 over `runs` one-job sweeps."""
    redis = RedisServer(tmp / "redis-alone", fsync="everysec")
    redis.start()
    workers = []
    try:
        workers = noop_workers(redis.url(), 1, tmp / "alone", farm_env())
        store = TimedStore(make_session_factory(db))
        for run in range(runs):
            plan = parse_sweep(
                sweep_text(model, f"alone-{run}", 1, 0.0), origin="-", default_name="-"
            )
            asyncio.run(submit(plan, store, redis.url()))
        ordered = sorted(store.overheads[1:])  # the first pays the child's imports
        return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    finally:
        for worker in workers:
            worker.kill9()
        redis.stop()


def big_database(db: str, results: int) -> tuple[float, float]:
    """A database of `results` results; the time of `farm status` and `farm report -f csv`."""
    from whistle_stop.bench.harness import made_up_result
    from whistle_stop.contract.events import Finished

    plan = parse_sweep(
        f"name: big\nbackends: [hf, nanogpt]\ncontext_sizes: "
        f"{list(range(1, results // 200 + 1))}\ngeneration_lengths: "
        f"{list(range(1, 101))}\n",
        origin="-",
        default_name="big",
        max_jobs=None,
    )
    store = Store(make_session_factory(db))
    pending = store.record_sweep(plan).to_run
    done = made_up_result(25.0, 32, 4)
    for start in range(0, len(pending), 2000):
        store.apply_many([Finished(job.id, done) for job in pending[start : start + 2000]])
    timings = []
    for command in (["status"], ["report", "--sweep", "big", "-f", "csv"]):
        clock = time.perf_counter()
        subprocess.run([FARM, *command, "--db", db], check=True, capture_output=True)
        timings.append(time.perf_counter() - clock)
    return timings[0], timings[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,4,16", help="worker counts, comma-separated")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--step-s", type=float, default=0.0, help="each no-op token's time")
    parser.add_argument("--alone", type=int, default=30, help="one-job sweeps for the latency")
    parser.add_argument("--big", action="store_true", help="time status/report on 100,000")
    parser.add_argument(
        "--pg",
        default="postgresql+psycopg://postgres@127.0.0.1/test",
        help="PostgreSQL for --big (a database is made and dropped)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = save_tiny_gpt2(tmp / "tiny", n_positions=1024)
        rows = [
            one_size(tmp, model, w, args.jobs, args.step_s, str(tmp / f"s{w}.db"))
            for w in map(int, args.workers.split(","))
        ]
        print(
            table(
                [
                    "workers",
                    "stored",
                    "ready s",
                    "enqueue jobs/s",
                    "wall s",
                    "stored/s",
                    "overhead ms/job",
                    "orch. CPU s",
                    "orch. RSS MB",
                    "Redis MB",
                ],
                rows,
            )
        )
        p50, p99 = alone(tmp, model, args.alone, str(tmp / "alone.db"))
        print(
            f"one job alone, (enqueue -> stored) - its own time ({args.alone} runs): "
            f"p50 {1e3 * p50:.1f} ms, p99 {1e3 * p99:.1f} ms"
        )
        if args.big:
            status_s, report_s = big_database(str(tmp / "big.db"), 100_000)
            print(
                f"100,000 results, SQLite: farm status {status_s:.2f} s, "
                f"farm report -f csv {report_s:.2f} s"
            )
            big_postgres(args.pg)


def big_postgres(url: str) -> None:
    import uuid

    import psycopg

    name = f"whistle_scale_{uuid.uuid4().hex[:8]}"
    admin_url = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        print(f"PostgreSQL skipped: {str(error).splitlines()[0]}")
        return
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            status_s, report_s = big_database(url.rsplit("/", 1)[0] + f"/{name}", 100_000)
            print(
                f"100,000 results, PostgreSQL: farm status {status_s:.2f} s, "
                f"farm report -f csv {report_s:.2f} s"
            )
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
