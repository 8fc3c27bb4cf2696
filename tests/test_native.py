"""The native engine (native/gpt2.cc): its quantization, its matmul, and the whole model
against a float32 model that carries the very weights the engine quantized.

Comparing with the dequantized weights separates the two errors: what 4 or 8 bits cost
(the farm's fidelity measures that) and what the engine adds, which must be only the
int8 rounding of its activations. A wrong nibble order, scale, bias, mask or cache
position gives errors of order one instead.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from whistle_stop.backends import registry
from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.nanogpt import load_gpt
from whistle_stop.bench.harness import save_tiny_gpt2
from whistle_stop.native.quantize import dequantize_rows, grouped, quantize_rows

FLOATS = ctypes.POINTER(ctypes.c_float)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the module: the engine compiles once (seconds), not per test."""
    return tmp_path_factory.mktemp("native-cache")


@pytest.fixture(scope="module")
def engine(shared_cache):
    from whistle_stop.native.build import load

    lib, _ = load(shared_cache)
    return lib


@pytest.fixture(scope="module")
def model_64(tmp_path_factory):
    """The engine reads inputs 64 at a time: a tiny GPT-2 with n_embd 64."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("gpt2-64"), n_embd=64, n_head=4, vocab_size=300)


@pytest.fixture(scope="module")
def model_head_64(tmp_path_factory):
    """Heads of 64 (GPT-2's size): the attention path that scores eight keys at a time.
    Weights 5x GPT-2's initial scale, so attention is peaked: near-uniform attention (the
    default init) hid scores given to the wrong positions."""
    return save_tiny_gpt2(
        tmp_path_factory.mktemp("gpt2-h64"),
        n_embd=128,
        n_head=2,
        vocab_size=300,
        initializer_range=0.1,
    )


def test_eight_bit_rows_round_to_nearest_and_keep_their_largest_weight():
    weight = np.random.default_rng(0).standard_normal((5, 128)).astype(np.float32)
    data, scales = quantize_rows(weight, 8, 32)
    back = dequantize_rows(data, scales, 8, 32).reshape(5, 4, 32)
    blocks = weight.reshape(5, 4, 32)
    assert (np.abs(back - blocks) <= np.abs(scales)[..., None] / 2 + 1e-6).all()
    largest = np.abs(blocks).argmax(2)[..., None]
    np.testing.assert_allclose(
        np.take_along_axis(back, largest, 2), np.take_along_axis(blocks, largest, 2), rtol=1e-6
    )
    assert data.dtype == np.int8 and data.shape == (5, 128)


def test_four_bit_scales_err_less_than_q4_0s_rule_block_by_block():
    weight = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    data, scales = quantize_rows(weight, 4, 128)
    assert data.dtype == np.uint8 and data.shape == (64, 128)
    blocks = weight.reshape(64, 2, 128)
    error = ((dequantize_rows(data, scales, 4, 128).reshape(64, 2, 128) - blocks) ** 2).sum(2)
    # q4_0: the block's largest-magnitude weight / -8
    q4_0 = np.take_along_axis(blocks, np.abs(blocks).argmax(2)[..., None], 2) / -8
    baseline = ((np.clip(np.rint(blocks / q4_0), -8, 7) * q4_0 - blocks) ** 2).sum(2)
    assert (error <= baseline * (1 + 1e-5)).all()
    assert error.sum() < 0.95 * baseline.sum(), error.sum() / baseline.sum()


def test_four_bit_nibbles_hold_inputs_j_and_j_plus_32():
    weight = np.zeros((1, 64), np.float32)
    weight[0, 32] = -1.0  # the largest: stored as -8, i.e. 0 in the high nibble of byte 0
    weight[0, 0] = 0.5  # 0.5 / (1/8) = 4 -> 12 in the low nibble of byte 0
    data, _ = quantize_rows(weight, 4, 64)
    assert data[0, 0] == 12 and data[0, 1] == 0x88  # byte 1: inputs 1 and 33, both zero (8)


@pytest.mark.parametrize("m", [1, 101])
# spin 0: every wait sleeps at once; 3 threads on 2 CPUs: one is always descheduled
@pytest.mark.parametrize(("threads", "spin_us"), [(1, 200), (2, 200), (3, 0)])
@pytest.mark.parametrize(
    ("bits", "block"), [(4, 32), (4, 64), (4, 128), (8, 32), (8, 64), (8, 128), (32, 32)]
)
def test_the_matmul_is_the_dequantized_product(engine, bits, block, threads, spin_us, m):
    rng = np.random.default_rng(bits + block)
    # 202 rows: a padded last group, thread shares of uneven size; 101 activation rows:
    # the prompt's tiles (6 or 2 tokens) across a block's edge (96 or 32), and some left
    # over; 1 row: a decode step, which picks its kernel by the block
    n, k = 202, 256
    weight = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    data, scales = quantize_rows(weight, bits, block)
    in_groups, group_scales = grouped(data, scales)
    y = np.zeros((m, n), np.float32)
    pool = engine.ws_pool_create(threads, spin_us)
    engine.ws_matmul(
        pool,
        in_groups.ctypes.data,
        group_scales.ctypes.data_as(FLOATS),
        bias.ctypes.data_as(FLOATS),
        n,
        k,
        bits,
        block,
        x.ctypes.data_as(FLOATS),
        m,
        y.ctypes.data_as(FLOATS),
    )
    engine.ws_pool_destroy(pool)
    expected = x @ dequantize_rows(data, scales, bits, block).T + bias
    # only the activations' int8 rounding: ~0.5% of the largest output (float32: none)
    error = np.abs(y - expected).max() / np.abs(expected).max()
    assert error < (1e-5 if bits == 32 else 0.02), error


def _dequantized_reference(
    model_dir, bits: int, block: int, head_bits: int | None = None, matrices: dict | None = None
):
    """nanoGPT in float32 with every weight the engine quantizes replaced by what its
    quantized form stands for (the embedding lookup stays float, as in the engine);
    `matrices`: bits of some layer matrices by name (attn.c_attn, mlp.c_proj)."""
    gpt = load_gpt(model_dir)
    with torch.no_grad():
        for name, parameter in gpt.named_parameters():
            if parameter.dim() == 2 and "wpe" not in name and "wte" not in name:
                own = next((b for m, b in (matrices or {}).items() if f".{m}." in name), bits)
                data, scales = quantize_rows(parameter.numpy(), own, block)
                parameter.copy_(torch.from_numpy(dequantize_rows(data, scales, own, block)))
        head = gpt.transformer.wte.weight.detach().numpy()
        head_bits = head_bits or bits
        data, scales = quantize_rows(head, head_bits, block)
        gpt.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)  # untied
        restored = dequantize_rows(data, scales, head_bits, block)
        gpt.lm_head.weight.copy_(torch.from_numpy(restored))
    return gpt


@pytest.mark.parametrize(
    ("bits", "block", "kv", "head", "head_bits"),
    [
        (4, 32, "float16", 16, None),
        (8, 32, "float16", 16, None),
        (4, 64, "int8", 16, None),
        (8, 128, "float16", 64, None),
        (4, 128, "int8", 64, None),
        (32, 32, "float16", 64, None),
        (4, 32, "float16", 16, 8),  # an 8-bit head beside 4-bit layers
        (4, 128, "int8", 64, 8),
        (8, 64, "float16", 16, 4),
        (4, 32, "float16", 16, {"qkv_bits": 8, "down_bits": 8}),  # q4_K_M's idea: a mix
        (8, 64, "float16", 64, {"down_bits": 4}),
    ],
)
def test_the_engine_computes_gpt2_on_its_quantized_weights(
    request, shared_cache, bits, block, kv, head, head_bits
):
    model = request.getfixturevalue("model_64" if head == 16 else "model_head_64")
    mixed = head_bits if isinstance(head_bits, dict) else {}
    head_bits = None if mixed else head_bits
    matrices = {"attn.c_attn": mixed.get("qkv_bits"), "mlp.c_proj": mixed.get("down_bits")}
    matrices = {name: b for name, b in matrices.items() if b}
    reference = registry.create("nanogpt", model, {}, 1, shared_cache)
    reference.model = _dequantized_reference(model, bits, block, head_bits, matrices)
    options = {"bits": bits, "block_size": block, "kv_dtype": kv, "head_bits": head_bits}
    options |= mixed
    native = registry.create("native", model, options, 2, shared_cache)
    prompt = [int(t) for t in np.random.default_rng(3).integers(0, 300, 20)]
    tokens = reference.generate(prompt, 12).tokens
    expected = reference.teacher_forced_logits(prompt, tokens)
    logits = native.teacher_forced_logits(prompt, tokens)
    error = np.abs(logits - expected).max() / np.abs(expected).max()
    # activation rounding only (float32: the half-precision cache's); a wrong position or
    # mask: ~1
    assert error < (0.005 if bits == 32 else 0.05), error
    assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.9
    per_matrix = {name: matrices.get(name, bits) for name in ("attn.c_attn", "mlp.c_proj")}
    layer = 3 * per_matrix["attn.c_attn"] + bits + 4 * bits + 4 * per_matrix["mlp.c_proj"]
    expected_bytes = 4 if bits == 32 else layer / 12 / 8 + 4 / block
    assert native.load_report.matmul_bytes == pytest.approx(expected_bytes)
    head_bytes = 4 if bits == 32 else (head_bits or bits) / 8 + 4 / block
    assert native.load_report.lm_head_bytes == head_bytes
    config = ModelConfig.from_dir(model)
    head_width = config.n_embd // config.n_head
    kv_bytes = 1 + 4 / head_width if kv == "int8" else 2  # a scale a head and position
    assert native.load_report.kv_bytes == pytest.approx(kv_bytes)


@pytest.mark.parametrize("options", [{"bits": 8}, {"bits": 4, "block_size": 64}])
def test_threads_share_rows_not_sums_so_any_split_gives_the_same_logits(
    model_64, shared_cache, options
):
    """Rows are taken chunk by chunk as threads get to them, but each output is one
    thread's dot product: 1 thread, 2, 3 on 2 CPUs sleeping at every wait, or 3 with one
    benched (as when a neighbour holds its CPU) give the same bits."""
    tokens = [int(t) for t in np.random.default_rng(5).integers(0, 300, 24)]
    runs = []
    for threads, spin_us, benched in ((1, 200, 0), (2, 200, 0), (3, 0, 0), (3, 200, 2)):
        native = registry.create(
            "native", model_64, options | {"spin_us": spin_us}, threads, shared_cache
        )
        if benched:
            native.lib.ws_pool_bench(native.pool, benched, 10)  # thread 2: the next 10 runs
        runs.append(native.teacher_forced_logits(tokens[:8], tokens[8:]))
        if benched:
            assert native.lib.ws_pool_benched_runs(native.pool) >= 10
    for run in runs[1:]:
        np.testing.assert_array_equal(runs[0], run)


@pytest.mark.parametrize("kv", ["float16", "int8"])
def test_a_prompt_in_one_call_equals_the_same_tokens_one_at_a_time(model_64, shared_cache, kv):
    native = registry.create("native", model_64, {"bits": 8, "kv_dtype": kv}, 2, shared_cache)
    tokens = [int(t) for t in np.random.default_rng(4).integers(0, 300, 30)]
    native.reserve(len(tokens))
    whole = native.prefill(tokens).copy()
    native.prefill(tokens[:1])
    for token in tokens[1:]:
        stepped = native.step(token)
    np.testing.assert_allclose(stepped, whole, rtol=0, atol=1e-4 * np.abs(whole).max())
    generation = native.generate(tokens[:5], 8)
    assert len(generation.tokens) == 8 and generation.token_times == sorted(generation.token_times)


def test_the_engine_refuses_more_positions_than_the_model_has(model_64, shared_cache):
    native = registry.create("native", model_64, {"bits": 8}, 1, shared_cache)
    with pytest.raises(ValueError, match="exceed the model's 128 positions"):
        native.generate([1] * 120, 10)


def test_a_block_size_for_float32_weights_is_refused():
    from pydantic import ValidationError

    options = registry.entry("native").options
    with pytest.raises(ValidationError, match="bits: 32 keeps float32 weights"):
        options.model_validate({"bits": 32, "block_size": 128})
    assert options.model_validate({"bits": 32}).weight_bytes() == 4.0


def test_a_model_the_engine_cannot_run_is_refused_with_the_reason(tmp_path):
    narrow = save_tiny_gpt2(tmp_path / "narrow")  # n_embd 32
    with pytest.raises(ValueError, match="multiple of 64"):
        registry.create("native", narrow, {}, 1, tmp_path / "cache")


def test_a_block_wider_than_the_model_divides_falls_back_to_one_that_does(tmp_path, shared_cache):
    """GPT-2 XL's 1600 inputs are 25 chunks of 64: `block_size: 128` runs at 64 there, as
    this 192-wide model does, bit for bit the path that asked for 64."""
    model = save_tiny_gpt2(tmp_path / "w192", n_embd=192, n_head=4, vocab_size=300)
    tokens = [int(t) for t in np.random.default_rng(6).integers(0, 300, 16)]
    runs = []
    for block in (128, 64):
        native = registry.create("native", model, {"bits": 4, "block_size": block}, 2, shared_cache)
        assert native.load_report.extra["block_size"] == 64
        assert native.load_report.matmul_bytes == pytest.approx(0.5 + 4 / 64)
        runs.append(native.teacher_forced_logits(tokens[:8], tokens[8:]))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("kv", ["float16", "int8"])
def test_a_cache_that_grows_keeps_what_it_held(model_64, shared_cache, kv):
    options = {"bits": 4, "kv_dtype": kv}
    tokens = [int(t) for t in np.random.default_rng(5).integers(0, 300, 24)]
    sized = registry.create("native", model_64, options, 2, shared_cache)
    sized.reserve(len(tokens))
    expected = [sized.prefill(tokens[:8]).copy()] + [sized.step(t).copy() for t in tokens[8:]]
    growing = registry.create("native", model_64, options, 2, shared_cache)
    growing.reserve(8)  # every step past the prompt grows the cache by one position
    got = [growing.prefill(tokens[:8]).copy()] + [growing.step(t).copy() for t in tokens[8:]]
    assert growing.capacity == len(tokens)
    np.testing.assert_array_equal(np.stack(got), np.stack(expected))


def test_zen4_on_builds_without_software_prefetch_and_either_build_computes_the_same(
    shared_cache,
):
    from whistle_stop.native.build import load, vendor_flags

    zen4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f\n"
    assert vendor_flags(zen4) == ["-DWS_PREFETCH=0"]
    assert vendor_flags(zen4.replace(" avx512f", "")) == []  # Zen 3: the prefetch pays
    assert vendor_flags(zen4.replace("AuthenticAMD", "GenuineIntel")) == []
    assert vendor_flags("") == []
    # extra flags are a build of their own, loaded beside the others (native-profile's
    # comparison of builds): the same product with and without the prefetch
    rng = np.random.default_rng(3)
    n, k, block = 202, 256, 128
    data, scales = grouped(*quantize_rows(rng.standard_normal((n, k), np.float32), 8, block))
    x = rng.standard_normal((1, k)).astype(np.float32)
    outputs, paths = [], set()
    for prefetch in (0, 4096):
        lib, built = load(shared_cache, cflags=(f"-DWS_PREFETCH={prefetch}",))
        pool = lib.ws_pool_create(2, 200)
        y = np.zeros((1, n), np.float32)
        args = (data.ctypes.data, scales.ctypes.data_as(FLOATS), None, n, k, 8, block)
        lib.ws_matmul(pool, *args, x.ctypes.data_as(FLOATS), 1, y.ctypes.data_as(FLOATS))
        lib.ws_pool_destroy(pool)
        outputs.append(y)
        paths.add(built["path"])
    assert len(paths) == 2
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert np.abs(outputs[0]).max() > 0
