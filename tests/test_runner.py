"""The job runner's checks: pinning verified, thread counts verified, roofline arithmetic."""

from __future__ import annotations

import json
import socket

import pytest

from whistle_stop.backends.config import ModelConfig
from whistle_stop.contract.jobspec import JobSpec
from whistle_stop.worker import roofline
from whistle_stop.worker.runner import run_job

FAULT = "fault"  # tests/plugin, installed as an entry point


def spec(model, backend=FAULT, threads=1, **options) -> dict:
    return JobSpec(
        model=str(model),
        backend=backend,
        label="x",
        options=tuple(sorted(options.items())),
        context=8,
        generation=4,
        threads=threads,
        warmups=0,
        repeats=2,
        min_duration_s=0,
        max_repeats=2,
        noise_threshold=0.05,
        fidelity_tokens=0,
        eval_text=None,
        eval_tokens=16,
        rerun_noisy=True,
        prompt_text=None,
        tokenizer="fast",
        seed=0,
    ).to_dict()


def test_a_backend_that_changes_its_thread_count_is_flagged(tiny_model, tmp_path):
    payload = run_job(
        spec(tiny_model, torch_threads=3, mode="ok", step_s=0.001, sleep_s=0),
        cache_dir=tmp_path,
        worker_name="t",
    )
    assert payload.status == "done", payload.error
    assert "torch runs 3 threads, job asked for 1" in payload.metrics.pinning_violations


def test_more_threads_than_cpus_is_flagged(tiny_model, tmp_path):
    import os

    threads = len(os.sched_getaffinity(0)) + 1
    payload = run_job(
        spec(tiny_model, threads=threads, mode="ok", step_s=0.001, sleep_s=0, torch_threads=0),
        cache_dir=tmp_path,
        worker_name="t",
    )
    assert any("oversubscribe" in v for v in payload.metrics.pinning_violations)


def test_a_well_pinned_job_has_no_violations(tiny_model, tmp_path):
    payload = run_job(
        spec(tiny_model, backend="hf", dtype="float32"), cache_dir=tmp_path, worker_name="t"
    )
    assert payload.status == "done", payload.error
    assert payload.metrics.pinning_violations == []
    metrics = payload.metrics
    assert metrics.roofline_tokens_per_s == pytest.approx(
        metrics.bandwidth_bytes_per_s / metrics.weight_bytes_per_token
    )
    assert metrics.roofline_fraction == pytest.approx(
        metrics.decode_tokens_per_s / metrics.roofline_tokens_per_s
    )
    # float32 keys and values of 8 prompt positions and on average 2 of the 4 generated
    config = ModelConfig.from_dir(tiny_model)
    kv = 2 * config.n_layer * config.n_embd * 4 * (8 + 4 / 2)
    assert metrics.kv_bytes_per_token == pytest.approx(kv)
    read = metrics.bandwidth_bytes_per_s / (metrics.weight_bytes_per_token + kv)
    assert metrics.roofline_kv_fraction == pytest.approx(metrics.decode_tokens_per_s / read)
    assert metrics.roofline_kv_fraction > metrics.roofline_fraction  # more bytes: a lower bound


GPT2 = ModelConfig(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)


def test_weight_bytes_of_gpt2_small():
    fp32 = roofline.weight_bytes_per_token(GPT2, 4, 4)
    # 12 layers x 12 x 768^2 projections + 50257 x 768 LM head, 4 bytes each, plus small vectors
    assert fp32 == pytest.approx(4 * (12 * 12 * 768**2 + 50257 * 768), rel=0.002)
    assert 494e6 < fp32 < 496e6
    int8_float_head = roofline.weight_bytes_per_token(GPT2, 1, 4)
    assert int8_float_head == pytest.approx(12 * 12 * 768**2 + 4 * 50257 * 768, rel=0.005)
    assert roofline.weight_bytes_per_token(GPT2, 2, 2) == pytest.approx(fp32 / 2, rel=0.002)


def test_the_kv_cache_a_decode_step_reads_at_gpt2_xl():
    xl = ModelConfig(n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024)
    # half precision: 48 layers x (512 + 64 / 2) positions x 1600 x keys and values x 2 bytes
    assert roofline.kv_bytes_per_token(xl, 2.0, 512, 64) == 48 * 544 * 1600 * 2 * 2
    assert roofline.kv_bytes_per_token(GPT2, 4.0, 128, 2) == 2 * 12 * 768 * 4 * 129


def test_bandwidth_is_measured_once_per_host_and_cpu_set(tmp_path, monkeypatch):
    calls = []

    def fake(threads):
        calls.append(threads)
        return {
            "read_bytes_per_s": 25e9,
            "copy_bytes_per_s": 20e9,
            "threads": threads,
            "dram_from_bytes": 2**27,
        }

    monkeypatch.setattr(roofline, "measure_bandwidth", fake)
    first = roofline.cached_bandwidth("0-1", 2, tmp_path)
    again = roofline.cached_bandwidth("0-1", 2, tmp_path)
    other = roofline.cached_bandwidth("0", 1, tmp_path)
    forced = roofline.cached_bandwidth("0-1", 2, tmp_path, remeasure=True)
    assert calls == [2, 1, 2]
    assert first["read_bytes_per_s"] == again["read_bytes_per_s"] == 25e9
    assert other["cpus"] == "0" and forced["cpus"] == "0-1"
    assert (
        json.loads(next((tmp_path / "bandwidth").glob("*-cpus0-1.json")).read_text())[
            "read_bytes_per_s"
        ]
        == 25e9
    )


def test_a_cache_measured_before_dram_from_was_measured_is_measured_again(tmp_path, monkeypatch):
    cached = tmp_path / "bandwidth" / f"{socket.gethostname()}-cpus0-1.json"
    cached.parent.mkdir()
    cached.write_text(json.dumps({"read_bytes_per_s": 9e9, "copy_bytes_per_s": 8e9}))
    monkeypatch.setattr(
        roofline,
        "measure_bandwidth",
        lambda threads: {"read_bytes_per_s": 25e9, "dram_from_bytes": None},
    )
    assert roofline.cached_bandwidth("0-1", 2, tmp_path)["read_bytes_per_s"] == 25e9
    assert "dram_from_bytes" in json.loads(cached.read_text())


def test_dram_from_is_the_first_size_that_reads_at_dram_speed(monkeypatch):
    """A VM that reports 480 MiB of L3 but reads at cache speed (2x DRAM's) only to 96 MiB:
    the sweep (4 MiB up 1.5x at a time: ..., 94, 141, ... MiB) finds 141 MiB, the first
    size at DRAM speed, not the LLC the CPU reports. Each read advances a fake clock."""
    clock = [0.0]

    class Buffer:
        def __init__(self, floats):
            self.floats = floats

        def numel(self):
            return self.floats

        def __getitem__(self, part):
            return Buffer(part.stop)

        def sum(self):
            size = self.floats * 4
            clock[0] += size / (56e9 if size <= 96 * 2**20 else 28e9)

    monkeypatch.setattr(roofline.time, "perf_counter", lambda: clock[0])
    llc = 480 * 2**20
    assert roofline.dram_from_bytes(Buffer(2**30 // 4), 28e9, llc) == 141 * 2**20
    # every size faster than DRAM: the cache is larger than reported, not measured
    assert roofline.dram_from_bytes(Buffer(2**30 // 4), 20e9, llc) is None


def test_real_bandwidth_measurement_is_plausible():
    figures = roofline.measure_bandwidth(threads=1, size_bytes=64 * 2**20, repeats=2)
    assert 1e8 < figures["read_bytes_per_s"] < 1e12
    dram_from = figures["dram_from_bytes"]
    assert dram_from is None or 4 * 2**20 <= dram_from <= 64 * 2**20


def test_repeats_that_choose_other_tokens_fail_the_job(tiny_model, tmp_path):
    payload = run_job(
        spec(tiny_model, mode="vary", step_s=0.001, sleep_s=0, torch_threads=0),
        cache_dir=tmp_path,
        worker_name="t",
    )
    assert payload.status == "failed"
    assert "repeat 2 chose other greedy tokens than repeat 1, first at position 1" in payload.error
