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
import os
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


def measure_bandwidth(threads: int, size_bytes: int | None = None, repeats: int = 5) -> dict:
    """Streaming read and copy bandwidth of this process's CPU set, in bytes/s (best of N),
    and the size from which a read streams at that speed (`dram_from_bytes`).

    The buffer is several times the last-level cache, so it measures DRAM.
    """
    import torch

    torch.set_num_threads(threads)
    llc = last_level_cache_bytes(_first_cpu())
    size_bytes = size_bytes or dram_probe_bytes(llc, floor=512 * 2**20)
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
    del target
    read = size_bytes / min(read_s)
    return {
        "read_bytes_per_s": read,
        "copy_bytes_per_s": 2 * size_bytes / min(copy_s),  # read + write
        "threads": threads,
        "llc_bytes": llc,
        "dram_from_bytes": dram_from_bytes(source, read, llc),
    }


def dram_probe_bytes(llc_bytes: int | None, floor: int = 256 * 2**20) -> int:
    """A streaming read that measures DRAM: twice the reported LLC (at most 1 GiB), or
    `floor` where that is more (a Xeon VM reports the socket's 480 MiB of L3)."""
    return max(floor, min(2 * (llc_bytes or 0), 2**30))


CACHE_SPEEDUP = 1.2  # a read this much faster than DRAM's is (partly) served by a cache


def dram_from_bytes(buffer, dram_read: float, llc_bytes: int | None) -> int | None:
    """The smallest streaming read, of sizes from 4 MiB up 1.5x at a time to twice the
    reported LLC, that runs within CACHE_SPEEDUP of DRAM's speed, as does the next size
    up: weights at least this large stream from DRAM, whatever the LLC says. On a 2-vCPU
    Xeon VM that reports 480 MiB of L3, reads ran at cache speed (2x DRAM's) to 96 MiB and
    at DRAM's from 128 MiB: the VM's share of a shared cache. A neighbour that fills the
    cache makes it look smaller, so the larger of two sweeps counts. Reads prefixes of
    `buffer` (float32, read at `dram_read` bytes/s); None where no two sizes ran at DRAM
    speed: the LLC is then the cache judged against (on a Zen 4 VM with 32 MiB of L3 no
    two sizes up to 64 MiB did; a victim L3 likely keeps part of a longer stream)."""
    top = min(2 * (llc_bytes or 64 * 2**20), buffer.numel() * 4)
    sizes, size = [], 4 * 2**20
    while size <= top:
        sizes.append(size)
        size = (size * 3 // 2) // 2**20 * 2**20
    sweeps = [_dram_from(buffer, sizes, CACHE_SPEEDUP * dram_read) for _ in range(2)]
    return None if None in sweeps else max(sweeps)


def _dram_from(buffer, sizes: list[int], cached_read: float) -> int | None:
    at_dram = []
    for size in sizes:  # from the smallest: the large reads cost the most
        prefix = buffer[: size // 4]
        prefix.sum()  # where it fits, this brings it into the cache
        best = math.inf
        for _ in range(max(3, 2**28 // size)):  # small reads often: a neighbour's slices
            started = time.perf_counter()
            prefix.sum()
            best = min(best, time.perf_counter() - started)
        at_dram = at_dram + [size] if size / best <= cached_read else []
        if len(at_dram) == 2:
            return at_dram[0]
    return None


def _first_cpu() -> int:
    return min(os.sched_getaffinity(0), default=0)


def fresh_read_bandwidth(threads: int, size_bytes: int | None = None, repeats: int = 3) -> dict:
    """A short (0.2-0.6 s) streaming read measurement of this process's CPU set, taken right
    before and after a job: the figure its roofline share divides by, of the same minute.
    Measured with `threads` (the job's); torch's pool is left as the backend set it."""
    import torch

    size_bytes = size_bytes or dram_probe_bytes(last_level_cache_bytes(_first_cpu()))

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
        figures = json.loads(path.read_text())
        if "dram_from_bytes" in figures:  # else measured by a version that did not size it
            return figures
    figures = measure_bandwidth(threads)
    figures.update(host=socket.gethostname(), cpus=cpus, measured_at=time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures))
    tmp.replace(path)
    return figures
