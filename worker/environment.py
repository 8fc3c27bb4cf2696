"""Provenance: where and how a job ran, recorded on every result."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

from whistle_stop.contract.cpuinfo import cpuinfo_field, read_cpuinfo, read_or_empty
from whistle_stop.contract.provenance import PROJECT_ROOT, library_versions, source_hash

# Instruction-set features that decide which inference kernels a CPU can run.
ISA_FEATURES = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@functools.cache
def host_environment() -> dict:
    """Facts about this host and software that do not change while a worker lives."""
    cpuinfo = read_cpuinfo()
    flags = set(cpuinfo_field(cpuinfo, "flags").split())
    environment = {
        "hostname": socket.gethostname(),
        "cpu_model": cpuinfo_field(cpuinfo, "model name") or platform.processor(),
        "cpu_features": [f for f in ISA_FEATURES if f in flags],
        "logical_cores": os.cpu_count() or 0,
        "physical_cores": _physical_cores(cpuinfo),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "os": platform.platform(),
        "kernel": platform.release(),
        "container": _in_container(),
        "python": platform.python_version(),
        "versions": library_versions(),
        "git_revision": _git_revision(),
        "git_dirty": _git_dirty(),
        "source_hash": source_hash(),
    }
    environment["fingerprint"] = hashlib.sha256(
        json.dumps(environment, sort_keys=True).encode()
    ).hexdigest()[:16]
    return environment


def _physical_cores(cpuinfo: str) -> int:
    cores = set()
    physical_id = core_id = ""
    for line in cpuinfo.splitlines() + [""]:
        key, _, value = (part.strip() for part in line.partition(":"))
        if key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not line.strip() and core_id:
            cores.add((physical_id, core_id))
    return len(cores) or (os.cpu_count() or 0)


def _in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    cgroup = read_or_empty("/proc/1/cgroup")
    return any(word in cgroup for word in ("docker", "kubepods", "containerd", "lxc"))


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def _git_revision() -> str | None:
    found = _git("rev-parse", "--short=12", "HEAD")
    return found.strip() if found is not None else None


def _git_dirty() -> bool | None:
    """Uncommitted changes to tracked files (None: not a git checkout)."""
    found = _git("status", "--porcelain", "--untracked-files=no")
    return bool(found.strip()) if found is not None else None
