"""Pin this process to a CPU set, and check that the pinning held.

`pin_process()` must run before torch (or onnxruntime) is imported: OpenMP
sizes its thread pool from the affinity mask and OMP_NUM_THREADS at first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from whistle_stop.contract.cpus import parse_cpu_list


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
        if not set(parse_cpu_list(thread_list, check=False)) <= allowed:
            escaped.append(f"{status.parent.name}:{thread_list}")
    return escaped
