"""CPU-list syntax ('0-3,6'), shared by the CLI, the orchestrator and the workers."""

from __future__ import annotations

import os


class CpuSetError(ValueError):
    """A CPU list that is malformed, empty, or names CPUs this machine lacks."""


def available_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def parse_cpu_list(text: str, *, check: bool = True) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6]. Raises `CpuSetError`, naming the valid CPUs.

    With `check=False` the CPUs are not checked against this machine's (for lists
    read from the kernel, or written for another host).
    """
    cpus: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if first > last or first < 0:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise CpuSetError(f"malformed CPU list {text!r}; write it like 0-3 or 0,2,4") from None
    if not check:
        return sorted(cpus)
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
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and runs[-1][1] == cpu - 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
