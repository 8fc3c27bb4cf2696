"""A backend plugin for tests that fails on purpose, to drive failure paths through
real worker processes (the embedded pool and real Celery workers).

Used in sweeps as ``name: tests.fault_backends:FaultBackend`` with ``mode:``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Literal

from backends.base import Generation, LoadReport
from backends.options import BackendOptions


class FaultOptions(BackendOptions):
    mode: Literal["ok", "raise", "crash", "sleep"] = "ok"
    step_s: float = 0.001  # time per generated token
    sleep_s: float = 5.0  # how long mode "sleep" blocks in generate()


class FaultBackend:
    """Generates deterministic tokens, or raises / kills its process / hangs on request."""

    Options = FaultOptions

    def __init__(self, model_dir: Path, options: dict[str, Any], threads: int, cache_dir: Path):
        self.options = FaultOptions(**options)
        self.load_report = LoadReport()
        if self.options.mode == "raise":
            raise RuntimeError("fault backend asked to raise")

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        if self.options.mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.options.mode == "sleep":
            time.sleep(self.options.sleep_s)
        times = []
        for _ in range(new_tokens):
            time.sleep(self.options.step_s)
            times.append(time.perf_counter())
        return Generation(tokens=[1] * new_tokens, token_times=times)
