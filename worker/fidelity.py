"""How far a backend's outputs are from transformers float32 on the same prompt.

With random weights the logits are nearly flat, so free-running greedy output
diverges at the first near-tie; the teacher-forced figures (every backend fed the
reference's own greedy sequence) are the ones to lead with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from backends.artifacts import build_once


def reference(
    model_dir: Path, digest: str, prompt: list[int], generation: int, cache_dir: Path
) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and teacher-forced logits of `hf` float32, computed once and cached.

    Returns (tokens of length `generation`, logits (generation, vocab) float32).
    """
    key = hashlib.sha256(json.dumps([digest, prompt, generation]).encode()).hexdigest()[:20]
    final = cache_dir / "references" / key

    def build(out: Path) -> None:
        from backends.hf import HFBackend
        from backends.options import HFOptions

        hf = HFBackend(model_dir, HFOptions(dtype="float32"), 0, cache_dir)
        tokens = hf.generate(prompt, generation).tokens
        logits = hf.teacher_forced_logits(prompt, tokens)
        np.savez(out / "reference.npz", tokens=np.array(tokens), logits=logits)

    build_once(final, build)
    stored = np.load(final / "reference.npz")
    return stored["tokens"].tolist(), stored["logits"]


def compare(
    ref_tokens: list[int], ref_logits: np.ndarray, logits: np.ndarray, tokens: list[int]
) -> dict[str, float | int]:
    """Teacher-forced agreement, KL and logit error; and where free-running output diverged."""
    positions = min(len(ref_logits), len(logits))
    ref_logits, logits = (
        ref_logits[:positions].astype(np.float64),
        logits[:positions].astype(np.float64),
    )
    ref_logp = log_softmax(ref_logits)
    logp = log_softmax(logits)
    kl = (np.exp(ref_logp) * (ref_logp - logp)).sum(axis=1)
    divergence = next(
        (i for i, (a, b) in enumerate(zip(ref_tokens, tokens, strict=False)) if a != b),
        min(len(ref_tokens), len(tokens)),
    )
    return {
        "top1_agreement": float((ref_logits.argmax(1) == logits.argmax(1)).mean()),
        "mean_kl": float(kl.mean()),
        "max_logit_diff": float(np.abs(ref_logits - logits).max()),
        "first_divergence": int(divergence),
        "fidelity_positions": int(positions),
    }


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (positions, vocab) logits, stable for large values."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def reference_perplexity(
    model_dir: Path, digest: str, ids: list[int], window: int, cache_dir: Path
) -> float:
    """Perplexity of `hf` float32 on these token ids, computed once and cached."""
    from worker.perplexity import perplexity

    key = hashlib.sha256(json.dumps([digest, ids, window]).encode()).hexdigest()[:20]
    final = cache_dir / "references" / f"ppl-{key}"

    def build(out: Path) -> None:
        from backends.hf import HFBackend
        from backends.options import HFOptions

        hf = HFBackend(model_dir, HFOptions(dtype="float32"), 0, cache_dir)
        (out / "perplexity.json").write_text(json.dumps(perplexity(hf, ids, window)))

    build_once(final, build)
    return float(json.loads((final / "perplexity.json").read_text()))
