"""CPU sets: parse them, pin this process to one, and check that the pinning held.

`pin_process()` must run before torch (or onnxruntime) is imported: OpenMP
sizes its thread pool from the affinity mask and OMP_NUM_THREADS at first use.
"""

from __future__ import annotations

import os
from pathlib import Path


class CpuSetError(ValueError):
    """A CPU list that is malformed, empty, or names CPUs this machine lacks."""


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]. Raises `CpuSetError` naming the valid CPUs."""
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if first > last:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise CpuSetError(f"malformed CPU list {text!r}; write it like 0-3 or 0,2,4") from None
    valid = available_cpus()
    if not cpus:
        raise CpuSetError(f"empty CPU list; valid CPUs here: {format_cpu_list(valid)}")
    missing = sorted(cpus - set(valid))
    if missing:
        raise CpuSetError(
            f"CPUs {format_cpu_list(missing)} are not available here; "
            f"valid CPUs: {format_cpu_list(valid)}"
        )
    return sorted(cpus)


def format_cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6'."""
    ranges: list[str] = []
    for cpu in sorted(cpus):
        if ranges and "-" in ranges[-1] and int(ranges[-1].split("-")[1]) == cpu - 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{cpu}"
        elif ranges and ranges[-1].isdigit() and int(ranges[-1]) == cpu - 1:
            ranges[-1] = f"{ranges[-1]}-{cpu}"
        else:
            ranges.append(str(cpu))
    return ",".join(ranges)


def pin_process(cpus: list[int]) -> None:
    """Pin this process (and the threads it will start) to `cpus`; size thread pools.

    Environment variables are set for libraries that read them at import time.
    """
    os.sched_setaffinity(0, cpus)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(len(cpus))


def threads_outside(cpus: list[int]) -> list[str]:
    """Threads of this process allowed to run outside `cpus` ("tid:list"); empty if pinned."""
    allowed = set(cpus)
    escaped = []
    for status in Path("/proc/self/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread ended while we looked
            continue
        line = next(line for line in text.splitlines() if line.startswith("Cpus_allowed_list"))
        thread_list = line.split(":", 1)[1].strip()
        if not set(_plain_parse(thread_list)) <= allowed:
            escaped.append(f"{status.parent.name}:{thread_list}")
    return escaped


def _plain_parse(text: str) -> list[int]:
    cpus: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus
