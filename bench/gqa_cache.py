"""One GroupQueryAttention node alone: a float32 cache against ONNX Runtime's int8 one.

Why the int8-cache paths (`kv_dtype: int8`) run their prompt on a second session with a
float32 cache: this times the one node our in-place graphs use per layer (GPT-2 small's
shapes: 12 heads of 64), on a prompt of --prompt tokens and on a decode step at that
context, with the cache float32 and int8 (static PER_CHANNEL steps, as export
calibrates them). Median of --repeats runs after warm-ups, one session per case, pinned
to the threads given.

    farm bench gqa-cache
    farm bench gqa-cache --prompt 128 --threads 1
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from whistle_stop.bench.common import counting, median_ms, one_node_model, table

HEADS, HEAD_SIZE, CAPACITY = 12, 64, 1024


def gqa_model(int8: bool) -> bytes:
    """qkv (1, T, 3C), the caches, seqlens_k, total_length [, k_scale, v_scale] -> y."""
    channels = HEADS * HEAD_SIZE
    cache_type = TensorProto.INT8 if int8 else TensorProto.FLOAT
    cache_shape = [1, HEADS, CAPACITY, HEAD_SIZE]
    inputs = [
        helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [1, "T", 3 * channels]),
        helper.make_tensor_value_info("past_k", cache_type, cache_shape),
        helper.make_tensor_value_info("past_v", cache_type, cache_shape),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
        helper.make_tensor_value_info("total_length", TensorProto.INT32, []),
    ]
    names = ["qkv", "", "", "past_k", "past_v", "seqlens_k", "total_length"]
    attributes = {"num_heads": HEADS, "kv_num_heads": HEADS}
    if int8:
        for name in ("k_scale", "v_scale"):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [channels]))
        names += ["", "", "", "", "", "k_scale", "v_scale"]
        attributes |= {
            "k_quant_type": "PER_CHANNEL",
            "v_quant_type": "PER_CHANNEL",
            "kv_cache_bit_width": 8,
        }
    node = helper.make_node(
        "GroupQueryAttention",
        names,
        ["y", "present_k", "present_v"],
        domain="com.microsoft",
        **attributes,
    )
    outputs = [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", channels]),
        helper.make_tensor_value_info("present_k", cache_type, cache_shape),
        helper.make_tensor_value_info("present_v", cache_type, cache_shape),
    ]
    return one_node_model(node, inputs, outputs)


def time_case(int8: bool, cached: int, new: int, threads: int, repeats: int) -> float:
    """Median ms of one run writing `new` tokens after `cached` ones, the cache bound in
    place (present = past's memory), as the farm's loop binds it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    session = ort.InferenceSession(gqa_model(int8), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    dtype = np.int8 if int8 else np.float32
    caches = {
        name: ort.OrtValue.ortvalue_from_numpy(
            rng.integers(-127, 128, (1, HEADS, CAPACITY, HEAD_SIZE)).astype(dtype)
        )
        for name in ("past_k", "past_v")
    }
    feeds = {
        "qkv": rng.standard_normal((1, new, 3 * HEADS * HEAD_SIZE), dtype=np.float32),
        "seqlens_k": np.array([cached + new - 1], dtype=np.int32),
        "total_length": np.array(cached + new, dtype=np.int32),
    }
    if int8:
        step = np.full(HEADS * HEAD_SIZE, 0.05, dtype=np.float32)
        feeds |= {"k_scale": step, "v_scale": step}
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for kind in ("k", "v"):
        binding.bind_ortvalue_input(f"past_{kind}", caches[f"past_{kind}"])
        binding.bind_ortvalue_output(f"present_{kind}", caches[f"past_{kind}"])
    binding.bind_output("y")
    return median_ms(lambda: session.run_with_iobinding(binding), repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", type=counting, default=512, help="prompt tokens")
    parser.add_argument("--threads", type=counting, default=2)
    parser.add_argument("--repeats", type=counting, default=20)
    args = parser.parse_args(argv)
    rows = []
    for what, cached, new in (("prompt", 0, args.prompt), ("decode step", args.prompt, 1)):
        float_ms, int8_ms = (
            time_case(int8, cached, new, args.threads, args.repeats) for int8 in (False, True)
        )
        rows.append(
            [
                f"{what} at {cached + new}",
                f"{float_ms:.3f}",
                f"{int8_ms:.3f}",
                f"{int8_ms / float_ms:.2f}x",
            ]
        )
    print(
        f"one GroupQueryAttention node ({HEADS} heads of {HEAD_SIZE}), {args.threads} "
        f"threads, onnxruntime {ort.__version__}, median ms of {args.repeats}:"
    )
    print(table(["case", "float32 cache", "int8 cache", "int8/float"], rows))
