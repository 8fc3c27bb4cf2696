"""A backend plugin for tests that fails on purpose, to drive failure paths through
real worker processes (the embedded pool and real Celery workers).

Used in sweeps as ``name: fault`` with ``mode:`` (an entry point of this package).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Literal

from whistle_stop.backends.base import Generation, LoadReport
from whistle_stop.backends.options import BackendOptions


class FaultOptions(BackendOptions):
    mode: Literal[
        "ok",
        "raise",
        "crash",
        "sleep",
        "hang",
        "vary",
        "escape",
        "extra_pool",
        "late_stamps",
        "slowing",
    ] = "ok"
    step_s: float = 0.001  # time per generated token
    sleep_s: float = 5.0  # how long modes "sleep" and "hang" block in generate()
    torch_threads: int = 0  # if set, change torch's thread count behind the runner's back
    declare_extra: int = 0  # threads beyond the job's that the backend says it runs


class FaultBackend:
    """Generates deterministic tokens, or on request: raises, kills its own process,
    sleeps (interruptible by a soft time limit), hangs (deaf to it, like a stuck C call),
    varies its tokens from call to call, lets a working thread escape its CPU set, starts
    a pool of working threads nobody asked for, stamps its tokens at the wrong times, or
    stamps them honestly on a machine that gets slower with every call ("slowing")."""

    Options = FaultOptions

    def __init__(self, model_dir: Path, options: FaultOptions, threads: int, cache_dir: Path):
        self.options = options
        self.load_report = LoadReport(extra_threads=options.declare_extra)
        if self.options.mode == "raise":
            raise RuntimeError("fault backend asked to raise")
        if self.options.torch_threads:
            import torch

            torch.set_num_threads(self.options.torch_threads)

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        if self.options.mode == "crash":  # last words on fd 2, as a C library would leave
            os.write(2, b"fault backend: illegal instruction in a made-up kernel\n")
            os.kill(os.getpid(), signal.SIGKILL)
        if self.options.mode == "sleep":
            time.sleep(self.options.sleep_s)
        if self.options.mode == "hang":
            deadline = time.monotonic() + self.options.sleep_s
            while time.monotonic() < deadline:
                try:
                    time.sleep(0.1)
                except BaseException:  # noqa: S110 - swallow the soft time limit on purpose
                    pass
        stop = threading.Event()
        helpers = []
        if self.options.mode in ("escape", "extra_pool"):
            count = 1 if self.options.mode == "escape" else 3
            escape = self.options.mode == "escape"
            helpers = [
                threading.Thread(target=_work, args=(stop, escape), name=f"rogue-{i}")
                for i in range(count)
            ]
            for helper in helpers:
                helper.start()
        self.calls = getattr(self, "calls", 0) + 1
        step_s = self.options.step_s
        if self.options.mode == "slowing":  # each call's steps 1.5x the last call's
            step_s *= 1.5**self.calls
        times = []
        for _ in range(new_tokens):
            time.sleep(step_s)
            times.append(time.perf_counter())
        stop.set()
        for helper in helpers:
            helper.join()
        if self.options.mode == "late_stamps":  # every stamp taken after the fact, 10 us apart
            end = time.perf_counter()
            times = [end - 1e-5 * (new_tokens - 1 - i) for i in range(new_tokens)]
        if self.options.mode == "vary":  # greedy tokens that change from call to call
            return Generation(tokens=[1, *[self.calls] * (new_tokens - 1)], token_times=times)
        return Generation(tokens=[1] * new_tokens, token_times=times)


def _work(stop: threading.Event, escape: bool) -> None:
    """Burn CPU (hashing releases the GIL) until told to stop; with `escape`, first move
    this thread onto the CPUs its process was not given."""
    import ctypes

    # its name in /proc (PR_SET_NAME), so the farm's findings can name it
    ctypes.CDLL(None).prctl(15, threading.current_thread().name.encode(), 0, 0, 0)
    if escape:
        outside = set(range(os.cpu_count() or 1)) - os.sched_getaffinity(0)
        if outside:
            os.sched_setaffinity(0, outside)  # 0: this thread only
    block = b"x" * (1 << 20)
    while not stop.is_set():
        hashlib.sha256(block).digest()
