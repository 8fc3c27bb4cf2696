"""How close decoding gets to what memory bandwidth allows.

At batch 1, generating a token multiplies every weight matrix by one vector, so
every weight is read from memory once per token. Decode speed is then bounded by
    roofline tokens/s = memory read bandwidth / bytes of weights read per token.
A step also reads the KV cache (every cached key and value, growing with the context):
a second bound counts those bytes beside the weights, for the backends that say how wide
their cache is. Left out: activations, and cache effects (weights that fit in the
last-level cache are read faster than DRAM allows, so a small model can pass 100%).
"""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

from whistle_stop.backends.config import ModelConfig


def weight_bytes_per_token(config: ModelConfig, matmul_bytes: float, lm_head_bytes: float) -> float:
    """Bytes of weights one decode step reads, for a GPT-2 config.

    Per layer: the four projections (12 d^2 weights) at `matmul_bytes` each, plus
    biases and layer norms (13 d) in float32. Then the LM head (vocab x d, tied to
    the token embedding) at `lm_head_bytes`, the final layer norm, and one row each
    of the token and position embeddings.
    """
    d, layers, vocab = config.n_embd, config.n_layer, config.vocab_size
    per_layer = 12 * d * d * matmul_bytes + 13 * d * 4
    return layers * per_layer + vocab * d * lm_head_bytes + 2 * d * 4 + 2 * d * 4


def kv_bytes_per_token(
    config: ModelConfig, kv_bytes: float, context: int, generation: int
) -> float:
    """Bytes of the KV cache a decode step reads, averaged over a job's decode steps: the
    step after the prompt's token i (1 .. generation - 1) attends to context + i cached
    positions of keys and values in every layer, so context + generation / 2 on average.
    Beside the weights it is what a step must read: at gpt2-xl, context 512, 64 new
    tokens, half precision, 167 MB a step, 19% of its 4-bit weights."""
    positions = context + generation / 2
    return 2 * config.n_layer * config.n_embd * kv_bytes * positions


def last_level_cache_bytes(cpu: int = 0) -> int | None:
    """The largest (last-level) cache `cpu` sees, from sysfs; None where it is not said."""
    sizes = []
    for index in Path(f"/sys/devices/system/cpu/cpu{cpu}/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=None)


def measure_bandwidth(threads: int, size_bytes: int = 512 * 2**20, repeats: int = 5) -> dict:
    """Streaming read and copy bandwidth of this process's CPU set, in bytes/s (best of N).

    The buffer is far larger than any last-level cache, so it measures DRAM.
    """
    import torch

    torch.set_num_threads(threads)
    source = torch.ones(size_bytes // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    read_s, copy_s = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        source.sum()
        read_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        target.copy_(source)
        copy_s.append(time.perf_counter() - started)
    return {
        "read_bytes_per_s": size_bytes / min(read_s),
        "copy_bytes_per_s": 2 * size_bytes / min(copy_s),  # read + write
        "threads": threads,
    }


def fresh_read_bandwidth(threads: int, size_bytes: int = 256 * 2**20, repeats: int = 3) -> dict:
    """A short (~0.2 s) streaming read measurement of this process's CPU set, taken right
    before and after a job: the figure its roofline share divides by, of the same minute.
    Measured with `threads` (the job's); torch's pool is left as the backend set it."""
    import torch

    pool = torch.get_num_threads()
    torch.set_num_threads(threads)
    source = torch.ones(size_bytes // 4, dtype=torch.float32)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        source.sum()
        best = min(best, time.perf_counter() - started)
    del source
    torch.set_num_threads(pool)
    return {"read_bytes_per_s": size_bytes / best, "measured_at": time.time()}


def cached_bandwidth(cpus: str, threads: int, cache_dir: Path, *, remeasure: bool = False) -> dict:
    """The bandwidth of this host and CPU set, measured once and kept in the cache."""
    path = cache_dir / "bandwidth" / f"{socket.gethostname()}-cpus{cpus}.json"
    if path.exists() and not remeasure:
        return json.loads(path.read_text())
    figures = measure_bandwidth(threads)
    figures.update(host=socket.gethostname(), cpus=cpus, measured_at=time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures))
    tmp.replace(path)
    return figures
