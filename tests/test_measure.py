"""The measurement method: stopping rule, percentiles, summaries, the timer cross-check."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from whistle_stop.worker.measure import (
    Repeat,
    TimerCheck,
    percentile,
    raw_samples,
    should_stop,
    summarize,
)


@pytest.mark.parametrize(
    ("done", "elapsed", "expected"),
    [
        (0, 0.0, False),
        (2, 100.0, False),  # enough time, too few repeats
        (3, 0.5, False),  # enough repeats, too little time
        (3, 1.0, True),  # both reached
        (50, 0.1, True),  # the upper bound stops a cell that would run forever
    ],
)
def test_stopping_rule_needs_both_repeats_and_duration(done, elapsed, expected):
    assert should_stop(done, elapsed, repeats=3, min_duration_s=1.0, max_repeats=50) is expected


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    values = list(np.random.default_rng(1).random(37))
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def synthetic(start: float, prefill: float, steps: list[float]) -> Repeat:
    times = [start + prefill]
    for step in steps:
        times.append(times[-1] + step)
    return Repeat(start=start, end=times[-1], token_times=tuple(times))


def test_summary_from_known_timestamps():
    repeats = [synthetic(0.0, 0.100, [0.010] * 9), synthetic(5.0, 0.120, [0.020] * 9)]
    figures = summarize(repeats, noise_threshold=0.05)
    assert figures["prefill_ms"] == pytest.approx(110.0)
    assert figures["decode_ms"] == pytest.approx(15.0)
    assert figures["decode_ms_p50"] == pytest.approx(15.0)
    assert figures["decode_tokens_per_s"] == pytest.approx(18 / (9 * 0.010 + 9 * 0.020))
    assert repeats[1].decode_tokens_per_s == pytest.approx(1 / 0.020)  # one repeat's own
    assert figures["e2e_s"] == pytest.approx((0.19 + 0.30) / 2)
    assert figures["cv"] == pytest.approx(np.std([0.19, 0.30], ddof=1) / 0.245)
    assert figures["noisy"] is True  # a 30% spread is far above 5%
    assert figures["timer_gap"] == pytest.approx(0.0, abs=1e-12)
    samples = raw_samples(repeats)
    assert samples["prefill_s"] == pytest.approx([0.1, 0.12])
    assert len(samples["decode_steps_s"][1]) == 9


def test_a_steady_run_is_not_noisy():
    repeats = [synthetic(float(i), 0.1, [0.01] * 5) for i in range(5)]
    assert summarize(repeats, noise_threshold=0.05)["noisy"] is False


def test_decode_time_is_never_total_minus_prefill():
    # Generation of one token has no decode step: decode figures are undefined, not negative.
    figures = summarize([synthetic(0.0, 0.1, [])], noise_threshold=0.05)
    assert math.isnan(figures["decode_ms"])
    assert math.isnan(figures["decode_tokens_per_s"])
    assert math.isnan(synthetic(0.0, 0.1, []).decode_tokens_per_s)


@pytest.mark.slow
def test_token_clock_agrees_with_the_outer_wall_clock(tiny_model: Path, tmp_path):
    """Sum of per-token intervals plus prefill within 2% of an outer timer, on a real model."""
    from whistle_stop.contract.jobspec import JobSpec
    from whistle_stop.worker.runner import run_job

    spec = JobSpec(
        model=str(tiny_model),
        backend="hf",
        label="hf",
        options=(("dtype", "float32"),),
        context=16,
        generation=32,
        threads=1,
        warmups=1,
        repeats=5,
        min_duration_s=0.0,
        max_repeats=5,
        noise_threshold=0.05,
        fidelity_tokens=8,
        eval_text=None,
        eval_tokens=16,
        rerun_noisy=False,
        prompt_text=None,
        tokenizer="fast",
        seed=0,
    )
    payload = run_job(spec.to_dict(), cache_dir=tmp_path, worker_name="test")
    assert payload.status == "done", payload.error
    assert payload.metrics.timer_gap < 0.02
    assert payload.metrics.repeats == 5
    assert len(payload.metrics.tokens) == 32
    assert payload.metrics.top1_agreement == 1.0  # hf against itself


def test_timer_check_between_two_runs_cancels_a_steady_drift():
    # N = 32 tokens, k = 16 more; the machine slows steadily by 1 ms a token per run
    # (runs 10, 11, 12 ms a token): the bracket's mean is the longer run's own speed
    check = TimerCheck.of([32 * 0.010, 32 * 0.012], 48 * 0.011, 16 * 0.011, 16)
    assert check.disagreement == pytest.approx(0.0, abs=1e-9)
    assert check.verdict(0.05) is None  # (against the run before alone: 1.3x off)


def test_timer_check_blames_stamps_only_beyond_the_runs_own_noise():
    # stamps bunched at the end: the last 16 span 0.16 ms, the outer clock says 10 ms each
    lying = TimerCheck.of([0.32, 0.321, 0.319, 0.32], 0.48, 16e-5, 16)
    assert lying.disagreement > 0.9 and lying.noise < 0.1
    assert "stamps disagree" in lying.verdict(0.05)
    # honest stamps, but the run after the check took 30% longer than the ones before
    moved = TimerCheck.of([0.32, 0.32, 0.416], 0.48, 16 * 0.010, 16)
    assert moved.disagreement > 0.05 and moved.noise > moved.disagreement
    assert "inconclusive" in moved.verdict(0.05)
    # quiet runs (1% apart) and honest stamps 8% off the outer figure: told
    quiet = TimerCheck.of([0.32, 0.3232, 0.32], 0.48 + 16 * 0.0008, 16 * 0.010, 16)
    assert 0.05 < quiet.disagreement < 0.1 and quiet.noise < quiet.disagreement
