"""Build-once directories on a worker's disk: a file lock, then write-and-rename.

Two workers on one machine never build the same artifact at the same time,
and a half-written artifact is never used: it is built under a temporary
name and only renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
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
