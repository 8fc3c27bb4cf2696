"""`hf-compile`: transformers' GPT-2 with its forward under `torch.compile`.

Compilation happens in the constructor, on a short generation, and is recorded
as `compile_s`: it is never inside the timed region. `dynamic=True` lets one
compiled graph serve every prompt length and cache size, instead of a
recompile per shape during the timed runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from backends.hf import HFBackend


class HFCompileBackend(HFBackend):
    def __init__(
        self, model_dir: Path, options: dict[str, Any], threads: int, cache_dir: Path
    ) -> None:
        super().__init__(model_dir, {"dtype": options.get("dtype", "float32")}, threads, cache_dir)
        mode = options.get("mode", "default")
        self.model.forward = torch.compile(self.model.forward, dynamic=True, mode=mode)
        started = time.perf_counter()
        self.generate([1, 2, 3, 4, 5, 6, 7, 8], 4)  # compiles prefill and decode graphs
        self.load_report.compile_s = time.perf_counter() - started
