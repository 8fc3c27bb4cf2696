"""What the queue costs: per-job overhead of the Celery farm, and one worker against two.

Starts its own redis-server on a free port and its own `farm worker` processes, then:
1. submits N one-job sweeps one after another and prints the median of
   (enqueue -> result stored) minus the job's own run time (worker start of the job to
   its end): the farm's per-job overhead, including the fresh child process per job;
2. runs one sweep of M jobs on one worker pinned to CPU 0, then on two workers pinned
   to CPUs 0 and 1, and prints both wall times.

    farm bench farm-overhead --jobs 50 --sweep-jobs 8
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from whistle_stop.bench.harness import FarmWorker, RedisServer, farm_env, save_tiny_gpt2
from whistle_stop.db.models import Job
from whistle_stop.db.session import make_session_factory
from whistle_stop.executors.celery import CeleryExecutor
from whistle_stop.orchestrator.dispatch import run_sweep
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep

quiet = Console(quiet=True)


async def submit_farm(plan, db: str, broker: str) -> None:
    """What `farm submit --broker` does: the Celery executor under the dispatch loop."""
    executor = await CeleryExecutor.open(broker, "farm")
    try:
        await run_sweep(plan, Store(make_session_factory(db)), executor, quiet)
    finally:
        await executor.aclose()


def sweep_text(
    model: Path | str, name: str, seed: int, contexts: list[int], generation: int
) -> str:
    return f"""
name: {name}
model: {model}
backends: [hf]
context_sizes: {contexts}
generation_lengths: [{generation}]
threads: [1]
warmups: 0
repeats: 1
fidelity_tokens: 0
seed: {seed}
"""


async def one_job_overhead(model: Path, broker: str, db: str, seed: int) -> float:
    plan = parse_sweep(
        sweep_text(model, f"overhead-{seed}", seed, [8], 4), origin="-", default_name="-"
    )
    started = time.time()
    await submit_farm(plan, db, broker)
    stored = time.time()
    with make_session_factory(db)() as session:
        job = session.query(Job).filter(Job.key == plan.jobs[0].key).one()
        if job.result is None:
            raise RuntimeError(f"the benchmark job failed: {job.error}")
        samples = job.result.samples
        run_s = job.result.load_s + job.result.materialize_s + sum(samples["e2e_s"])
    return stored - started - run_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--sweep-jobs", type=int, default=8)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = save_tiny_gpt2(tmp / "tiny", n_embd=64, n_layer=2)
        redis = RedisServer(tmp / "redis")
        redis.start()
        env = farm_env()
        workers = []
        try:
            workers.append(
                FarmWorker(redis.url(), "0", "w0", tmp / "w0.log", tmp / "cache", env).start()
            )
            overheads = [
                asyncio.run(one_job_overhead(model, redis.url(), str(tmp / "o.db"), seed))
                for seed in range(args.jobs)
            ]
            if overheads:
                ordered = sorted(overheads)
                print(
                    f"per-job overhead over {args.jobs} one-job sweeps: median "
                    f"{statistics.median(ordered):.2f} s, p10 {ordered[len(ordered) // 10]:.2f} s, "
                    f"max {ordered[-1]:.2f} s"
                )

            # GPT-2 small, one thread per job: long enough that workers, not the queue, dominate
            contexts = [32 + 8 * i for i in range(args.sweep_jobs)]
            for count in (1, 2):
                if count == 2:
                    workers.append(
                        FarmWorker(
                            redis.url(), "1", "w1", tmp / "w1.log", tmp / "cache", env
                        ).start()
                    )
                plan = parse_sweep(
                    sweep_text("random:gpt2", f"scale-{count}", 0, contexts, 64),
                    origin="-",
                    default_name="-",
                )
                started = time.time()
                asyncio.run(submit_farm(plan, str(tmp / "s.db"), redis.url()))
                wall = time.time() - started
                print(f"sweep of {len(plan.jobs)} jobs on {count} worker(s): {wall:.1f} s wall")
        finally:
            for worker in workers:
                worker.stop()
            redis.stop()
