"""`farm worker`: pin this process to a CPU set, claim it, and serve Celery jobs on it.

The steps, in order: check the CPU set; check the broker; claim the CPUs on this
host (refusing an overlap with a live worker); pin and size the thread pools
before anything imports torch; measure the CPU set's memory bandwidth once (in a
child, so this process never imports torch); run the Celery worker until it is
stopped; release the CPUs.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from kombu.utils.url import maybe_sanitize_url

from whistle_stop.contract.cpus import format_cpu_list, parse_cpu_list
from whistle_stop.contract.queue import broker_problem
from whistle_stop.worker.pinning import pin_process


class WorkerStartError(RuntimeError):
    """The worker cannot start; the message says why and what to do."""


def serve(
    *,
    broker_url: str,
    cpus: str,
    threads: int | None,
    queue: str,
    name: str | None,
    cache_dir: Path,
    jobs_per_child: int = 1,
    preload: bool = True,
) -> None:
    import redis

    from whistle_stop.contract.queue import FarmSettings
    from whistle_stop.worker.celery_app import CONTEXT, make_app
    from whistle_stop.worker.channel import WorkerChannel

    cpu_set = parse_cpu_list(cpus)  # CpuSetError names the valid CPUs
    node = _node_name(name, cpu_set)
    settings = FarmSettings()
    channel = WorkerChannel(broker_url, settings.lease_s)
    try:
        conflicts = channel.claim_cpus(cpu_set, node)
    except redis.RedisError as error:
        raise WorkerStartError(broker_problem(maybe_sanitize_url(broker_url), error)) from None
    if conflicts:
        raise WorkerStartError(
            "; ".join(conflicts) + f". Give this worker other CPUs (this host has "
            f"{format_cpu_list(sorted(os.sched_getaffinity(0)))}), or stop the other worker."
        )

    pin_process(cpu_set)
    os.environ["OMP_NUM_THREADS"] = str(threads or len(cpu_set))
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    CONTEXT.name, CONTEXT.cache_dir, CONTEXT.settings = node, cache_dir, settings
    CONTEXT.preload, CONTEXT.cpus = preload, cpu_set
    _calibrate_bandwidth(cpu_set, cache_dir)

    stop = threading.Event()
    keeper = threading.Thread(target=_heartbeat, args=(channel, cpu_set, node, stop), daemon=True)
    keeper.start()
    try:
        app = make_app(broker_url)
        # 1 (the default): a fresh process per job, its pools and peak memory its own;
        # more only for backends that do not measure anything (the scale benchmark)
        app.conf.worker_max_tasks_per_child = jobs_per_child or None
        app.worker_main(
            [
                "worker",
                "--pool=prefork",
                "--concurrency=1",
                f"--queues={queue}",
                f"--hostname={node}",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
            ]
        )
    finally:
        stop.set()
        try:
            channel.release_cpus(cpu_set, node)
        except redis.RedisError:
            pass  # the claims lapse on their own


def _calibrate_bandwidth(cpus: list[int], cache_dir: Path) -> None:
    """Measure the bandwidth the roofline needs now, not inside the first job.

    It takes seconds once per host and CPU set (then it is cached); inside a job it
    would eat into that job's time limit and make the first job look slow.
    """
    from whistle_stop.worker.bandwidth import measure_in_child

    print(
        f"memory bandwidth of CPUs {format_cpu_list(cpus)}: measuring if not cached ...", flush=True
    )
    try:
        measure_in_child(cpus, cache_dir)
    except RuntimeError as error:  # not fatal: the first job measures it instead
        print(f"memory bandwidth: {error}; the first job will retry it")


def _node_name(name: str | None, cpus: list[int]) -> str:
    base = name or f"farm-cpus{format_cpu_list(cpus).replace(',', '_')}"
    return base if "@" in base else f"{base}@{socket.gethostname()}"


def _heartbeat(channel, cpus: list[int], node: str, stop: threading.Event) -> None:
    """This worker's pulse, in its main process: its CPU claims and the claim of every job
    it holds (received, starting or running: Celery's own list of them), renewed every
    third of a lease. It stops only with the process: a worker that dies or freezes stops
    renewing, and each of its jobs is handed back once its claim lapses (FARM_LEASE_S)."""
    from celery.worker import state

    while not stop.wait(min(10, channel.lease_s / 3)):
        try:
            channel.renew_cpus(cpus, node)
            channel.renew_claims(list(state.requests), node)
        except Exception:  # the broker may be restarting; the next renewal tries again
            pass
