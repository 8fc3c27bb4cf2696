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
        # allocates the same buffer, room for a slowdown up to 1, and streams a prefix of
        # it once a step: the bytes read are the only difference. A twin with its own
        # larger buffer ran 24% slower for 5% more bytes on a Zen 5 VM (the buffer's size,
        # not its bytes, set the cost), and one re-reading its buffer's start after a
        # full pass found part of it still in the L3 (5% more bytes cost 2.8%)
        length = int(size * (1 + options.slowdown))
        self.buffer = np.ones(max(2 * size, length), dtype=np.float64)[:length]
        self.load_report = LoadReport(extra={"bytes_per_step": length * 8})

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        tokens, times = [], []
        for index in range(new_tokens):
            # the step's work: stream the prefix once, its start long evicted by its end
            total = self.buffer.sum()
            tokens.append(index if total else 0)
            times.append(time.perf_counter())
        return Generation(tokens=tokens, token_times=times)
