"""Provenance: where and how a job ran, recorded on every result."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

# Instruction-set features that decide which inference kernels a CPU can run.
ISA_FEATURES = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                "amx_int8")  # fmt: skip
LIBRARIES = ("torch", "transformers", "onnxruntime", "onnx", "celery", "whistle-stop")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def host_environment() -> dict:
    """Facts about this host and software that do not change while a worker lives."""
    cpuinfo = _read("/proc/cpuinfo")
    flags = set(_field(cpuinfo, "flags").split())
    environment = {
        "hostname": socket.gethostname(),
        "cpu_model": _field(cpuinfo, "model name") or platform.processor(),
        "cpu_features": [f for f in ISA_FEATURES if f in flags],
        "logical_cores": os.cpu_count() or 0,
        "physical_cores": _physical_cores(cpuinfo),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "os": platform.platform(),
        "kernel": platform.release(),
        "container": _in_container(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in LIBRARIES},
        "git_revision": _git_revision(),
    }
    environment["fingerprint"] = hashlib.sha256(
        json.dumps(environment, sort_keys=True).encode()
    ).hexdigest()[:16]
    return environment


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _field(cpuinfo: str, name: str) -> str:
    for line in cpuinfo.splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return ""


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
    cgroup = _read("/proc/1/cgroup")
    return any(word in cgroup for word in ("docker", "kubepods", "containerd", "lxc"))


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
