"""Parity: every backend against transformers float32 on a tiny random GPT-2.

Tolerance for float32 backends: 1e-4 relative to the largest logit. float32 has a
relative precision of about 1.2e-7; summing a few hundred products in another
order (fused kernels, other matmul blocking) moves results by a few 1e-7..1e-6
relative, so 1e-4 leaves two orders of margin while any wrong weight, mask or
position shows up as errors of order 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from whistle_stop.backends import registry
from whistle_stop.worker.prompts import random_prompt

PROMPT_TOKENS, NEW_TOKENS = 12, 10

FLOAT32 = [
    ("nanogpt", {"kv_cache": True}),
    ("nanogpt", {"kv_cache": False}),
    ("onnx", {}),
    ("onnx", {"io_binding": False}),
    ("onnx", {"optimize": True}),
    ("onnx", {"fused_attention": True}),
    ("onnx", {"fused_attention": True, "kv_cache": "in_place"}),
]
INT4_ALL_IN_PLACE = {
    "fused_attention": True,
    "kv_cache": "in_place",
    "quantize": "int4",
    "quantize_lm_head": True,
}
QUANTIZED = [
    ("onnx", {"quantize": "int8"}),
    ("onnx", {"optimize": True, "quantize": "int8"}),
    # 7-bit weights: full-range int8 per channel saturates on CPUs without VNNI
    (
        "onnx",
        {"quantize": "int8", "per_channel": True, "quantize_lm_head": True, "reduce_range": True},
    ),
    ("onnx", {"quantize": "int4"}),
    ("onnx", {"fused_attention": True, "quantize": "int8", "quantize_lm_head": True}),
    ("onnx", {"fused_attention": True, "kv_cache": "in_place", "quantize": "int8"}),
    ("onnx", INT4_ALL_IN_PLACE),
    ("onnx", {**INT4_ALL_IN_PLACE, "prefill_int8": True}),
    ("onnx", {**INT4_ALL_IN_PLACE, "block_size": 128}),  # K=64 here: one padded block
    ("onnx", {**INT4_ALL_IN_PLACE, "prefill_int8": True, "kv_dtype": "int8"}),
    (
        "onnx",
        {
            "fused_attention": True,
            "kv_cache": "in_place",
            "quantize": "int8",
            "int8_kernel": "nbits",
            "block_size": 16,
        },
    ),
    ("torch-int8", {}),
    ("hf", {"dtype": "bfloat16"}),
    ("nanogpt", {"dtype": "bfloat16"}),
]


def build(name: str, options: dict, model_dir: Path, cache_dir: Path):
    return registry.create(name, model_dir, options, 1, cache_dir)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def reference(tiny_model, artifacts):
    hf = build("hf", {}, tiny_model, artifacts)
    prompt = random_prompt(0, PROMPT_TOKENS, 256)
    tokens = hf.generate(prompt, NEW_TOKENS).tokens
    return prompt, tokens, hf.teacher_forced_logits(prompt, tokens)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), FLOAT32, ids=str)
def test_float32_backends_match_hf(name, options, tiny_model, artifacts, reference):
    prompt, ref_tokens, ref_logits = reference
    backend = build(name, options, tiny_model, artifacts)
    logits = backend.teacher_forced_logits(prompt, ref_tokens)
    scale = np.abs(ref_logits).max()
    np.testing.assert_allclose(logits[0], ref_logits[0], rtol=0, atol=1e-4 * scale)  # prefill
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4 * scale)  # every step
    generation = backend.generate(prompt, NEW_TOKENS)
    assert generation.tokens == ref_tokens
    assert len(generation.token_times) == NEW_TOKENS
    assert generation.token_times == sorted(generation.token_times)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), QUANTIZED, ids=str)
def test_reduced_precision_backends_stay_close(name, options, tiny_model, artifacts, reference):
    """Not equal, but close: a broken backend must not look fast."""
    prompt, ref_tokens, ref_logits = reference
    backend = build(name, options, tiny_model, artifacts)
    logits = backend.teacher_forced_logits(prompt, ref_tokens)
    error = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
    # 4-bit LM head: 16 levels per block for the layer that decides the token (0.12 here)
    bound = 0.25 if options.get("quantize") == "int4" and options.get("quantize_lm_head") else 0.1
    assert 0 < error < bound, f"relative logit error {error}"
    assert len(backend.generate(prompt, NEW_TOKENS).tokens) == NEW_TOKENS


@pytest.mark.slow
def test_hf_compile_matches_hf_and_compiles_outside_the_timed_region(
    tiny_model, artifacts, reference
):
    prompt, ref_tokens, ref_logits = reference
    backend = build("hf-compile", {}, tiny_model, artifacts)
    assert backend.load_report.compile_s > 0
    logits = backend.teacher_forced_logits(prompt, ref_tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4 * np.abs(ref_logits).max())
    assert backend.generate(prompt, NEW_TOKENS).tokens == ref_tokens


@pytest.mark.parametrize(("lm_head", "expected"), [(False, 2 * 4), (True, 2 * 4 + 1)])
def test_torch_int8_really_quantizes_the_linear_layers(tiny_model, artifacts, lm_head, expected):
    backend = build("torch-int8", {"quantize_lm_head": lm_head}, tiny_model, artifacts)
    assert backend.load_report.extra["quantized_linears"] == expected
    import torch

    modules = list(backend.model.modules())
    quantized = [m for m in modules if "quantized.dynamic" in type(m).__module__]
    still_float = [m for m in modules if type(m) is torch.nn.Linear]
    assert len(quantized) == expected
    assert len(still_float) == (0 if lm_head else 1)  # only the LM head may stay float


def test_hf_conv1d_is_why_torch_int8_uses_our_module(tiny_model):
    """transformers' GPT-2 has no nn.Linear to quantize apart from the LM head."""
    import torch

    from whistle_stop.backends.weights import load_hf_model

    linears = [m for m in load_hf_model(tiny_model).modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1


@pytest.mark.slow
def test_onnx_artifacts_are_cached_and_keyed_by_options(tiny_model, tmp_path):
    first = build("onnx", {"quantize": "int8"}, tiny_model, tmp_path)
    assert first.load_report.artifact_built is True
    assert first.load_report.artifact_build_s > 0 and first.load_report.artifact_bytes > 0
    again = build("onnx", {"quantize": "int8"}, tiny_model, tmp_path)
    assert again.load_report.artifact_built is False
    other = build("onnx", {"quantize": "int8", "per_channel": True}, tiny_model, tmp_path)
    assert other.load_report.artifact_built is True  # new quantize step, export reused
    names = sorted(p.name.split("-")[1] for p in (tmp_path / "artifacts").iterdir() if p.is_dir())
    assert names == ["export", "quantize", "quantize"]
    assert not list((tmp_path / "artifacts").glob(".*tmp*"))


@pytest.mark.slow
def test_optimizer_fusions_are_recorded(tiny_model, artifacts):
    backend = build("onnx", {"optimize": True}, tiny_model, artifacts)
    fused = backend.load_report.extra["fused_ops"]
    assert fused.get("SkipLayerNormalization", 0) > 0 or fused.get("LayerNormalization", 0) > 0


def test_a_missing_dependency_names_the_package_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "whistle_stop.backends.onnx", raising=False)
    with pytest.raises(registry.MissingDependencyError, match="pip install onnxruntime"):
        registry.load_class("onnx")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("settings", "nbits"),
    [
        ({"quantize": "int8"}, None),
        ({"quantize": "int8", "fused_attention": True}, None),
        ({"quantize": "int4", "fused_attention": True}, (4, 32)),
        ({"quantize": "int4", "fused_attention": True, "block_size": 128}, (4, 128)),
        ({"quantize": "int8", "int8_kernel": "nbits", "block_size": 64}, (8, 64)),
    ],
    ids=str,
)
def test_quantize_lm_head_really_quantizes_one_more_matmul(tiny_model, artifacts, settings, nbits):
    import onnx

    from whistle_stop.backends.onnx_export import onnx_artifact
    from whistle_stop.backends.weights import weights_digest

    def quantized_matmuls(lm_head: bool) -> int:
        options = registry.entry("onnx").options.model_validate(
            {**settings, "quantize_lm_head": lm_head}
        )
        artifact = onnx_artifact(
            tiny_model, options, artifacts, weights_digest(tiny_model, artifacts)
        )
        ops = [node.op_type for node in onnx.load(str(artifact.path)).graph.node]
        # what the result records of the kernels ORT is told to use agrees with the graph
        recorded = artifact.weight_ops
        assert {op: entry["nodes"] for op, entry in recorded.items()} == {
            op: ops.count(op) for op in recorded
        }
        if nbits is not None:
            assert recorded["MatMulNBits"]["accuracy_level"] == [4]
            assert (recorded["MatMulNBits"]["bits"], recorded["MatMulNBits"]["block_size"]) == (
                [nbits[0]],
                [nbits[1]],
            )
        else:
            assert "MatMulNBits" not in recorded
        return sum(op in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits") for op in ops)

    assert quantized_matmuls(True) == quantized_matmuls(False) + 1 == 2 * 4 + 1


@pytest.mark.slow
def test_the_onnx_lm_head_reads_a_constant_weight(tiny_model, artifacts):
    """No per-step work on the 154 MB head weight: its MatMul reads an initializer directly."""
    import onnx

    from whistle_stop.backends.onnx_export import onnx_artifact
    from whistle_stop.backends.weights import weights_digest

    options = registry.entry("onnx").options.model_validate({})
    graph = onnx.load(
        str(
            onnx_artifact(
                tiny_model, options, artifacts, weights_digest(tiny_model, artifacts)
            ).path
        )
    ).graph
    constants = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    node = producers[graph.output[0].name]
    while node.op_type not in ("MatMul", "Gemm"):
        node = producers[node.input[0]]
    assert node.input[1] in constants


@pytest.mark.slow
def test_the_in_place_cache_is_written_in_place_and_grows_when_short(
    tiny_model, artifacts, reference
):
    """ORT writes each token's keys and values into our own buffers (no present copies);
    a sequence longer than what was reserved grows the buffers and keeps what they hold."""
    prompt, ref_tokens, ref_logits = reference
    backend = build(
        "onnx", {"fused_attention": True, "kv_cache": "in_place"}, tiny_model, artifacts
    )
    cache = backend.in_place
    backend.reserve(len(prompt) + 2)
    before = [buffer.copy() for buffer in cache.buffers]
    backend.prefill(prompt)
    for buffer, old in zip(cache.buffers, before, strict=True):
        assert not np.array_equal(buffer[:, :, : len(prompt)], old[:, :, : len(prompt)])
        assert not buffer[:, :, len(prompt) :].any()  # not yet written
    rows = [backend.step(token) for token in ref_tokens[:-1]]  # past the reserved length
    assert cache.capacity >= len(prompt) + len(ref_tokens) - 1
    scale = np.abs(ref_logits).max()
    np.testing.assert_allclose(np.stack(rows), ref_logits[1:], rtol=0, atol=1e-4 * scale)


@pytest.mark.slow
def test_in_place_attention_is_one_group_query_attention_per_layer(
    tiny_model, artifacts, reference
):
    """The in-place graph hands cache and attention to ORT's GroupQueryAttention, which
    attends over the tokens written only: spare capacity changes nothing in the logits."""
    import onnx

    prompt, ref_tokens, _ = reference
    backend = build(
        "onnx", {"fused_attention": True, "kv_cache": "in_place"}, tiny_model, artifacts
    )
    model = onnx.load(backend.model_path)
    ops = [node.op_type for node in model.graph.node]
    layers = json.loads((tiny_model / "config.json").read_text())["n_layer"]
    assert ops.count("GroupQueryAttention") == layers
    assert "Attention" not in ops and "Softmax" not in ops
    tight = backend.teacher_forced_logits(prompt, ref_tokens)
    backend.reserve(backend.in_place.block_size)  # the longest the model allows
    roomy = np.stack([backend.prefill(prompt), *(backend.step(t) for t in ref_tokens[:-1])])
    assert backend.in_place.capacity == backend.in_place.block_size > len(prompt) + len(ref_tokens)
    np.testing.assert_allclose(roomy, tight, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_prefill_int8_runs_the_prompt_on_int8_and_decodes_on_int4(tiny_model, artifacts, reference):
    """The first logits (and the prompt's cache) come from the int8 copy, the steps after
    it from the int4 model reading that cache."""
    prompt, ref_tokens, _ = reference
    hybrid = build("onnx", {**INT4_ALL_IN_PLACE, "prefill_int8": True}, tiny_model, artifacts)
    int8 = build("onnx", {**INT4_ALL_IN_PLACE, "quantize": "int8"}, tiny_model, artifacts)
    int4 = build("onnx", INT4_ALL_IN_PLACE, tiny_model, artifacts)
    rows = {
        name: backend.teacher_forced_logits(prompt, ref_tokens)
        for name, backend in [("hybrid", hybrid), ("int8", int8), ("int4", int4)]
    }
    np.testing.assert_array_equal(rows["hybrid"][0], rows["int8"][0])
    assert not np.allclose(rows["hybrid"][0], rows["int4"][0])
    assert not np.allclose(rows["hybrid"][1:], rows["int8"][1:])  # decode is not int8's
    assert hybrid.load_report.extra["prefill_model"] == "int8"


@pytest.mark.slow
def test_an_int8_cache_is_what_onnx_runtime_reads_and_writes(tiny_model, artifacts, reference):
    """With `kv_dtype: int8` each layer's GroupQueryAttention keeps int8 keys and values
    (ONNX Runtime's quantized cache, a float32 step per channel). The prompt runs with a
    float32 cache (same first logits as the float path) that the loop quantizes; decode
    steps write theirs in ONNX Runtime. Either way the buffers hold what PyTorch's reference
    of the graph holds, within one step of rounding, and the logits stay close to float32's."""
    import onnx
    import torch

    from whistle_stop.backends.nanogpt import load_gpt
    from whistle_stop.backends.onnx_export import CALIBRATION, _calibrated_kv_scales
    from whistle_stop.backends.onnx_graph import InPlaceGraph

    prompt, ref_tokens, ref_logits = reference
    float_cache = {"fused_attention": True, "kv_cache": "in_place"}
    backend = build("onnx", {**float_cache, "kv_dtype": "int8"}, tiny_model, artifacts)
    attention = [
        n for n in onnx.load(backend.model_path).graph.node if n.op_type == "GroupQueryAttention"
    ]
    assert attention and all(
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}["kv_cache_bit_width"] == 8
        for n in attention
    )
    assert backend.load_report.extra["prefill_cache"] == "float32"
    backend.reserve(len(prompt) + 2)
    first = backend.prefill(prompt)
    backend.step(ref_tokens[0])  # written by ONNX Runtime's int8 kernel
    ours = backend.in_place.buffers
    assert all(buffer.dtype == np.int8 for buffer in ours)
    np.testing.assert_array_equal(
        first, build("onnx", float_cache, tiny_model, artifacts).prefill(prompt)
    )

    gpt = load_gpt(tiny_model)
    graph = InPlaceGraph(gpt, "gemm", _calibrated_kv_scales(gpt, CALIBRATION)).eval()
    past = [torch.zeros(buffer.shape, dtype=torch.int8) for buffer in ours]
    with torch.no_grad():
        _, *past = graph(torch.tensor([prompt]), torch.tensor([0]), past)
        _, *past = graph(torch.tensor([ref_tokens[:1]]), torch.tensor([len(prompt)]), past)
    for mine, theirs in zip(ours, past, strict=True):
        difference = np.abs(mine.astype(int) - theirs.numpy().astype(int))
        assert difference.max() <= 1 and mine[:, :, len(prompt)].any()

    logits = backend.teacher_forced_logits(prompt, ref_tokens)
    error = np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()
    assert 0 < error < 0.05, f"relative logit error {error}"


def test_the_in_place_cache_asks_for_its_prerequisites():
    from pydantic import ValidationError

    options = registry.entry("onnx").options
    with pytest.raises(ValidationError, match="add fused_attention: true"):
        options.model_validate({"kv_cache": "in_place"})
    with pytest.raises(ValidationError, match="needs quantize: int4 and kv_cache: in_place"):
        options.model_validate({"quantize": "int8", "prefill_int8": True})
    with pytest.raises(ValidationError, match="needs io_binding: true"):
        options.model_validate(
            {"kv_cache": "in_place", "fused_attention": True, "io_binding": False}
        )
    with pytest.raises(ValidationError, match="add quantize: int8"):
        options.model_validate({"int8_kernel": "nbits"})
    with pytest.raises(ValidationError, match="kv_dtype is the precision of the in-place cache"):
        options.model_validate({"fused_attention": True, "kv_dtype": "int8"})
    with pytest.raises(ValidationError, match="block_size is the scale block"):
        options.model_validate({"quantize": "int8", "block_size": 128})
    with pytest.raises(ValidationError, match="block_size"):
        options.model_validate({"quantize": "int4", "block_size": 48})


@pytest.mark.parametrize(
    ("options", "bytes_per_weight"),
    [
        ({}, 4.0),
        ({"quantize": "int8"}, 1.0),
        ({"quantize": "int4"}, 0.625),
        ({"quantize": "int4", "block_size": 128}, 0.53125),
        ({"quantize": "int8", "int8_kernel": "nbits", "block_size": 64}, 1.0625),
    ],
)
def test_the_roofline_counts_each_block_scale(options, bytes_per_weight):
    assert registry.entry("onnx").options(**options).weight_bytes() == bytes_per_weight
