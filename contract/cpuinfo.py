"""/proc/cpuinfo and its fields, read one way by the worker's provenance (model, ISA
features, cores), the native engine's build (its cache key, the vendor rule) and the
llama.cpp AMX check (the hypervisor flag)."""

from __future__ import annotations

from pathlib import Path


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo; empty where there is none (not Linux)."""
    return read_or_empty("/proc/cpuinfo")


def read_or_empty(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpuinfo_field(cpuinfo: str, name: str) -> str:
    """The value of the first line whose key is `name` ('flags', 'vendor_id', ...)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""
