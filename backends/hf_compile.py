"""`hf-compile`: transformers' GPT-2 with its forward under `torch.compile`.

Compilation happens in the constructor, on a short generation, and is recorded
as `compile_s`: it is never inside the timed region. `dynamic=True` lets one
compiled graph serve every prompt length and cache size, instead of a
recompile per shape during the timed runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from whistle_stop.backends.hf import HFBackend
from whistle_stop.backends.options import HFCompileOptions


class HFCompileBackend(HFBackend):
    def __init__(
        self, model_dir: Path, options: HFCompileOptions, threads: int, cache_dir: Path
    ) -> None:
        super().__init__(model_dir, options, threads, cache_dir)
        self.model.forward = torch.compile(self.model.forward, dynamic=True, mode=options.mode)
        started = time.perf_counter()
        self.generate([1, 2, 3, 4, 5, 6, 7, 8], 4)  # compiles prefill and decode graphs
        self.load_report.compile_s = time.perf_counter() - started
