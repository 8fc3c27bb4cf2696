"""Build-once directories on a worker's disk: a file lock, then write-and-rename.

Two workers on one machine never build the same artifact at the same time,
and a half-written artifact is never used: it is built under a temporary
name and only renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock


def build_once(final: Path, build: Callable[[Path], None]) -> bool:
    """Make sure directory `final` exists, calling `build(tmp_dir)` if it does not.

    Returns True if this call built it, False if it was already there.
    A build that raises leaves nothing behind.
    """
    if final.is_dir():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():  # another worker built it while we waited for the lock
            return False
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@dataclass
class Cached:
    path: Path  # the artifact's directory
    built: bool  # built by this call (False: reused)
    build_s: float | None  # how long building took (None: reused)


def cached_artifact(cache_dir: Path, name: str, parts: list, build: Callable[[Path], None]):
    """The artifact `name`-KEY under cache_dir/artifacts, KEY a hash of `parts` (the
    inputs that shape it: weights digest, tool versions, options, builder source), built
    once by `build(tmp_dir)` and timed."""
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    final = cache_dir / "artifacts" / f"{name}-{key}"
    started = time.perf_counter()
    built = build_once(final, build)
    return Cached(final, built, time.perf_counter() - started if built else None)


def source_digest(*modules: str) -> str:
    """A hash of these modules' source files (`backends.onnx_export`, ...): part of an
    artifact's key, so editing the code that builds an artifact builds it again instead of
    reusing one made by older code."""
    import importlib.util

    digest = hashlib.sha256()
    for module in modules:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None, module
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:16]


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` whole, or what it held before: written beside it, then renamed
    over it (a rename within a directory is atomic), so an interrupted write never leaves
    half a file where a good one was."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
