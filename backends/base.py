"""The one small protocol every backend implements.

A backend is built from a local model directory (config.json + safetensors),
its validated options and a thread count; it then generates greedily and
reports when each token became available. It knows nothing of Celery, the
database or the sweep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from whistle_stop.backends.options import BackendOptions


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
    # bytes per weight a decode step reads: projections, and the LM head (for the roofline)
    matmul_bytes: float = 4.0
    lm_head_bytes: float = 4.0
    # bytes a cached key or value element takes (its scales included); None: not said, so
    # the roofline counting the KV cache is not computed for this backend
    kv_bytes: float | None = None
    # working threads the backend runs by design beyond the job's `threads` (a second
    # session's pool, used in turn with the first): the pinning check allows them, and
    # still reports any thread past them as a pool the job did not ask for
    extra_threads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0}


class Backend(Protocol):
    """Load or export once, then generate greedily as many times as asked.

    `options` is the backend's own validated options model (backends/options.py), with
    every default already applied. The registry checks a class has `generate` before
    anything calls it (backends/registry.py).
    """

    load_report: LoadReport

    def __init__(
        self, model_dir: Path, options: BackendOptions, threads: int, cache_dir: Path
    ) -> None: ...

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        """Exactly `new_tokens` greedy tokens after `prompt`; no early stop on EOS."""
        ...


@runtime_checkable
class SupportsTeacherForcing(Protocol):
    """Can return its next-token logits along a given sequence (fidelity, perplexity)."""

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]) -> Any: ...


@runtime_checkable
class SupportsReserve(Protocol):
    """Has a fixed-capacity cache, sized once before a sequence of known length."""

    def reserve(self, total_tokens: int) -> None: ...


class StepwiseBackend:
    """Greedy generation and teacher forcing, written once for every backend that can
    prefill a prompt and then feed one token at a time.

    Subclasses implement `prefill(prompt)` and `step(token)`, each returning the
    logits for the next token (a 1-D torch tensor or numpy array over the vocabulary).
    Argmax is taken on those last-position logits only.
    """

    load_report: LoadReport

    def prefill(self, prompt: list[int]) -> Any:
        raise NotImplementedError

    def step(self, token: int) -> Any:
        raise NotImplementedError

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        tokens: list[int] = []
        times: list[float] = []
        if isinstance(self, SupportsReserve):  # a fixed-capacity cache, sized once
            self.reserve(len(prompt) + new_tokens - 1)  # the last token is never fed back
        logits = self.prefill(prompt)
        for index in range(new_tokens):
            token = int(logits.argmax())
            tokens.append(token)
            times.append(time.perf_counter())
            if index + 1 < new_tokens:
                logits = self.step(token)
        return Generation(tokens=tokens, token_times=times)

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]):
        """Next-token logits after `prompt`, then after each token of `continuation`
        fed in turn (whatever this backend would have chosen): (len(continuation), vocab)."""
        import numpy as np

        if isinstance(self, SupportsReserve):
            self.reserve(len(prompt) + len(continuation) - 1)
        rows = [to_numpy(self.prefill(prompt))]
        for token in continuation[:-1]:
            rows.append(to_numpy(self.step(token)))
        return np.stack(rows)


def to_numpy(logits: Any):
    """1-D float32 numpy logits from a torch tensor (any dtype) or a numpy array."""
    import numpy as np

    if hasattr(logits, "detach"):
        logits = logits.detach().float().numpy()
    return np.asarray(logits, dtype=np.float32).reshape(-1)
