"""How fast ONNX Runtime's quantized matmul kernels eat weights on this CPU, alone.

One MatMulNBits node (the 4-bit and 8-bit weight ops of our paths) per GPT-2 small
shape, one token (M = 1), at accuracy_level 0 (float32 compute) and 4 (activations
quantized to int8 in the kernel: what the paths use), timed over many runs of the same
node. The three layer shapes (1-2.4 MB of weights) stay in the caches between runs, so
their figure is the kernel's own rate, not DRAM's; the LM head (19-39 MB) streams.
Compare the GB/s with the streaming read the farm measures (`farm show` of any job,
or `bandwidth` in decode_profile.py): a kernel slower than memory in cache cannot reach
the bandwidth roofline from DRAM either. The last columns time the native engine's
matmul (native/gpt2.cc, `ws_matmul`: the same bits and block, activations quantized in
the call) on the same shapes, for the same comparison.

    farm bench matmul-kernels [--threads 2]

`--sequence MODEL` times instead what a decode step of MODEL asks of `ws_matmul` from
memory: its layers' matrices one after another (qkv, proj, fc, out; random weights of
the model's shapes, int8 and 4-bit at block 128), then the same bytes as one matrix (one
long stream), beside the farm's streaming-read probe before and after each. Each matrix
is a call from Python (the pool's threads started and joined) where the engine's step
runs them all in one task, so a column takes off what the calls cost (timed on a 64x128
matrix in cache); what is left between that and one long stream is the cost of starting
and ending streams (on a Zen 3 VM none: docs/benchmarks.md). `--cflags` twice or more
times each build in the same rounds (as native-profile's), e.g. `--cflags=
--cflags=-DWS_PREFETCH=4096`:

    farm bench matmul-kernels --sequence random:gpt2-large [--rounds 5] [--cflags=...]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from whistle_stop.bench.common import (
    CACHE,
    bench_model,
    counting,
    median_ms,
    model_source,
    one_node_model,
    table,
)

BLOCK = 128
SHAPES = {
    "c_attn": (768, 2304),
    "c_fc": (768, 3072),
    "mlp c_proj": (3072, 768),
    "lm_head": (768, 50257),
}


def node_model(k: int, n: int, bits: int, level: int) -> bytes:
    """Y (1, N) = A (1, K) @ B, B random `bits`-bit weights with a float32 scale per block."""
    blocks = k // BLOCK
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, (n, blocks, BLOCK * bits // 8), dtype=np.uint8)
    scales = rng.random(n * blocks, dtype=np.float32) * 0.01
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "S"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=bits,
        block_size=BLOCK,
        accuracy_level=level,
    )
    return one_node_model(
        node,
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(weights, "B"), numpy_helper.from_array(scales, "S")],
    )


def nbits_ms(k: int, n: int, bits: int, level: int, threads: int, runs: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        node_model(k, n, bits, level), options, providers=["CPUExecutionProvider"]
    )
    feed = {"A": np.random.default_rng(1).standard_normal((1, k), dtype=np.float32)}
    return median_ms(lambda: session.run(None, feed), runs, warmups=10)


def native_ms(lib, pool, k: int, n: int, bits: int, runs: int) -> float:
    """Our `ws_matmul` on one (N, K) matrix of random `bits`-bit weights, in cache."""
    weights = Weights([(n, k)], bits)
    return median_ms(functools.partial(weights.run, lib, pool, weights.as_shapes()), runs, 10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=counting, default=2)
    parser.add_argument(
        "--sequence", type=model_source, metavar="MODEL", help="a decode step's matmuls instead"
    )
    parser.add_argument("--rounds", type=counting, default=5, help="with --sequence")
    parser.add_argument(
        "--cflags", action="append", help="with --sequence: a build's extra flags ('': as built)"
    )
    args = parser.parse_args(argv)
    if args.sequence:
        sequence(args.sequence, args.threads, args.rounds, args.cflags or [""])
        return
    from whistle_stop.native.build import load

    lib, _ = load(Path(tempfile.gettempdir()) / "whistle-stop-kernels")
    pool = lib.ws_pool_create(args.threads, 200)
    rows = []
    for name, (k, n) in SHAPES.items():
        for bits in (4, 8):
            megabytes = k * n * (bits / 8 + 4 / BLOCK) / 1e6
            cells = []
            for level in (0, 4):
                runs = 20 if level == 0 and bits == 8 else 100  # float 8-bit: 100x slower
                ms = nbits_ms(k, n, bits, level, args.threads, runs)
                cells += [f"{ms:.3f}", f"{megabytes / ms:.1f}"]
            ms = native_ms(lib, pool, k, n, bits, 100)
            cells += [f"{ms:.3f}", f"{megabytes / ms:.1f}"]
            rows.append([f"{name} {k}x{n}", str(bits), f"{megabytes:.1f}", *cells])
    print(
        f"MatMulNBits, one token, block {BLOCK}, {args.threads} threads, onnxruntime "
        f"{ort.__version__}, median of repeated runs:"
    )
    header = ["shape", "bits", "MB", "level 0 ms", "GB/s", "level 4 ms", "GB/s"]
    print(table([*header, "native ms", "GB/s"], rows))


def sequence(source: str, threads: int, rounds: int, builds: list[str]) -> None:
    """A step's matmuls in order, and the same bytes as one matrix, per build and width."""
    from whistle_stop.backends.config import ModelConfig
    from whistle_stop.native.build import load
    from whistle_stop.worker.roofline import fresh_read_bandwidth

    config = ModelConfig.from_dir(bench_model(source))
    d = config.n_embd
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * config.n_layer  # (N, K)
    libs = {flags: load(CACHE, cflags=tuple(flags.split()))[0] for flags in builds}
    pools = {flags: lib.ws_pool_create(threads, 200) for flags, lib in libs.items()}
    # each matrix is a call from Python (and a start and end of the pool's threads): the
    # engine's step runs its matrices in one task, so what a call costs is the bench's own
    tiny = Weights([(64, BLOCK)], 8)
    call_ms = {
        flags: median_ms(functools.partial(tiny.run, lib, pools[flags], tiny.as_shapes()), 2000)
        for flags, lib in libs.items()
    }
    figures: dict[tuple[str, int, str], list[float]] = {}
    for bits in (8, 4):
        weights = Weights(shapes, bits)
        runs = [(flags, one) for flags in builds for one in (False, True)]
        for index in range(rounds):
            for flags, one in runs if index % 2 == 0 else runs[::-1]:
                calls = weights.as_one() if one else weights.as_shapes()
                probe = fresh_read_bandwidth(threads)["read_bytes_per_s"]
                run = functools.partial(weights.run, libs[flags], pools[flags], calls)
                ms = median_ms(run, 5, warmups=1)
                probe = (probe + fresh_read_bandwidth(threads)["read_bytes_per_s"]) / 2
                key = (flags, bits, "one matrix" if one else "a step's")
                figures.setdefault(key, []).append(weights.megabytes / ms)
                if not one:  # the same, less what its calls cost
                    net = ms - len(calls) * call_ms[flags]
                    figures.setdefault((flags, bits, "less calls"), []).append(
                        weights.megabytes / net
                    )
                figures.setdefault((flags, bits, "probe"), []).append(probe / 1e9)
    for flags, lib in libs.items():
        lib.ws_pool_destroy(pools[flags])
    rows = []
    for flags in builds:
        for bits in (8, 4):
            cells = [flags or "as built", str(bits)]
            for kind in ("a step's", "less calls", "one matrix", "probe"):
                values = figures[flags, bits, kind]
                cells.append(f"{np.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
            rows.append(cells)
    print(
        f"ws_matmul from memory, {source}: {len(shapes)} matrices a step, block {BLOCK}, "
        f"{threads} threads, {rounds} rounds (builds alternated); GB/s median (range):"
    )
    headings = ["build", "bits", "a step's matrices", "less the calls", "one matrix", "probe"]
    print(table(headings, rows))
    print(
        f"a call's own cost (a 64x{BLOCK} matrix, in cache), by build: "
        + ", ".join(f"{ms * 1e3:.1f} us" for ms in call_ms.values())
        + f"; a step makes {len(shapes)} (the engine's step runs them in one task)"
    )


class Weights:
    """Random `bits`-bit weights of `shapes` ((N, K) each), back to back in one buffer as
    the engine keeps a model's, callable as those matrices or as one of K = shapes' K."""

    def __init__(self, shapes: list[tuple[int, int]], bits: int) -> None:
        rng = np.random.default_rng(0)
        self.shapes, self.bits = shapes, bits
        self.total = sum(n * k for n, k in shapes)
        # the engine reads rows in groups of 4: a last matrix of N not a multiple (the LM
        # head's 50257) reads up to 3 rows past the end, into this slack
        slack = 3 * max(k for _, k in shapes)
        data = rng.integers(0, 256, (self.total + slack) * bits // 8, dtype=np.uint8)
        scales = rng.random((self.total + slack) // BLOCK + 1, dtype=np.float32) * 0.01
        self.data = data[: self.total * bits // 8]
        self.scales = scales[: self.total // BLOCK]
        self.megabytes = self.data.nbytes / 1e6 + self.scales.nbytes / 1e6
        widest = max(max(n, k) for n, k in shapes)
        self.x = rng.standard_normal(widest, dtype=np.float32)
        self.y = np.zeros(self.total // shapes[0][1], np.float32)

    def as_shapes(self) -> list[tuple[int, int, int, int]]:
        calls, at, scale_at = [], 0, 0
        for n, k in self.shapes:
            calls.append((n, k, self.data.ctypes.data + at, self.scales.ctypes.data + scale_at))
            at, scale_at = at + n * k * self.bits // 8, scale_at + 4 * (n * k // BLOCK)
        return calls

    def as_one(self) -> list[tuple[int, int, int, int]]:
        k = self.shapes[0][1]
        return [(self.total // k, k, self.data.ctypes.data, self.scales.ctypes.data)]

    def run(self, lib, pool, calls: list[tuple[int, int, int, int]]) -> None:
        floats = ctypes.POINTER(ctypes.c_float)
        x, y = self.x.ctypes.data_as(floats), self.y.ctypes.data_as(floats)
        for n, k, data, scales in calls:
            scale = ctypes.cast(scales, floats)
            lib.ws_matmul(pool, data, scale, None, n, k, self.bits, BLOCK, x, 1, y)
