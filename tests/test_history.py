"""farm history: series across sweeps, and the change points found in them."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from whistle_stop.bench.harness import made_up_result
from whistle_stop.cli import app
from whistle_stop.contract.events import outcome
from whistle_stop.db.session import make_session_factory
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep
from whistle_stop.reports.changes import change_points

runner = CliRunner()


def noisy(count: int, seed: int, sigma: float = 0.03, step_at: int | None = None, step=0.9):
    rng = random.Random(seed)
    return [
        100 * math.exp(rng.gauss(0, sigma)) * (step if step_at is not None and i >= step_at else 1)
        for i in range(count)
    ]


def test_a_ten_percent_step_is_found_where_it_is_with_its_size():
    (change,) = change_points(noisy(10, seed=1, step_at=5))
    assert change.index == 5
    assert change.low < change.ratio < change.high
    assert 0.85 < change.ratio < 0.95 and change.high < 1
    assert change.p_value < 0.05


def test_no_step_is_found_as_rarely_as_alpha_says():
    alarms = sum(bool(change_points(noisy(10, seed), permutations=299)) for seed in range(100))
    assert alarms <= 10  # alpha 0.05: 5 expected, 10 is past the binomial's 97th percentile


def test_two_steps_and_flat_runs():
    values = [100.0] * 4 + [80.0] * 4 + [120.0] * 4
    assert [c.index for c in change_points(values)] == [4, 8]
    assert change_points([100.0] * 10) == []
    assert change_points([100.0, 90.0, 100.0]) == []  # too short to split into two pairs


def fill_history(db: Path, points: int, slower_from: int | None, kl_up_from: int | None = None):
    """`points` one-cell sweeps of one path, each from its own revision; the path 10% slower
    from point `slower_from` (1-based) and its KL doubled from `kl_up_from`."""
    store = Store(make_session_factory(str(db)))
    rng = random.Random(7)
    for point in range(1, points + 1):
        text = "backends: [onnx]\ncontext_sizes: [32]\ngeneration_lengths: [16]\n"
        plan = parse_sweep(text, origin="s.yaml", default_name=f"night-{point}")
        (job,) = store.record_sweep(plan).to_run
        slow = 1.1 if slower_from and point >= slower_from else 1.0
        result = made_up_result(50.0 * math.exp(rng.gauss(0, 0.02)), 32, 16, slowdown=slow)
        environment = dataclasses.replace(
            result.environment, fingerprint=f"f{point}", git_revision=f"{point:07d}abc"
        )
        metrics = result.metrics
        if kl_up_from and point >= kl_up_from:
            metrics = dataclasses.replace(metrics, mean_kl=2 * metrics.mean_kl)
        else:
            metrics = dataclasses.replace(
                metrics, mean_kl=metrics.mean_kl * rng.uniform(0.95, 1.05)
            )
        result = dataclasses.replace(result, environment=environment, metrics=metrics)
        store.apply(outcome(job.id, result))


def history(*args: str) -> str:
    result = runner.invoke(app, ["history", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_history_finds_the_slowdown_at_its_point_and_names_the_revisions(tmp_path):
    db = tmp_path / "h.db"
    fill_history(db, 10, slower_from=6)
    text = history("--db", str(db), "--changes")
    assert "changes over 10 points: tok/s at point 6" in text
    assert "0000006a" in text and "0000005a" in text  # each point's revision
    data = json.loads(history("--db", str(db), "--changes", "-f", "json"))
    (series,) = data
    assert [c["index"] for c in series["changes"]["decode_tokens_per_s"]] == [5]
    assert series["changes"]["mean_kl"] == []
    assert len(series["points"]) == 10 and series["series"]["backend"] == "onnx"


def test_history_without_a_change_reports_none_and_a_fidelity_drop_is_one(tmp_path):
    quiet, worse = tmp_path / "q.db", tmp_path / "w.db"
    fill_history(quiet, 10, slower_from=None)
    assert "no change found over 10 points" in history("--db", str(quiet), "--changes")
    fill_history(worse, 10, slower_from=None, kl_up_from=4)
    assert "mean KL at point 4" in history("--db", str(worse), "--changes")


def test_history_writes_its_page_and_plots_and_refuses_bad_input(tmp_path):
    db = tmp_path / "h.db"
    fill_history(db, 6, slower_from=4)
    page = tmp_path / "history.html"
    history("--db", str(db), "--changes", "-f", "html", "--out", str(page), "--plot", str(tmp_path))
    assert "data:image/png;base64," in page.read_text()
    assert (tmp_path / "history-1.png").read_bytes().startswith(b"\x89PNG")
    for bad, says in (
        (["--alpha", "2"], "--alpha"),
        (["--where", "ctx=999"], "no finished results"),
        (["--backend", "nope"], "--backend 'nope'"),
    ):
        result = runner.invoke(app, ["history", "--db", str(db), *bad])
        assert result.exit_code == 2 and says in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize("points", [1, 3])
def test_a_short_history_is_shown_without_a_search(tmp_path, points):
    db = tmp_path / "h.db"
    fill_history(db, points, slower_from=None)
    text = history("--db", str(db), "--changes")
    assert f"no change found over {points} points (searched: nothing" in text
