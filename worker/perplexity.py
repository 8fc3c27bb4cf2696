"""Perplexity on an evaluation text, the seed's fidelity measure for models with a tokenizer.

Teacher-forced over the token ids of the text, in windows of the model's context with
half-window strides; only the tokens new to each window are scored (so each token is
predicted once, with at least half a window of context after the first window).
Perplexity is exp of the mean negative log-likelihood.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from whistle_stop.artifacts import build_once
from whistle_stop.worker.fidelity import negative_log_likelihood, reference_versions


def load_eval_text(source: str) -> str:
    """A local file, or `datasets:NAME[:CONFIG]` (e.g. datasets:wikitext:wikitext-2-raw-v1)."""
    if source.startswith("datasets:"):
        try:
            from datasets import load_dataset
        except ImportError:
            raise RuntimeError("eval_text from datasets needs `pip install datasets`") from None
        name, _, config = source.removeprefix("datasets:").partition(":")
        rows = load_dataset(name, config or None, split="test")
        return "\n\n".join(rows["text"])
    return Path(source).expanduser().read_text()


def token_ids(model_dir: Path, text: str, limit: int) -> list[int]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise RuntimeError(f"eval_text needs a tokenizer in {model_dir}; {error}") from None
    return tokenizer(text)["input_ids"][:limit]


def perplexity(backend, ids: list[int], window: int) -> float:
    """exp(mean NLL) of `ids` under `backend`, sliding `window`-token windows by window/2."""
    if len(ids) < 2:
        raise ValueError("the evaluation text has fewer than two tokens")
    stride = max(1, window // 2)
    nll, scored, begin = 0.0, 0, 0
    while scored < len(ids) - 1:
        end = min(begin + window, len(ids))
        # logits[i] predicts ids[begin + 1 + i]
        logits = backend.teacher_forced_logits(ids[begin : begin + 1], ids[begin + 1 : end])
        targets = np.array(ids[begin + 1 : end])
        first_new = scored - begin  # positions already scored by the previous window
        nll += negative_log_likelihood(logits[first_new:], targets[first_new:])
        scored = end - 1
        begin += stride
    return math.exp(nll / scored)


def reference_perplexity(
    model_dir: Path, digest: str, ids: list[int], window: int, cache_dir: Path
) -> float:
    """Perplexity of `hf` float32 on these token ids, computed once and cached."""
    parts = [digest, ids, window, reference_versions()]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]
    final = cache_dir / "references" / f"ppl-{key}"

    def build(out: Path) -> None:
        from whistle_stop.backends.hf import HFBackend
        from whistle_stop.backends.options import HFOptions

        hf = HFBackend(model_dir, HFOptions(dtype="float32"), 0, cache_dir)
        (out / "perplexity.json").write_text(json.dumps(perplexity(hf, ids, window)))

    build_once(final, build)
    return float(json.loads((final / "perplexity.json").read_text()))
