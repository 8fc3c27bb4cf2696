"""How far a backend's outputs are from transformers float32 on the same prompt.

With random weights the logits are nearly flat, so free-running greedy output
diverges at the first near-tie; the teacher-forced figures (every backend fed the
reference's own greedy sequence) are the ones to lead with. A model that ships held-out
text (`trained:` ones do) is fed that text instead: real positions, and a perplexity.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from whistle_stop.artifacts import build_once
from whistle_stop.contract.provenance import library_versions

Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


def reference_versions() -> list[str | None]:
    """The libraries the reference is computed with: part of its cache key, so an upgraded
    torch or transformers computes a new reference instead of reusing the old one."""
    versions = library_versions()
    return [versions["torch"], versions["transformers"]]


def reference(
    model_dir: Path,
    digest: str,
    prompt: list[int],
    generation: int,
    cache_dir: Path,
    fed: list[int] | None = None,
) -> tuple[list[int], np.ndarray, dict[str, np.ndarray]]:
    """`hf` float32's teacher-forced logits after `prompt`, computed once and cached.

    Without `fed`, it is fed its own greedy choices (`generation` of them); with `fed`
    (the real next tokens of a held-out text), those, and the per-channel maxima of every
    linear layer's input are recorded on the way (worker/activations.py).
    Returns (the tokens fed, logits (tokens, vocab) float32, channel maxima or {}).
    """
    parts = [digest, prompt, generation, reference_versions()] + ([fed] if fed else [])
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]
    final = cache_dir / "references" / key

    def build(out: Path) -> None:
        from whistle_stop.backends.hf import HFBackend
        from whistle_stop.backends.options import HFOptions
        from whistle_stop.worker.activations import ChannelMaxima

        hf = HFBackend(model_dir, HFOptions(dtype="float32"), 0, cache_dir)
        if fed is None:
            tokens, maxima = hf.generate(prompt, generation).tokens, {}
            logits = hf.teacher_forced_logits(prompt, tokens)
        else:
            with ChannelMaxima(hf.model) as seen:
                tokens, logits = fed, hf.teacher_forced_logits(prompt, fed)
            maxima = seen.arrays()
        np.savez(out / "reference.npz", tokens=np.array(tokens), logits=logits, **maxima)

    build_once(final, build)
    stored = np.load(final / "reference.npz")
    maxima = {key: stored[key] for key in stored.files if key.startswith("max:")}
    return stored["tokens"].tolist(), stored["logits"], maxima


def compare(
    ref_tokens: list[int],
    ref_logits: list[np.ndarray],
    logits: list[np.ndarray],
    tokens: list[int],
    text: list[list[int]] | None = None,
) -> dict[str, float | int]:
    """Teacher-forced agreement and KL pooled over every prompt's positions, with their
    spread; and where free-running output (of the first prompt) diverged.

    `ref_logits[i]` and `logits[i]` are prompt i's (positions, vocab) logits. With `text`
    (the real next tokens that were fed, prompt by prompt), the perplexity of both on them.
    """
    matches, kls, top_diffs, logit_diff, positions = [], [], [], 0.0, 0
    for ref, mine in zip(ref_logits, logits, strict=True):
        count = min(len(ref), len(mine))
        ref, mine = ref[:count].astype(np.float64), mine[:count].astype(np.float64)
        ref_logp, logp = log_softmax(ref), log_softmax(mine)
        kls.append((np.exp(ref_logp) * (ref_logp - logp)).sum(axis=1))
        top = ref.argmax(1)
        matches.append(top == mine.argmax(1))
        rows = np.arange(count)
        top_diffs.append(np.abs(np.exp(logp[rows, top]) - np.exp(ref_logp[rows, top])))
        logit_diff = max(logit_diff, float(np.abs(ref - mine).max()) if count else 0.0)
        positions += count
    kl, agree = np.concatenate(kls), np.concatenate(matches)
    low, high = wilson(int(agree.sum()), positions)
    kl_half = Z95 * mean_standard_error(kls)
    divergence = next(
        (i for i, (a, b) in enumerate(zip(ref_tokens, tokens, strict=False)) if a != b),
        min(len(ref_tokens), len(tokens)),
    )
    perplexities = {}
    if text is not None and positions:
        perplexity = text_perplexity(logits, text)
        reference = text_perplexity(ref_logits, text)
        perplexities = {"perplexity": perplexity, "perplexity_delta": perplexity - reference}
    return perplexities | {
        "top1_agreement": float(agree.mean()),
        "top1_low": low,
        "top1_high": high,
        "mean_kl": float(kl.mean()),
        "kl_p50": float(np.percentile(kl, 50)),
        "kl_p90": float(np.percentile(kl, 90)),
        "kl_p99": float(np.percentile(kl, 99)),
        "kl_max": float(kl.max()),
        "kl_low": max(0.0, float(kl.mean()) - kl_half),
        "kl_high": float(kl.mean()) + kl_half,
        "top_prob_diff": float(np.concatenate(top_diffs).mean()),
        "max_logit_diff": logit_diff,
        "first_divergence": int(divergence),
        "fidelity_positions": int(positions),
        "fidelity_prompts": len(ref_logits),
    }


def text_perplexity(logits: list[np.ndarray], text: list[list[int]]) -> float:
    """exp(mean NLL) of each prompt's real next tokens under its (positions, vocab) logits,
    pooled over prompts (the shorter of the two sets each prompt's positions)."""
    nll, positions = 0.0, 0
    for rows, truth in zip(logits, text, strict=True):
        count = min(len(rows), len(truth))
        nll += negative_log_likelihood(rows[:count], truth[:count])
        positions += count
    return math.exp(nll / positions)


def negative_log_likelihood(logits: np.ndarray, targets) -> float:
    """Summed -log p(target) over (positions, vocab) logits and one target a position."""
    logp = log_softmax(logits.astype(np.float64))
    return -float(logp[np.arange(len(logp)), np.asarray(targets)].sum())


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion: 64 of 64 gives [0.943, 1], so "no
    flips seen" still allows a true flip rate of a few percent."""
    if trials == 0:
        return math.nan, math.nan
    p, n, z2 = successes / trials, trials, Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_standard_error(groups: list[np.ndarray]) -> float:
    """The standard error of the mean of every value in `groups` (one group a prompt),
    the larger of two estimates: positions taken as independent, and the cluster-robust
    one (the spread of the prompts' summed deviations), which allows for positions of one
    prompt moving together. With a handful of prompts the second is itself noisy, so
    neither alone: the larger is the cautious choice."""
    values = np.concatenate(groups)
    count = len(values)
    if count < 2:
        return math.nan
    independent = values.std(ddof=1) / math.sqrt(count)
    mean = values.mean()
    clustered = math.sqrt(sum(float((g - mean).sum()) ** 2 for g in groups)) / count
    if len(groups) > 1:  # the small-sample correction of the cluster-robust estimate
        clustered *= math.sqrt(len(groups) / (len(groups) - 1))
    return max(float(independent), clustered)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (positions, vocab) logits, stable for large values."""
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
