"""Checks that can fail: pinning seen from /proc, the token clock against the outer
clock, bandwidth measured around the job, fidelity with an interval."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from whistle_stop.contract.jobspec import JobSpec
from whistle_stop.executors.local import LocalWorker
from whistle_stop.worker import fidelity
from whistle_stop.worker.runner import run_job

FAULT = "fault"  # tests/plugin, installed as an entry point
TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


def spec(model, backend=FAULT, threads=1, generation=8, repeats=2, **options) -> dict:
    return JobSpec(
        model=str(model),
        backend=backend,
        label="x",
        options=tuple(sorted(options.items())),
        context=8,
        generation=generation,
        threads=threads,
        warmups=0,
        repeats=repeats,
        min_duration_s=0,
        max_repeats=repeats,
        noise_threshold=0.05,
        fidelity_tokens=0,
        eval_text=None,
        eval_tokens=16,
        rerun_noisy=False,
        prompt_text=None,
        tokenizer="fast",
        seed=0,
        bandwidth="host",
    ).to_dict()


def run(model, tmp_path, cpus=None, **options):
    payload = run_job(
        spec(model, **options), cache_dir=tmp_path, worker_name="t", assigned_cpus=cpus
    )
    assert payload.status == "done", payload.error
    return payload.metrics


def in_worker(model, tmp_path, cpus: list[int], **options):
    """The job in a real embedded worker process pinned to `cpus`, as the farm runs it."""
    worker = LocalWorker("t", cpus, tmp_path, tmp_path / "logs")
    payload = asyncio.run(worker.run(spec(model, **options)))
    assert payload.status == "done", payload.error
    return payload.metrics


@TWO_CPUS
def test_a_thread_that_leaves_the_cpu_set_is_seen(tiny_model, tmp_path):
    # the worker was given CPU 0; one thread of the job moves itself to CPU 1
    metrics = in_worker(tiny_model, tmp_path, [0], mode="escape", step_s=0.02)
    assert metrics.pinning_violations, "an escaped thread went unseen"
    assert all("rogue-0" in v for v in metrics.pinning_violations), metrics.pinning_violations
    assert any("ran on CPU 1, outside the assigned 0" in v for v in metrics.pinning_violations)
    assert metrics.machine["ran_outside"]
    quiet = in_worker(tiny_model, tmp_path, [0], mode="ok", step_s=0.02)
    assert quiet.pinning_violations == [] and not quiet.machine["ran_outside"]


def test_a_pool_the_job_did_not_ask_for_is_seen(tiny_model, tmp_path):
    """One repeat: the pool's threads live for the whole timed region, so each needs only
    its floor's share of a CPU (10%) to count as working. With a busy loop on the job's CPU
    the three of them and the loop still get about a quarter each (a clean-clone CI run
    under such a loop once saw none of them with two repeats, each alive half the time)."""
    job = {"mode": "extra_pool", "step_s": 0.02, "generation": 24, "repeats": 1}
    metrics = in_worker(tiny_model, tmp_path, [0], **job)
    assert metrics.machine["busy_threads"] >= 3
    found = [v for v in metrics.pinning_violations if "a pool the job did not ask for" in v]
    assert found and "rogue-" in found[0] and "for a 1-thread job" in found[0]
    # the same working threads, declared by the backend: allowed, and recorded
    declared = in_worker(tiny_model, tmp_path, [0], **job, declare_extra=3)
    assert declared.machine["busy_threads"] >= 3
    assert declared.machine["declared_extra_threads"] == 3
    assert not [v for v in declared.pinning_violations if "did not ask for" in v]


def test_another_process_on_the_job_cpus_is_seen_and_named(tiny_model, tmp_path):
    # a busy loop pinned to the job's CPU, named as a kernel thread would be
    burner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ctypes, os; os.sched_setaffinity(0, {0}); "
            "ctypes.CDLL(None).prctl(15, b'ws-burner', 0, 0, 0)\nwhile True: pass",
        ]
    )
    try:
        time.sleep(0.3)  # pinned and named before the job starts
        metrics = in_worker(tiny_model, tmp_path, [0], mode="ok", step_s=0.02, generation=16)
    finally:
        burner.kill()
        burner.wait()
    assert metrics.machine["others_on_cpus"] > 0.2, metrics.machine
    assert "ws-burner" in [name for name, _ in metrics.machine["busiest_others"]]
    assert any("other processes took" in f and "ws-burner" in f for f in metrics.flags)


def test_a_quiet_job_has_no_pinning_findings_and_reports_the_machine(tiny_model, tmp_path):
    metrics = run(tiny_model, tmp_path, mode="ok", step_s=0.01)
    assert metrics.pinning_violations == []
    machine = metrics.machine
    assert machine["thread_samples"] >= 2 * 2  # at least a sample per repeat, and periodic
    for key in (
        "steal",
        "voluntary_switches",
        "involuntary_switches",
        "major_faults",
        "anon_huge_bytes",
        "busy_threads",
        "busiest_others",
    ):
        assert key in machine
    assert 0 <= machine["others_on_cpus"] <= 1
    assert machine["voluntary_switches"] > 0  # it slept between tokens


def test_token_stamps_taken_at_the_wrong_time_fail_the_timer_check(tiny_model, tmp_path):
    honest = run(tiny_model, tmp_path, mode="ok", step_s=0.01, generation=32)
    # the two must be told apart, on a busy machine too: the honest one within a few
    # percent (sleep jitter), the lying one off by most of each step
    assert honest.timer_check is not None and honest.timer_check < 0.25
    # same work, stamps bunched at the end: prefill + the steps still add up to the total
    lying = run(tiny_model, tmp_path, mode="late_stamps", step_s=0.01, generation=32)
    assert lying.timer_gap < 0.01  # the old check passes it
    assert lying.timer_check > 0.5
    assert any("disagree with the outer clock" in f for f in lying.flags)


def test_a_machine_that_changes_speed_makes_the_timer_check_inconclusive_not_a_lie(
    tiny_model, tmp_path
):
    # honest stamps, each call 1.5x slower than the last: the runs around the longer one
    # differ, and the check says the machine moved rather than blaming the stamps
    drifting = run(tiny_model, tmp_path, mode="slowing", step_s=0.005, generation=32)
    assert not any("disagree with the outer clock" in f for f in drifting.flags)
    assert any("timer check inconclusive" in f for f in drifting.flags), drifting.flags


def test_bandwidth_is_measured_around_the_job(tiny_model, tmp_path):
    job = spec(tiny_model, backend="hf", dtype="float32") | {"bandwidth": "fresh"}
    payload = run_job(job, cache_dir=tmp_path, worker_name="t")
    assert payload.status == "done", payload.error
    m = payload.metrics
    assert m.bandwidth_before_bytes_per_s > 1e9 and m.bandwidth_after_bytes_per_s > 1e9
    assert m.bandwidth_bytes_per_s == pytest.approx(
        (m.bandwidth_before_bytes_per_s + m.bandwidth_after_bytes_per_s) / 2
    )
    # the host's figures, measured once, still say from what size reads stream from DRAM
    (cached,) = (tmp_path / "bandwidth").iterdir()
    assert m.dram_from_bytes == json.loads(cached.read_text())["dram_from_bytes"]
    assert m.bandwidth_measured_at >= payload.started_at


def test_wilson_interval_of_no_flips_still_allows_a_few_percent():
    low, high = fidelity.wilson(64, 64)
    assert low == pytest.approx(0.9434, abs=1e-3) and high == 1.0
    low, high = fidelity.wilson(256, 256)  # four prompts: a tighter bound
    assert low > 0.985


def test_fidelity_pools_prompts_and_reports_kl_percentiles():
    rng = np.random.default_rng(0)
    ref = [rng.normal(size=(16, 50)) for _ in range(4)]
    same = fidelity.compare([1] * 16, ref, [r.copy() for r in ref], [1] * 16)
    assert same["top1_agreement"] == 1 and same["kl_max"] == pytest.approx(0, abs=1e-12)
    assert same["fidelity_positions"] == 64 and same["fidelity_prompts"] == 4
    noisy = [r + rng.normal(scale=0.5, size=r.shape) for r in ref]
    found = fidelity.compare([1] * 16, ref, noisy, [1] * 16)
    assert 0 < found["kl_p50"] <= found["kl_p90"] <= found["kl_p99"] <= found["kl_max"]
    assert found["top1_low"] < found["top1_agreement"] <= found["top1_high"]
    assert found["top_prob_diff"] > 0


def test_hf_float32_is_the_reference_and_says_so(tiny_model, tmp_path):
    job = spec(tiny_model, backend="hf", dtype="float32") | {
        "fidelity_tokens": 4,
        "fidelity_prompts": 3,
    }
    metrics = run_job(job, cache_dir=tmp_path, worker_name="t").metrics
    assert metrics.top1_agreement == 1.0 and metrics.mean_kl == 0.0
    assert metrics.fidelity_positions == 12
    assert any("1 and 0 by construction" in f for f in metrics.flags)


def test_fidelity_is_measured_on_every_prompt_and_only_in_round_one(tiny_model, tmp_path):
    job = spec(tiny_model, backend="nanogpt", dtype="float32", kv_cache=True)
    job |= {"fidelity_tokens": 4, "fidelity_prompts": 3}
    metrics = run_job(job, cache_dir=tmp_path, worker_name="t").metrics
    assert metrics.fidelity_positions == 12 and metrics.fidelity_prompts == 3
    assert metrics.top1_low <= metrics.top1_agreement <= metrics.top1_high
    later = run_job(job | {"round": 2}, cache_dir=tmp_path, worker_name="t").metrics
    assert later.top1_agreement is None  # the same every round: not measured again
