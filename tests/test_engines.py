"""The engines a user would pick instead, as farm backends: real conversions, real runs."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from whistle_stop.backends import registry
from whistle_stop.backends.registry import BackendEntry
from whistle_stop.contract.jobspec import JobSpec
from whistle_stop.worker.runner import run_job


def spec(model, backend: str, generation: int = 6, **options) -> dict:
    return JobSpec(
        model=str(model),
        backend=backend,
        label=backend,
        options=tuple(sorted(options.items())),
        context=8,
        generation=generation,
        threads=1,
        warmups=1,
        repeats=2,
        min_duration_s=0,
        max_repeats=2,
        noise_threshold=0.05,
        fidelity_tokens=4,
        eval_text=None,
        eval_tokens=16,
        rerun_noisy=False,
        prompt_text=None,
        tokenizer="fast",
        seed=0,
        fidelity_prompts=2,
        bandwidth="host",
    ).to_dict()


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    missing = BackendEntry(
        "whistle_stop_no_such_engine:Engine",
        registry.opts.BackendOptions,
        "an engine",
        extra="no-such-engine",
    )
    monkeypatch.setitem(registry.BUILTIN, "phantom", missing)
    with pytest.raises(registry.MissingDependencyError) as caught:
        registry.check_extra("phantom")
    message = str(caught.value)
    assert "\n" not in message and "pip install -e '.[no-such-engine]'" in message
    registry.check_extra("hf")  # a built-in path is not imported, let alone refused


def test_the_embedded_pool_refuses_an_engine_it_lacks_before_writing(monkeypatch, tmp_path):
    from tests.test_submit import farm, write_sweep

    missing = BackendEntry(
        "whistle_stop_no_such_engine:Engine",
        registry.opts.BackendOptions,
        "an engine",
        extra="no-such-engine",
    )
    monkeypatch.setitem(registry.BUILTIN, "phantom", missing)
    grid = write_sweep(tmp_path / "e.yaml", "backends: [hf, phantom]\n")
    db = tmp_path / "farm.db"
    result = farm("submit", "--grid", str(grid), "--db", str(db))
    assert result.exit_code == 2 and not db.exists()
    [line] = result.output.strip().splitlines()
    assert "backend 'phantom' needs the 'no-such-engine' extra" in line


@pytest.mark.slow
@pytest.mark.parametrize("compute_type", ["float32", "int8"])
def test_ctranslate2_is_a_farm_backend(tiny_model, tmp_path, compute_type):
    pytest.importorskip("ctranslate2", reason="the ctranslate2 extra is not installed")
    job = spec(tiny_model, "ctranslate2", compute_type=compute_type)
    first = run_job(job, cache_dir=tmp_path, worker_name="t")
    assert first.status == "done", first.error
    m = first.metrics
    assert m.artifact_built is True and m.artifact_bytes > 0 and m.artifact_build_s > 0
    assert len(m.tokens) == 6 and m.decode_tokens_per_s > 0
    assert m.fidelity_positions == 8 and m.kl_max is not None
    if compute_type == "float32":  # the same weights in float32: the reference's tokens
        assert m.top1_agreement == 1.0 and m.mean_kl < 1e-6
    assert m.load_extra["compute_type"] == compute_type
    assert m.weight_bytes_per_token > 0 and m.roofline_fraction > 0
    again = run_job(job, cache_dir=tmp_path, worker_name="t")
    assert again.metrics.artifact_built is False  # converted once, then reused


def test_the_engine_extras_keep_the_versions_the_rest_runs_with():
    """No extra may bring its own torch or transformers: the farm's figures would silently
    come from other versions. Each extra's requirements are read from our own metadata."""
    requires = metadata.requires("whistle-stop") or []
    for line in requires:
        if "extra ==" not in line or 'extra == "dev"' in line:
            continue
        name = line.split(";")[0].strip().lower()
        assert not name.startswith(("torch", "transformers", "optimum")), line


PROMPT = [5, 9, 1, 3, 7, 11]


def transformers_reference(model, cache_dir):
    """transformers float32 on PROMPT: the backend, the prompt, 12 greedy tokens, the
    teacher-forced logits along them, and their largest magnitude (tolerances scale by it)."""
    hf = registry.create("hf", model, {"dtype": "float32"}, 1, cache_dir)
    tokens = hf.generate(PROMPT, 12).tokens
    logits = hf.teacher_forced_logits(PROMPT, tokens)
    return hf, PROMPT, tokens, logits, np.abs(logits).max()


@pytest.mark.slow
def test_llama_cpp_runs_our_checkpoint_as_transformers_does(tiny_model, tmp_path):
    """The GGUF written from our weights computes what transformers computes, and q8_0 is
    close but not identical: what makes llama.cpp a fair entry in the grid."""
    pytest.importorskip("llama_cpp", reason="the llama-cpp extra is not installed")
    from whistle_stop.backends import registry as backends

    hf, prompt, ref_tokens, ref_logits, scale = transformers_reference(tiny_model, tmp_path)

    f32 = backends.create("llama-cpp", tiny_model, {"quant": "f32"}, 1, tmp_path)
    generation = f32.generate(prompt, 12)
    assert generation.tokens == ref_tokens and len(generation.token_times) == 12
    logits = f32.teacher_forced_logits(prompt, ref_tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4 * scale)
    assert f32.load_report.artifact_built and "AVX" in f32.load_report.extra["system_info"]

    q8_0 = backends.create("llama-cpp", tiny_model, {"quant": "q8_0"}, 1, tmp_path)
    assert q8_0.load_report.artifact_bytes < f32.load_report.artifact_bytes / 2
    error = np.abs(q8_0.teacher_forced_logits(prompt, ref_tokens) - ref_logits).max() / scale
    assert 0 < error < 0.05  # quantized: close, and not bit-identical


@pytest.mark.slow
def test_a_crashing_engine_is_one_failed_job_and_the_sweep_goes_on(tmp_path, tiny_model):
    """Every job is its own process: an engine that dies (llama.cpp's SIGILL on some
    AMX VMs) fails its job with the signal and its last words, and the next job runs."""
    from tests.test_submit import farm, write_sweep

    grid = write_sweep(
        tmp_path / "crash.yaml",
        f"model: {tiny_model}\nbackends:\n"
        "  - {name: fault, mode: crash}\n  - {name: fault, mode: ok}\n"
        "context_sizes: [8]\ngeneration_lengths: [4]\nthreads: [1]\n"
        "bandwidth: host\n",
    )
    db = tmp_path / "farm.db"
    result = farm("submit", "--grid", str(grid), "--db", str(db), "--cache-dir", str(tmp_path))
    assert result.exit_code == 3
    assert "died during the job (killed by SIGKILL)" in result.output
    import sqlite3

    # the stored reason begins with what the job wrote to stderr just before it died
    [(error,)] = sqlite3.connect(db).execute("select error from jobs where status = 'failed'")
    assert error.startswith("stderr: fault backend: illegal instruction")
    assert "1 done, 1 failed" in result.output


@pytest.mark.slow
def test_openvino_runs_our_checkpoint_as_transformers_does(tiny_model, tmp_path):
    """The stateful model converted from our module computes what transformers computes,
    through GenAI's C++ loop and through ours; int8 weights are close, not identical."""
    pytest.importorskip("openvino_genai", reason="the openvino extra is not installed")
    from whistle_stop.backends import registry as backends

    hf, prompt, ref_tokens, ref_logits, scale = transformers_reference(tiny_model, tmp_path)

    for runner in ("genai", "python"):
        f32 = backends.create(
            "openvino",
            tiny_model,
            {"weights": "f32", "runner": runner, "kv_cache": "f32"},
            1,
            tmp_path,
        )
        for length in (prompt, prompt[:2]):  # a repeated prompt, then a shorter one
            generation = f32.generate(length, 12)
            assert generation.tokens == hf.generate(length, 12).tokens
            assert len(generation.token_times) == 12
            assert generation.token_times == sorted(generation.token_times)
        logits = f32.teacher_forced_logits(prompt, ref_tokens)
        np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4 * scale)
        assert f32.load_report.extra["runner"] == runner
    # converted once, for both runners
    assert f32.load_report.artifact_built is False
    assert f32.load_report.extra["inference_precision"] == "f32"

    # the plugin's own default stores keys and values in u8: close, not identical
    assert f32.load_report.extra["kv_cache_precision"] == "f32"
    u8 = backends.create("openvino", tiny_model, {"weights": "f32"}, 1, tmp_path)
    assert u8.load_report.extra["kv_cache_precision"] == "u8"
    error = np.abs(u8.teacher_forced_logits(prompt, ref_tokens) - ref_logits).max() / scale
    assert 0 < error < 0.01

    int8 = backends.create("openvino", tiny_model, {"weights": "int8"}, 1, tmp_path)
    assert int8.load_report.artifact_bytes < f32.load_report.artifact_bytes  # tiny: xml weighs
    error = np.abs(int8.teacher_forced_logits(prompt, ref_tokens) - ref_logits).max() / scale
    assert 0 < error < 0.05


def test_openvino_options_refuse_what_only_4_bit_weights_use():
    from pydantic import ValidationError

    from whistle_stop.backends.options import OpenVINOOptions

    assert OpenVINOOptions(weights="int4", group_size=32, all_layers=True).group_size == 32
    with pytest.raises(ValidationError, match="need weights: int4"):
        OpenVINOOptions(weights="int8", group_size=32)
    with pytest.raises(ValidationError, match="positive number"):
        OpenVINOOptions(weights="int4", group_size=0)


@pytest.mark.slow
def test_openvino_int4_is_a_farm_backend(tiny_model, tmp_path):
    pytest.importorskip("openvino_genai", reason="the openvino extra is not installed")
    job = spec(tiny_model, "openvino", weights="int4", group_size=16, all_layers=True)
    result = run_job(job, cache_dir=tmp_path, worker_name="t")
    assert result.status == "done", result.error
    m = result.metrics
    assert m.artifact_built is True and m.artifact_bytes > 0
    assert len(m.tokens) == 6 and m.decode_tokens_per_s > 0
    assert m.fidelity_positions == 8 and m.top1_agreement is not None
    assert m.load_extra["attention_backend"].startswith("SDPA")
    assert m.weight_bytes_per_token > 0 and m.roofline_fraction > 0


def test_an_amx_llama_cpp_build_is_refused_under_a_hypervisor_with_the_fix(monkeypatch):
    from whistle_stop.backends.llamacpp_build import refuse_amx_under_hypervisor

    amx = "CPU : AVX2 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | OPENMP = 1 |"
    built_without = amx.replace("AMX_INT8 = 1 | ", "")
    vm, metal = "flags\t\t: fpu avx2 amx_int8 hypervisor\n", "flags\t\t: fpu avx2 amx_int8\n"
    monkeypatch.delenv("FARM_LLAMA_AMX", raising=False)
    with pytest.raises(RuntimeError, match="crash under a hypervisor.*make engines"):
        refuse_amx_under_hypervisor(amx, vm)
    refuse_amx_under_hypervisor(built_without, vm)  # the build `make engines` makes
    refuse_amx_under_hypervisor(amx, metal)
    monkeypatch.setenv("FARM_LLAMA_AMX", "1")
    refuse_amx_under_hypervisor(amx, vm)
