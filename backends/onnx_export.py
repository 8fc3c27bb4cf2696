"""Build ONNX artifacts: export -> (optimize) -> (quantize), each cached on disk.

Tools, and why:
- Export: torch's own exporter (`torch.onnx.export(dynamo=True)`) applied to our
  nanoGPT module, whose past/present keys and values are explicit tensors. optimum's
  exporter pins transformers 4.x, and ONNX Runtime's GPT-2 `convert_to_onnx` fails
  under torch 2.13; exporting our module keeps the project on transformers 5 and
  gives one graph that serves both prefill (T tokens, empty past) and decode.
- Optimize: ONNX Runtime's transformer optimizer (`optimize_model`, model_type gpt2).
  What it fused is recorded, since fusions depend on the graph's exact patterns.
- Quantize: ONNX Runtime's dynamic int8 quantization (`quantize_dynamic`), and its
  block-wise weight-only `MatMulNBitsQuantizer` for int4 (and 8-bit, `int8_kernel: nbits`).

Each step is keyed by the weights' digest, the options that shape it and the
versions of the tools, and built with `build_once` (file lock, write then rename).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from whistle_stop.artifacts import cached_artifact, dir_bytes, source_digest
from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.options import BLOCK_SIZE, OnnxOptions

# the code that writes, rewrites and quantizes the graph: its source is in every key
EXPORTER = (
    "whistle_stop.backends.onnx_export",
    "whistle_stop.backends.onnx_graph",
    "whistle_stop.backends.nanogpt_model",
)
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime")
MODEL_FILE = "model.onnx"
KV_SCALES = "kv_scales.npz"  # an int8 cache's steps, (n_layer, C) for keys and for values
# An int8 cache's scales come from the float model on these prompts: random token ids (as
# the farm's prompts are), from seeds no sweep uses by default, each as long as the model
# allows so that every position's keys and values are seen
CALIBRATION = {"prompts": 4, "seed": 1000}


@dataclass
class Artifact:
    path: Path  # the .onnx file
    built: bool  # any step built now (False: every step reused from the cache)
    build_s: float
    bytes: int
    fused_ops: dict[str, int] | None = None
    weight_ops: dict[str, dict] | None = None  # the quantized graph's matmul kernels
    kv_scales: Path | None = None  # an int8 cache's calibrated steps (KV_SCALES)


def onnx_artifact(model_dir: Path, options: OnnxOptions, cache_dir: Path, digest: str) -> Artifact:
    """The cached ONNX model for these options, building whatever steps are missing."""
    versions = {tool: metadata.version(tool) for tool in TOOLS}
    fused = options.fused_attention
    # The LM head: a float head runs fastest as a Gemm on the tied weight (fp32 GPT-2 small:
    # 54 against 46 tok/s); a head to be quantized must be a MatMul on its own constant, and
    # so must any head under int8, whose quantizer turns a Gemm into a MatMul that it then
    # no longer excludes by name.
    quantized_head = options.quantize == "int8" or options.quantize_lm_head
    head = "matmul" if quantized_head else "gemm"  # int4 leaves a Gemm alone: float it stays
    export = {"source": source_digest(*EXPORTER), "opset": 23 if fused else 20, "head": head}
    if options.kv_cache == "in_place":  # the concat form keeps its earlier cache key
        export |= {"kv_cache": "in_place"}
    if options.kv_dtype != "float32":
        export |= {"kv_dtype": options.kv_dtype, "calibration": CALIBRATION}
    steps = [("export", export)]
    if options.optimize:
        steps.append(("optimize", {}))
    if options.quantize != "none":
        quantize = {
            "quantize": options.quantize,
            "per_channel": options.per_channel,
            "quantize_lm_head": options.quantize_lm_head,
            "op_types": ["MatMul", "Gemm"],
        }
        if options.reduce_range:  # absent when off: earlier artifacts keep their keys
            quantize["reduce_range"] = True
        if options.quantize == "int4":
            quantize["accuracy_level"] = 4  # part of the key: a rebuild when it changes
        if options.int8_kernel != "dynamic":  # absent at the defaults: earlier keys hold
            quantize["int8_kernel"] = options.int8_kernel
        if options.block_size != BLOCK_SIZE:
            quantize["block_size"] = options.block_size
        steps.append(("quantize", quantize))

    built_any, build_s, previous, fused, kv_scales = False, 0.0, None, None, None
    key_parts: list = [digest, versions]
    for name, step_options in steps:
        key_parts = [*key_parts, [name, step_options]]  # a step's key covers every step before
        build = functools.partial(_checked, _BUILDERS[name], model_dir, previous, step_options)
        step = cached_artifact(cache_dir, f"onnx-{name}", key_parts, build)
        built_any, build_s = built_any or step.built, build_s + (step.build_s or 0.0)
        previous = step.path / MODEL_FILE
        if (step.path / "fused_ops.json").exists():
            fused = json.loads((step.path / "fused_ops.json").read_text())
        if (step.path / KV_SCALES).exists():
            kv_scales = step.path / KV_SCALES
    kernels = previous.parent / "weight_ops.json"
    weight_ops = json.loads(kernels.read_text()) if kernels.exists() else None
    size = dir_bytes(previous.parent)
    return Artifact(previous, built_any, build_s, size, fused, weight_ops, kv_scales)


def _checked(builder, model_dir: Path, source: Path | None, options: dict, out: Path) -> None:
    """Build, then make ONNX Runtime load the result: an artifact that cannot run fails
    its build (and is never cached) instead of failing every job that would reuse it."""
    import onnxruntime as ort

    builder(model_dir, source, options, out)
    ort.InferenceSession(str(out / MODEL_FILE), providers=["CPUExecutionProvider"])


def _export(model_dir: Path, _source: Path | None, options: dict, out: Path) -> None:
    """Opset 20 decomposes attention into MatMul/Softmax/...; from opset 23 the exporter
    emits ONNX's own Attention op, which ONNX Runtime runs fused. The in-place graph's
    attention is ONNX Runtime's GroupQueryAttention (backends/onnx_graph.py)."""
    import torch

    from whistle_stop.backends.nanogpt import load_gpt
    from whistle_stop.backends.onnx_graph import (
        TRANSLATIONS,
        ConcatGraph,
        InPlaceGraph,
        sample_inputs,
    )

    gpt = load_gpt(model_dir)
    in_place = options.get("kv_cache") == "in_place"
    int8_cache = options.get("kv_dtype") == "int8"
    if in_place:
        scales = _calibrated_kv_scales(gpt, options["calibration"]) if int8_cache else None
        module = InPlaceGraph(gpt, options["head"], scales).eval()
        if scales is not None:  # for the loop, which quantizes a float32 prefill's cache
            np.savez(out / KV_SCALES, k=scales[0].numpy(), v=scales[1].numpy())
    else:
        module = ConcatGraph(gpt, options["head"]).eval()
    cache_dtype = torch.int8 if int8_cache else torch.float32
    args, (input_names, output_names), dynamic_shapes = sample_inputs(gpt, in_place, cache_dtype)
    torch.onnx.export(
        module,
        args,
        str(out / MODEL_FILE),
        dynamo=True,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic_shapes,
        opset_version=options["opset"],
        custom_translation_table=TRANSLATIONS,
        external_data=False,
    )
    (out / "config.json").write_text((model_dir / "config.json").read_text())


def _calibrated_kv_scales(gpt, calibration: dict):
    import random

    from whistle_stop.backends.onnx_graph import kv_scales

    config, first = gpt.config, calibration["seed"]
    rngs = [random.Random(seed) for seed in range(first, first + calibration["prompts"])]
    prompts = [[rng.randrange(config.vocab_size) for _ in range(config.block_size)] for rng in rngs]
    return kv_scales(gpt, prompts)


def _optimize(model_dir: Path, source: Path, _options: dict, out: Path) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    config = ModelConfig.from_dir(model_dir)
    optimized = optimize_model(
        str(source), model_type="gpt2", num_heads=config.n_head, hidden_size=config.n_embd
    )
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    optimized.save_model_to_file(str(out / MODEL_FILE))
    (out / "fused_ops.json").write_text(json.dumps(fused))


def _quantize(model_dir: Path, source: Path, options: dict, out: Path) -> None:
    import onnx

    model = onnx.load(str(source))
    keep_float = [] if options["quantize_lm_head"] else [_lm_head_node(model)]
    if options["quantize"] == "int8" and options.get("int8_kernel", "dynamic") == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(source),
            str(out / MODEL_FILE),
            weight_type=QuantType.QInt8,
            per_channel=options["per_channel"],
            reduce_range=options.get("reduce_range", False),
            nodes_to_exclude=keep_float,
            # weight matmuls only: left to its defaults the quantizer takes ONNX's own
            # Attention op for the contrib one and writes an invalid QAttention
            op_types_to_quantize=list(options["op_types"]),
            extra_options={"MatMulConstBOnly": True},  # weights only; activations stay dynamic
        )
    else:  # MatMulNBits: block-wise weight-only, `block_size` weights share a scale
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        # accuracy_level 4: activations are quantized to int8 on the fly and the weights
        # multiplied in int8 (VNNI); the default computes in float32, far slower than int8
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=8 if options["quantize"] == "int8" else 4,
            block_size=options.get("block_size", BLOCK_SIZE),
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_exclude=keep_float,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(out / MODEL_FILE))
    (out / "weight_ops.json").write_text(json.dumps(weight_ops(out / MODEL_FILE)))


def weight_ops(path: Path) -> dict[str, dict]:
    """What the quantized graph tells ONNX Runtime to run its matmuls with: per op type,
    how many nodes, and the attributes that pick the kernel (MatMulNBits' bits, block_size
    and accuracy_level: 4 multiplies in int8, 0 in float32)."""
    import onnx

    found: dict[str, dict] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type not in ("MatMul", "Gemm", "MatMulInteger", "MatMulNBits"):
            continue
        entry = found.setdefault(node.op_type, {"nodes": 0})
        entry["nodes"] += 1
        for attribute in node.attribute:
            if attribute.name in ("bits", "block_size", "accuracy_level"):
                values = set(entry.get(attribute.name, [])) | {attribute.i}
                entry[attribute.name] = sorted(values)
    return found


def _lm_head_node(model) -> str:
    """The node that produces the logits: the LM head, kept in float unless asked."""
    producers = {output: node for node in model.graph.node for output in node.output}
    name = model.graph.output[0].name
    node = producers[name]
    while node.op_type not in ("MatMul", "Gemm"):  # walk back through reshapes/adds
        node = producers[node.input[0]]
    return node.name


_BUILDERS = {"export": _export, "optimize": _optimize, "quantize": _quantize}
