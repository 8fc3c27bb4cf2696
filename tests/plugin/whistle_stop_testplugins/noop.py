"""A backend that does no inference: it waits `step_s` per token and reports plausible
timestamps. It imports no torch, so the farm's own costs (queue, workers, result
stream, store) can be measured without the model's (farm bench farm-scale).

Used in sweeps as ``name: noop`` (an entry point of this package).
"""

from __future__ import annotations

import time
from pathlib import Path

from whistle_stop.backends.base import Generation, LoadReport
from whistle_stop.backends.options import BackendOptions


class NoopOptions(BackendOptions):
    step_s: float = 0.0  # time per generated token; 0: as fast as the farm can go


class NoopBackend:
    Options = NoopOptions

    def __init__(self, model_dir: Path, options: NoopOptions, threads: int, cache_dir: Path):
        self.options = options
        self.load_report = LoadReport()

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        times = []
        for _ in range(new_tokens):
            if self.options.step_s:
                time.sleep(self.options.step_s)
            times.append(time.perf_counter())
        return Generation(tokens=[1] * new_tokens, token_times=times)
