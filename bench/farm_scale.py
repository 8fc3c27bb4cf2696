"""The farm at scale: how fast no-op jobs flow through the real Celery path.

submit -> Redis -> W `farm worker`s -> the result stream -> the store, with the `noop`
test backend (tests/plugin: no model, no torch), so what is measured is the farm itself.
Starts its own redis-server and workers (each under a hostname of its own, spread over
this machine's CPUs). Prints, per worker count:

- enqueue rate (jobs/s) and end-to-end throughput (stored results/s);
- per-job overhead: each worker's cycle (W / throughput) minus the job's own time;
- the orchestrator's CPU seconds and peak RSS (`farm submit --no-wait` then `farm
  collect`, each a process of its own, measured with wait4), and Redis's peak memory;

then the latency of one job alone (enqueue -> stored, minus its own time, p50 and p99),
with the no-op backend and with a real one (`hf` on a tiny GPT-2, on a worker that starts
each job as the farm does: a fresh child of its fork server); with --pair J, a sweep of
J GPT-2 small jobs on one worker pinned to CPU 0, then on two pinned to CPUs 0 and 1;
with --big, how long `farm status` and `farm report` take on a database of 100,000
results (SQLite, and PostgreSQL when one answers).

    farm bench farm-scale --workers 1,4,16 --jobs 10000 [--pair 8] [--big]
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

from whistle_stop.bench.common import counting, table
from whistle_stop.bench.harness import (
    FARM,
    FarmWorker,
    RedisServer,
    farm_env,
    noop_workers,
    save_tiny_gpt2,
)
from whistle_stop.contract.events import Failed, Finished, Queued
from whistle_stop.db.models import Result
from whistle_stop.db.session import make_session_factory
from whistle_stop.executors.celery import CeleryExecutor
from whistle_stop.orchestrator.dispatch import run_sweep
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep

quiet = Console(quiet=True)
HEADINGS = (
    "workers, stored, ready s, enqueue jobs/s, wall s, stored/s, overhead ms/job, "
    "orch. CPU s, orch. RSS MB, Redis MB"
).split(", ")


def sweep_text(model: Path | str, name: str, jobs: int, step_s: float, backend="") -> str:
    """A grid of `jobs` cells: contexts x generation lengths of a no-op backend (or of
    `backend`, e.g. hf, with contexts of 8 tokens and up)."""
    generations = list(range(1, min(jobs, 100) + 1))
    contexts = list(range(1, -(-jobs // len(generations)) + 1))
    if backend:
        contexts = [8 * c for c in contexts]
    block = f"[{backend}]" if backend else f"\n  - name: noop\n    step_s: {step_s}"
    return (
        f"name: {name}\nmodel: {model}\nbackends: {block}\n"
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
        overhead_ms = 1e3 * (workers / throughput - own_s)
        rates = [f"{ready_s:.0f}", f"{jobs / enqueue[0]:.0f}", f"{wall:.1f}", f"{throughput:.0f}"]
        costs = [f"{overhead_ms:.1f}", f"{enqueue[1] + collect[1]:.1f}"]
        costs += [f"{max(enqueue[2], collect[2]):.0f}", f"{redis_peak_mb(redis):.0f}"]
        return [str(workers), f"{stored}/{jobs}", *rates, *costs]
    finally:
        for worker in started:
            worker.kill9()
        redis.stop()


def alone(tmp: Path, model: Path, runs: int, db: str, backend="") -> tuple[float, float]:
    """One job at a time on one worker: (enqueue -> stored) minus the job's own time
    (its worker's start to end), p50 and p99 over `runs` one-job sweeps; the no-op
    backend on a no-op worker, or `backend` on a worker as users start one."""
    redis = RedisServer(tmp / f"redis-alone{backend}", fsync="everysec")
    redis.start()
    workers = []
    try:
        if backend:
            log, cache = tmp / "alone-real.log", tmp / "alone-cache"
            workers = [FarmWorker(redis.url(), "0", "w0", log, cache, farm_env()).start()]
        else:
            workers = noop_workers(redis.url(), 1, tmp / "alone", farm_env())
        store = TimedStore(make_session_factory(db))
        for run in range(runs):
            text = sweep_text(model, f"alone-{run}", 1, 0.0, backend)
            plan = parse_sweep(text, origin="-", default_name="-")
            asyncio.run(submit(plan, store, redis.url()))
        ordered = sorted(store.overheads[1:])  # the first pays the child's imports
        return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    finally:
        for worker in workers:
            worker.kill9()
        redis.stop()


def pair(tmp: Path, jobs: int) -> None:
    """A sweep of `jobs` GPT-2 small jobs (one thread each, long enough that the workers,
    not the queue, dominate) on one worker, then on two: both wall times."""
    redis = RedisServer(tmp / "redis-pair", fsync="everysec")
    redis.start()
    workers: list[FarmWorker] = []
    try:
        for count in (1, 2):
            log, cache = tmp / f"pair{count}.log", tmp / "pair-cache"
            worker = FarmWorker(redis.url(), str(count - 1), f"p{count}", log, cache, farm_env())
            workers.append(worker.start())
            contexts = [32 + 8 * i for i in range(jobs)]
            text = f"name: pair-{count}\nbackends: [hf]\ncontext_sizes: {contexts}\n"
            text += "generation_lengths: [64]\nthreads: [1]\nwarmups: 0\nrepeats: 1\n"
            plan = parse_sweep(text, origin="-", default_name="-")
            started = time.time()
            asyncio.run(
                submit(plan, Store(make_session_factory(str(tmp / "pair.db"))), redis.url())
            )
            print(f"sweep of {jobs} jobs on {count} worker(s): {time.time() - started:.1f} s wall")
    finally:
        for worker in workers:
            worker.stop()
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
    parser.add_argument("--jobs", type=counting, default=10_000)
    parser.add_argument("--step-s", type=float, default=0.0, help="each no-op token's time")
    parser.add_argument("--alone", type=counting, default=30, help="one-job sweeps for the latency")
    parser.add_argument("--pair", type=int, default=0, help="GPT-2 jobs on one, then two workers")
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
        print(table(HEADINGS, rows))
        for backend in ("", "hf"):
            p50, p99 = alone(tmp, model, args.alone, str(tmp / f"alone{backend}.db"), backend)
            print(
                f"one {backend or 'no-op'} job alone, (enqueue -> stored) - its own time "
                f"({args.alone} runs): p50 {1e3 * p50:.1f} ms, p99 {1e3 * p99:.1f} ms"
            )
        if args.pair:
            pair(tmp, args.pair)
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
