"""Interleaved rounds: every cell once per round, each round shuffled, rounds never
overlapping; reports pool the rounds and take speedups within each round."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import replace

import pytest
from rich.console import Console
from sqlalchemy import func, select

from tests.test_report import payload
from whistle_stop.contract.events import Started, outcome
from whistle_stop.db.models import Job, Sweep
from whistle_stop.db.session import make_session_factory
from whistle_stop.orchestrator.dispatch import run_sweep
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import SweepError, parse_sweep
from whistle_stop.reports.query import result_rows

GRID = """
backends: [hf, onnx, {name: onnx, quantize: int8}]
context_sizes: [32, 128]
generation_lengths: [16]
threads: [2]
"""


def plan(extra: str = "", name: str = "r"):
    return parse_sweep(GRID + extra, origin="s.yaml", default_name=name)


def test_one_round_keeps_the_grid_order_and_the_keys_of_before():
    jobs = plan().jobs
    assert [j.round for j in jobs] == [1] * 6
    assert all(j.key == j.cell for j in jobs)
    assert [j.label for j in jobs][:2] == ["hf", "hf"]


def test_each_round_runs_every_cell_once_in_its_own_seeded_order():
    jobs = plan("rounds: 3\n").jobs
    rounds = [[j for j in jobs if j.round == n] for n in (1, 2, 3)]
    cells = [sorted(j.cell for j in r) for r in rounds]
    assert cells[0] == cells[1] == cells[2] and len(cells[0]) == 6
    orders = [[j.cell for j in r] for r in rounds]
    assert len({tuple(o) for o in orders}) > 1, "three rounds in one order: not shuffled"
    assert len({j.key for j in jobs}) == 18  # a job per cell and round
    assert [j.key for j in plan("rounds: 3\n").jobs] == [j.key for j in jobs]  # seeded
    assert [j.key for j in plan("rounds: 3\nseed: 1\n").jobs] != [j.key for j in jobs]
    for ran in rounds:  # a cell's backends run one after another: their ratio is of one minute
        contexts = [j.context for j in ran]
        assert contexts == sorted(contexts, key=contexts.index), contexts


def test_control_copies_the_baseline_under_its_own_label():
    labels = Counter(j.label for j in plan("control: true\n").jobs)
    assert labels["hf-control"] == labels["hf"] == 2
    with pytest.raises(SweepError, match="baseline: 'tgi' is not among the backends"):
        plan("control: true\nbaseline: tgi\n")


class RoundWatcher:
    """An executor that checks, each time it is handed jobs, that every job of an earlier
    round is stored already; its results follow SPEED with a drift that moves each round."""

    detached = False

    def __init__(self, store: Store, drift: dict[int, float]) -> None:
        self.store, self.drift, self.handed = store, drift, []

    async def run(self, sweep, jobs, *, wait=True):
        number = jobs[0].round
        assert {j.round for j in jobs} == {number}, "a round handed over mixed with another"
        with self.store.sessions() as session:
            earlier = select(func.count()).where(Job.round < number, Job.status != "done")
            assert session.scalar(earlier) == 0, "a round started before the last was stored"
        self.handed.append((number, len(jobs)))
        for job in jobs:
            yield [Started(job.id, "w")]
            spec = job.spec
            label = "hf" if spec["label"] == "hf-control" else spec["label"]
            result = payload(label, spec["context"], spec["generation"], self.drift[number])
            yield [outcome(job.id, result)]

    async def follow(self, sweep, jobs, *, wait):
        return
        yield


def test_rounds_run_one_after_another_and_pool_into_one_row_per_cell(tmp_path):
    sessions = make_session_factory(str(tmp_path / "farm.db"))
    store = Store(sessions)
    executor = RoundWatcher(store, drift={1: 1.0, 2: 1.6, 3: 0.7})  # the machine drifts
    swept = plan("rounds: 3\ncontrol: true\n")
    summary = asyncio.run(run_sweep(swept, store, executor, Console(quiet=True)))
    assert summary.done == 24 and executor.handed == [(1, 8), (2, 8), (3, 8)]
    with sessions() as session:
        rows = result_rows(session, list(session.scalars(select(Sweep))), "hf")
    assert len(rows) == 8  # 4 backends (control included) x 2 contexts
    int8 = next(r for r in rows if r["label"] == "onnx[quantize=int8]" and r["context"] == 32)
    assert int8["rounds"] == 3
    # absolute speed moved 2.3x between rounds; the within-round ratio did not
    assert int8["round_speedups"] == pytest.approx([4.0, 4.0, 4.0])
    assert int8["speedup"] == pytest.approx(4.0) and int8["speedup_spread"] == pytest.approx(0)
    assert int8["decode_tokens_per_s"] == pytest.approx(100.0)  # the median round
    assert not int8["within_noise"]


def test_a_speedup_inside_the_control_spread_is_marked(tmp_path):
    sessions = make_session_factory(str(tmp_path / "farm.db"))
    store = Store(sessions)
    swept = plan("rounds: 2\ncontrol: true\n")
    for job in store.record_sweep(swept).to_run:
        spec = job.spec
        label = "hf" if spec["label"] == "hf-control" else spec["label"]
        # the control ran 4% slow in round 2: the farm's noise floor is 0.96-1.00
        slowdown = 1.04 if spec["label"] == "hf-control" and job.round == 2 else 1.0
        if label == "onnx[quantize=int8]":
            slowdown = 4 / 1.02  # 1.02x hf: inside the noise floor
        store.apply(outcome(job.id, payload(label, spec["context"], spec["generation"], slowdown)))
    with sessions() as session:
        rows = result_rows(session, list(session.scalars(select(Sweep))), "hf")
    control = [r for r in rows if r["label"] == "hf-control"]
    assert sorted(control[0]["round_speedups"]) == pytest.approx([1 / 1.04, 1.0])
    int8 = [r for r in rows if r["label"] == "onnx[quantize=int8]"]
    assert all(r["speedup"] == pytest.approx(1.02) and r["within_noise"] for r in int8)
    onnx = [r for r in rows if r["label"] == "onnx"]
    assert all(r["speedup"] == pytest.approx(2.0) and not r["within_noise"] for r in onnx)
    assert not any(r["within_noise"] for r in control)  # the control is the floor itself
    baseline = [r for r in rows if r["label"] == "hf"]
    assert not any(r["within_noise"] for r in baseline)  # 1.00x of itself says nothing


def test_unfinished_jobs_of_rounds_not_started_are_not_followed(tmp_path):
    store = Store(make_session_factory(str(tmp_path / "farm.db")))
    store.record_sweep(plan("rounds: 2\n"))
    # round 2 waits for a submit to start it: `farm collect` must not wait for it forever
    assert {job.round for job in store.unfinished("r")} == {1}


def test_a_round_with_a_noisy_job_is_left_out_of_the_speedup_unless_all_are(tmp_path):
    """A job whose own repeats disagreed was disturbed while it ran: its round's ratio is
    shown (spread, round_speedups) but the speedup pools the steady rounds."""
    sessions = make_session_factory(str(tmp_path / "farm.db"))
    store = Store(sessions)
    swept = plan("rounds: 3\ncontrol: true\n")
    for job in store.record_sweep(swept).to_run:
        spec = job.spec
        label = "hf" if spec["label"] == "hf-control" else spec["label"]
        # round 2's control was disturbed (16% slow, and its repeats said so); int8 ran
        # noisy in round 3; at context 128 every round of onnx was noisy
        disturbed = spec["label"] == "hf-control" and job.round == 2
        noisy = disturbed or (label == "onnx[quantize=int8]" and job.round == 3)
        noisy = noisy or (label == "onnx" and spec["context"] == 128)
        result = payload(label, spec["context"], spec["generation"], 1.16 if disturbed else 1.0)
        result = replace(result, metrics=replace(result.metrics, noisy=noisy))
        store.apply(outcome(job.id, result))
    with sessions() as session:
        rows = result_rows(session, list(session.scalars(select(Sweep))), "hf")
    control = [r for r in rows if r["label"] == "hf-control"]
    assert all(r["speedup"] == pytest.approx(1.0) and r["speedup_rounds"] == 2 for r in control)
    assert all(r["speedup_spread"] == pytest.approx(0.16 / 1.16, rel=1e-3) for r in control)
    int8 = [r for r in rows if r["label"] == "onnx[quantize=int8]"]
    assert all(r["speedup_rounds"] == 2 and r["speedup"] == pytest.approx(4.0) for r in int8)
    onnx = {r["context"]: r for r in rows if r["label"] == "onnx"}
    assert onnx[32]["speedup_rounds"] == 3
    assert onnx[128]["speedup_rounds"] == 3  # no steady round: every round counts
    from whistle_stop.reports.columns import BY_NAME, cell

    assert cell(control[0], BY_NAME["rounds"]) == "2/3"  # the report says what it pooled
    assert cell(onnx[32], BY_NAME["rounds"]) == "3"


class NoisyCell(RoundWatcher):
    """onnx at context 32 swings from round to round (its ratio to hf with it, ~3%);
    every other cell keeps its ratio exactly, but its interval is floored at the sweep's
    pooled noise (~1.4%: too little to keep it from ±5% after three rounds; a wilder swing
    would widen every cell, and rounds: auto would run them all again)."""

    SWING = {1: 1.0, 2: 1.03, 3: 0.97, 4: 1.04}

    async def run(self, sweep, jobs, *, wait=True):
        number = jobs[0].round
        self.handed.append((number, len(jobs)))
        for job in jobs:
            spec = job.spec
            swing = self.SWING[number] if (spec["label"], spec["context"]) == ("onnx", 32) else 1
            result = payload(spec["label"], spec["context"], spec["generation"], swing)
            yield [outcome(job.id, result)]


def test_rounds_auto_runs_again_only_the_cells_not_yet_within_precision(tmp_path):
    sessions = make_session_factory(str(tmp_path / "farm.db"))
    store = Store(sessions)
    executor = NoisyCell(store, drift={})
    swept = plan("rounds: auto\nmax_rounds: 4\nprecision: 0.05\n")
    assert swept.auto and swept.rounds == 3 and len(swept.jobs) == 18
    lines = Console(record=True, width=200)
    summary = asyncio.run(run_sweep(swept, store, executor, lines))
    # after three rounds only onnx at 32 is wide: it runs again, its baseline beside it
    assert executor.handed == [(1, 6), (2, 6), (3, 6), (4, 2)]
    assert summary.done == 20
    said = lines.export_text()
    assert "round 4: 1 cell(s) not yet within ±5%" in said
    assert "1 cell(s) stopped undecided after 4 rounds" in said
    with sessions() as session:
        rows = result_rows(session, list(session.scalars(select(Sweep))), "hf")
    from whistle_stop.reports.verdict import verdicts

    [line] = [v.line("hf") for v in verdicts(rows, "hf") if "ctx=32" in v.cell]
    assert "not within ±5% after max_rounds: onnx" in line
    steady = next(r for r in rows if r["label"] == "onnx[quantize=int8]" and r["context"] == 32)
    assert steady["rounds"] == 3 and steady["speedup"] == pytest.approx(4.0)
    # no spread of its own, but not a zero-width interval: the sweep's noise, within ±5%
    assert steady["speedup_lo"] < 4.0 < steady["speedup_hi"] < 4.0 * 1.05


def test_rounds_auto_stops_after_three_rounds_when_every_cell_is_decided(tmp_path):
    store = Store(make_session_factory(str(tmp_path / "farm.db")))
    executor = RoundWatcher(store, drift={1: 1.0, 2: 1.6, 3: 0.7})
    asyncio.run(run_sweep(plan("rounds: auto\n"), store, executor, Console(quiet=True)))
    assert executor.handed == [(1, 6), (2, 6), (3, 6)]


def test_a_ratio_interval_is_a_t_interval_on_logs_and_the_verdict_reads_it():
    from whistle_stop.contract.figures import ratio_interval, verdict

    assert ratio_interval([1.1]) is None  # one round knows nothing of its own noise
    low, high = ratio_interval([0.9, 1.0, 1.1])
    assert low < 0.9 < 1.1 < high and low * high == pytest.approx(0.9 * 1.0 * 1.1, rel=0.02)
    assert verdict((1.03, 1.08), margin=0.02) == "faster"
    assert verdict((0.90, 0.95), margin=0.02) == "slower"
    assert verdict((0.99, 1.015), margin=0.02) == "same"
    assert verdict((0.995, 1.05), margin=0.02) == "unknown"
    assert verdict(None, margin=0.02) == "unknown"


def test_a_cell_whose_rounds_agree_by_luck_gets_the_sweeps_noise_not_its_own():
    from whistle_stop.contract.figures import pooled_log_sd, ratio_interval, verdict

    lucky = [0.974, 0.973, 0.978]  # an A/A cell of a calibration sweep: 0.3% apart
    noisy = [[1.02, 0.95, 1.04, 0.99], [0.97, 1.03, 1.0], lucky]
    noise = pooled_log_sd(noisy)
    by_hand = [math.log(r) - sum(map(math.log, g)) / len(g) for g in noisy for r in g]
    assert noise == pytest.approx(math.sqrt(sum(d * d for d in by_hand) / (3 + 2 + 2)))
    assert verdict(ratio_interval(lucky), margin=0.02) == "slower"  # its own spread: a call
    floored = ratio_interval(lucky, floor=noise)
    assert verdict(floored, margin=0.02) == "unknown"
    assert floored[0] < 0.975 < floored[1]  # the same centre, wider
    # a floor below the cell's own spread changes nothing
    assert ratio_interval(noisy[0], floor=0.001) == ratio_interval(noisy[0])
    assert pooled_log_sd([[1.0], []]) is None


def test_two_sweeps_ratio_is_welchs_interval_on_logs():

    from scipy import stats

    from whistle_stop.contract.figures import ratio_between

    before, after = [10.0, 11.0, 10.5, 9.8], [12.0, 12.5, 13.1]
    low, high = ratio_between(before, after)
    logs = [math.log(v) for v in before], [math.log(v) for v in after]
    welch = stats.ttest_ind(logs[1], logs[0], equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((math.exp(welch.low), math.exp(welch.high)))
    assert ratio_between([10.0], after) is None  # one value says nothing of its noise
    assert ratio_between([2.0, 2.0], [3.0, 3.0]) == pytest.approx((1.5, 1.5))


def test_newcombes_interval_and_a_ratio_of_means():
    from whistle_stop.contract.figures import mean_ratio, proportion_difference
    from whistle_stop.worker.fidelity import wilson

    # Newcombe (1998), table II, example (a): 56/70 against 48/80, method 10
    first, second = (56 / 70, *wilson(56, 70)), (48 / 80, *wilson(48, 80))
    low, high = proportion_difference(second, first)
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=5e-4)
    assert mean_ratio((1.0, 0.9, 1.1), (2.0, 1.8, 2.2)) == pytest.approx(
        (
            2 * math.exp(-1.959964 * math.hypot(0.1 / 1.959964, 0.1 / 1.959964)),
            2 * math.exp(1.959964 * math.hypot(0.1 / 1.959964, 0.1 / 1.959964)),
        ),
    )


def test_the_kl_interval_widens_when_a_prompts_positions_move_together():
    import numpy as np

    from whistle_stop.worker.fidelity import mean_standard_error

    rng = np.random.default_rng(0)
    independent = [rng.normal(1.0, 0.1, 64) for _ in range(4)]
    together = [np.full(64, level) + rng.normal(0, 0.01, 64) for level in (0.8, 0.9, 1.1, 1.2)]
    plain = max(g.std(ddof=1) for g in independent) / 16
    assert mean_standard_error(independent) == pytest.approx(plain, rel=0.3)
    spread = np.concatenate(together).std(ddof=1) / 16
    assert mean_standard_error(together) > 5 * spread  # four prompts, not 256 positions
