"""build_once: one builder at a time, nothing half-written, failures leave nothing."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from whistle_stop.artifacts import build_once


def slow_build(out: Path) -> None:
    (out / "part").write_text("x")
    time.sleep(0.5)
    (out / "done").write_text("y")


def build_in_child(final: str, queue) -> None:
    queue.put(build_once(Path(final), slow_build))


def test_two_processes_build_once(tmp_path):
    final = tmp_path / "artifact"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=build_in_child, args=(str(final), queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    assert sorted([queue.get(timeout=5), queue.get(timeout=5)]) == [False, True]
    assert (final / "done").read_text() == "y"


def test_a_failed_build_leaves_nothing(tmp_path):
    final = tmp_path / "artifact"

    def broken(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("exporter exploded")

    with pytest.raises(RuntimeError, match="exporter exploded"):
        build_once(final, broken)
    assert not final.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    assert build_once(final, slow_build) is True  # and a later build succeeds
