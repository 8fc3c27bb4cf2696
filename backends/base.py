"""The one small protocol every backend implements.

A backend is built from a local model directory (config.json + safetensors),
its validated options and a thread count; it then generates greedily and
reports when each token became available. It knows nothing of Celery, the
database or the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass
class Generation:
    """One greedy generation.

    `token_times[i]` is `time.perf_counter()` when token i was chosen, taken
    inside the generation loop (not by a second run), so prefill and every
    decode step come from the same timed call.
    """

    tokens: list[int]
    token_times: list[float]


@dataclass
class LoadReport:
    """What loading cost and what it produced, recorded on the result."""

    artifact_built: bool | None = None  # None: this backend has no artifact
    artifact_build_s: float | None = None
    artifact_bytes: int | None = None
    compile_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """Load or export once, then generate greedily as many times as asked."""

    load_report: LoadReport

    def __init__(
        self, model_dir: Path, options: dict[str, Any], threads: int, cache_dir: Path
    ) -> None: ...

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        """Exactly `new_tokens` greedy tokens after `prompt`; no early stop on EOS."""
        ...
