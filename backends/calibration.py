"""A backend of known cost, to calibrate the farm's verdicts (farm bench calibration).

Each step reads a buffer from memory, as a decode step streams its weights: `megabytes`
per token, times `1 + slowdown`. A twin with `slowdown: 0.05` is a real 5% slower path
(5% more bytes read, not a sleep: it suffers the same bandwidth swings as the others),
so A/A comparisons (twin against control) measure the false-alarm rate and A/B ones the
detection rate. No model runs: the token ids are the step's index.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from whistle_stop.backends.base import Generation, LoadReport
from whistle_stop.backends.options import CalibrationOptions


class CalibrationBackend:
    def __init__(
        self, model_dir: Path, options: CalibrationOptions, threads: int, cache_dir: Path
    ) -> None:
        size = int(options.megabytes * 2**20) // 8
        # float64 ones, touched once: the pages exist before the timed region. Every twin
        # has the same buffer and reads its first `extra` values again: a twin given its
        # own, larger buffer ran 24% slower for 5% more bytes on a Zen 5 VM (64 MiB
        # against 67 MiB: the buffer's size, not its bytes, set the cost)
        self.buffer = np.ones(size, dtype=np.float64)
        self.extra = int(size * (1 + options.slowdown)) - size  # evicted by the full pass
        bytes_per_step = (size + self.extra) * 8
        self.load_report = LoadReport(extra={"bytes_per_step": bytes_per_step})

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        tokens, times = [], []
        for index in range(new_tokens):
            # the step's work: stream the whole buffer once, then its start again
            total = self.buffer.sum() + self.buffer[: self.extra].sum()
            tokens.append(index if total else 0)
            times.append(time.perf_counter())
        return Generation(tokens=tokens, token_times=times)
