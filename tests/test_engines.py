"""The engines a user would pick instead, as farm backends: real conversions, real runs."""

from __future__ import annotations

from importlib import metadata

import pytest

from backends import registry
from backends.registry import BackendEntry
from contract.jobspec import JobSpec
from worker.runner import run_job


def spec(model, backend: str, generation: int = 6, **options) -> dict:
    return JobSpec(model=str(model), backend=backend, label=backend,
                   options=tuple(sorted(options.items())), context=8, generation=generation,
                   threads=1, warmups=1, repeats=2, min_duration_s=0, max_repeats=2,
                   noise_threshold=0.05, fidelity_tokens=4, eval_text=None, eval_tokens=16,
                   rerun_noisy=False, prompt_text=None, tokenizer="fast", seed=0,
                   fidelity_prompts=2, bandwidth="host").to_dict()  # fmt: skip


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    missing = BackendEntry("whistle_stop_no_such_engine:Engine", registry.opts.BackendOptions,
                           "an engine", extra="no-such-engine")  # fmt: skip
    monkeypatch.setitem(registry.BUILTIN, "phantom", missing)
    with pytest.raises(registry.MissingDependencyError) as caught:
        registry.check_extra("phantom")
    message = str(caught.value)
    assert "\n" not in message and "pip install -e '.[no-such-engine]'" in message
    registry.check_extra("hf")  # a built-in path is not imported, let alone refused


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
