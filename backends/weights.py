"""Materialise a model source into a local directory every backend loads from.

Random models are created once with a seeded initialisation and saved as
safetensors in the model cache, so every backend and every worker on a host
reads identical weights. Loading never runs remote code and never unpickles.
"""

from __future__ import annotations

import sys
from pathlib import Path

from whistle_stop.artifacts import build_once
from whistle_stop.backends.sources import ModelSource


def materialize(source: ModelSource, cache_dir: Path, seed: int) -> Path:
    """Return a local directory with config.json and model.safetensors for `source`."""
    if source.kind == "local":
        return Path(source.ref)
    if source.kind == "hub":
        return _download(source.ref)
    if source.kind == "trained":
        return trained_model(source.ref, cache_dir, seed)
    final = cache_dir / "models" / f"random-{source.ref}-seed{seed}"
    build_once(final, lambda tmp: _save_random(source, seed, tmp))
    return final


def trained_model(name: str, cache_dir: Path, seed: int, progress=None) -> Path:
    """The trained model `name` in the model cache, trained once (minutes; locked, so two
    workers never train it twice). Without a `progress` callback, a line every tenth of
    the steps goes to stderr (a worker's log)."""
    from whistle_stop.backends import trained

    final = cache_dir / "models" / f"trained-{name}-seed{seed}-{trained.key(name, seed)}"
    build_once(final, lambda tmp: trained.build(name, seed, cache_dir, tmp, progress or _log))
    return final


def _log(step: int, steps: int, loss: float) -> None:
    if step % max(1, steps // 10) == 0 or step == steps:
        print(f"training: step {step}/{steps}, loss {loss:.3f}", file=sys.stderr, flush=True)


def _save_random(source: ModelSource, seed: int, out: Path) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**source.config_dict()))
    model.save_pretrained(out, safe_serialization=True)


def _download(hub_id: str) -> Path:
    """The real hub client; only safetensors and configs, never pickled weights."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                hub_id,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "merges.txt", "vocab.json"],
            )
        )
    except Exception as error:  # the hub client raises many kinds when offline
        raise RuntimeError(
            f"could not fetch {hub_id!r} from the model hub ({type(error).__name__}: {error}). "
            "Offline? Use model: random:gpt2 (same compute, random weights) or a local "
            "directory written by save_pretrained."
        ) from error


def load_hf_model(model_dir: Path, dtype: str = "float32"):
    """`GPT2LMHeadModel` from a local directory: safetensors only, no remote code."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(
        model_dir, use_safetensors=True, trust_remote_code=False, dtype=getattr(torch, dtype)
    )
    return model.eval()


def weights_digest(model_dir: Path, cache_dir: Path) -> str:
    """sha256 of a model's safetensors files, remembered per (path, size, mtime).

    Artifacts built from the weights are keyed by this, so changed weights never
    reuse a stale export.
    """
    import hashlib

    shards = sorted(model_dir.glob("*.safetensors"))
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in shards)
    memo = cache_dir / "digests" / hashlib.sha1(stamp.encode()).hexdigest()
    if memo.is_file():
        return memo.read_text()
    digest = hashlib.sha256()
    for shard in shards:
        with open(shard, "rb") as file:
            while chunk := file.read(1 << 24):
                digest.update(chunk)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest.hexdigest())
    return digest.hexdigest()
