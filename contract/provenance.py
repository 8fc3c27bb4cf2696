"""What software a result was measured with: library versions and whistle-stop's own
source. Both sides compute it alike: a worker records it on every result, and `farm
submit` compares the done jobs' records with its own before it skips them as done."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from importlib import metadata
from pathlib import Path

import whistle_stop

LIBRARIES = ("torch", "transformers", "onnxruntime", "onnx", "celery", "whistle-stop")
# the checkout's root (for git), or site-packages when installed from a wheel
PROJECT_ROOT = Path(whistle_stop.__file__).resolve().parent.parent
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
    for name, folder in package_dirs().items():
        # the root package's own modules only: installed, its folder holds the others too
        found = folder.glob("*") if name == "whistle_stop" else folder.rglob("*")
        for path in sorted(p for p in found if p.suffix in SUFFIXES):
            digest.update(f"{name}/{path.relative_to(folder)}".encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def package_dirs() -> dict[str, Path]:
    """Where each of whistle-stop's packages lives, in a checkout (pyproject's package-dir
    mapping) or installed alike: found by the import system, none of them imported."""
    dirs = {"whistle_stop": Path(whistle_stop.__file__).parent}
    for name in whistle_stop.PACKAGES:
        spec = importlib.util.find_spec(f"whistle_stop.{name}")
        dirs[name] = Path(spec.submodule_search_locations[0])
    return dirs
