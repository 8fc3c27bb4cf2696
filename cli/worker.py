"""`farm worker` and `farm bandwidth`: serving jobs on this machine, and what it can stream."""

from __future__ import annotations

from typing import Annotated

import typer

from whistle_stop.cli.common import DEFAULT_CACHE, BrokerOption, CacheOption, QueueOption, app, fail
from whistle_stop.contract.cpus import CpuSetError, available_cpus, format_cpu_list, parse_cpu_list


@app.command()
def worker(
    *,
    cpus: Annotated[str, typer.Option(help="CPU set to pin this worker to, e.g. 0-3 or 0,2.")],
    broker: BrokerOption = None,
    threads: Annotated[
        int | None, typer.Option(help="OpenMP threads (default: one per CPU of the set).")
    ] = None,
    queue: QueueOption = "farm",
    name: Annotated[
        str | None, typer.Option(help="Worker name (default: farm-cpus<LIST>@<host>).")
    ] = None,
    cache_dir: CacheOption = DEFAULT_CACHE,
    jobs_per_child: Annotated[
        int,
        typer.Option(
            help="Jobs one child process runs before a fresh one (0: no limit). "
            "Keep 1 for measurements; more only for no-op load tests."
        ),
    ] = 1,
    preload: Annotated[
        bool, typer.Option(help="Import torch in each child before its job (outside its time).")
    ] = True,
) -> None:
    """Serve jobs from the broker, one at a time, pinned to a CPU set.

    Start one per CPU set on each machine, all against the same broker. Jobs
    run in a fresh child process each; limits come from FARM_JOB_TIME_LIMIT
    (seconds, soft), FARM_JOB_GRACE (extra seconds before the kill) and
    FARM_MAX_ATTEMPTS (crashes before a job is failed).
    """
    from whistle_stop.worker.serve import WorkerStartError, serve

    if not broker:
        raise fail("farm worker needs a broker: --broker redis://HOST:6379/0 or FARM_BROKER_URL")
    try:
        serve(
            broker_url=broker,
            cpus=cpus,
            threads=threads,
            queue=queue,
            name=name,
            cache_dir=cache_dir,
            jobs_per_child=jobs_per_child,
            preload=preload,
        )
    except (CpuSetError, WorkerStartError) as error:
        raise fail(str(error)) from None


@app.command()
def bandwidth(
    *,
    cpus: Annotated[
        str | None, typer.Option(help="CPU set to measure, e.g. 0-3 (default: all of them).")
    ] = None,
    remeasure: Annotated[
        bool, typer.Option(help="Measure again instead of using the cache.")
    ] = False,
    cache_dir: CacheOption = DEFAULT_CACHE,
) -> None:
    """Memory read bandwidth of a CPU set: the roofline every result is compared with.

    Workers measure it once per host and CPU set and cache it; this shows (or renews) it.
    The measurement runs in a child process pinned to the set.
    """
    from whistle_stop.worker.bandwidth import measure_in_child

    try:
        cpu_set = parse_cpu_list(cpus) if cpus else available_cpus()
        figures = measure_in_child(cpu_set, cache_dir, remeasure=remeasure)
    except (CpuSetError, RuntimeError) as error:
        raise fail(str(error), 2 if isinstance(error, CpuSetError) else 3) from None
    typer.echo(
        f"CPUs {format_cpu_list(cpu_set)} on {figures['host']}: "
        f"read {figures['read_bytes_per_s'] / 1e9:.1f} GB/s, "
        f"copy {figures['copy_bytes_per_s'] / 1e9:.1f} GB/s ({figures['threads']} threads)"
    )
    # the cache the roofline's "10x the cache" is judged against: the LLC, or where reads
    # reach DRAM speed sooner (a VM's share of a socket's cache), that size
    llc, dram_from = figures.get("llc_bytes"), figures.get("dram_from_bytes")
    if dram_from:
        reported = f" (LLC {llc / 2**20:.0f} MiB)" if llc else ""
        typer.echo(f"reads stream at DRAM speed from {dram_from / 2**20:.0f} MiB{reported}")
    elif llc:
        typer.echo(
            f"LLC {llc / 2**20:.0f} MiB (no read up to {2 * llc / 2**20:.0f} MiB settled at "
            "DRAM speed: the cache is the LLC)"
        )
