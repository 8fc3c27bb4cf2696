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
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from whistle_stop.bench.common import median_ms, one_node_model, table

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
    from whistle_stop.native.quantize import grouped, quantize_rows

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((n, k), dtype=np.float32)
    data, scales = grouped(*quantize_rows(weights, bits, BLOCK))
    x = rng.standard_normal((1, k), dtype=np.float32)
    y = np.zeros((1, n), dtype=np.float32)
    floats = ctypes.POINTER(ctypes.c_float)
    # the engine's call: pool, weights, scales, no bias, N, K, bits, block, x, rows, y
    args = (pool, data.ctypes.data, scales.ctypes.data_as(floats), None, n, k, bits, BLOCK)
    args += (x.ctypes.data_as(floats), 1, y.ctypes.data_as(floats))
    return median_ms(lambda: lib.ws_matmul(*args), runs, warmups=10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
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
