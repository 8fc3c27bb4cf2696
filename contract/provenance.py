"""What software a result was measured with: library versions and whistle-stop's own
source. Both sides compute it alike: a worker records it on every result, and `farm
submit` compares the done jobs' records with its own before it skips them as done."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "onnxruntime", "onnx", "celery", "whistle-stop")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("backends", "cli", "contract", "db", "executors", "kernels", "orchestrator", "worker")
SUFFIXES = (".py", ".cc")  # the native engine's C++ is source the results depend on too


def library_versions() -> dict[str, str | None]:
    return {name: _version(name) for name in LIBRARIES}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def source_hash() -> str:
    """A hash of whistle-stop's own source (its Python and the engine's C++) as it is on
    disk: two workers with the same hash ran the same code, committed or not."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        paths = (p for p in (PROJECT_ROOT / package).rglob("*") if p.suffix in SUFFIXES)
        for path in sorted(paths):
            digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
