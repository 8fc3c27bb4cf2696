"""farm bisect over real revisions: a scratch clone of this repository with a slowdown
planted in one commit, each revision's worker run from its own worktree."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from whistle_stop.cli import app
from whistle_stop.orchestrator.bisect import BisectError, revision_range

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

CELL = """
name: cal
model: random:gpt2
backends: [{name: calibration, megabytes: 64}]   # 64 and 128 MB: past the caches
context_sizes: [8]
generation_lengths: [8]
threads: [1]
warmups: 1
repeats: 2
fidelity_tokens: 0
bandwidth: host
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def scratch(tmp_path) -> tuple[Path, list[str]]:
    """A clone of this checkout's HEAD and three commits on it: a comment, the calibration
    backend reading twice the bytes a step (the planted slowdown), another comment."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs this project as a git checkout (its history is what is bisected)")
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    for key, value in (("user.email", "t@example.com"), ("user.name", "t")):
        git(repo, "config", key, value)
    commits = [git(repo, "rev-parse", "HEAD")]
    source = repo / "backends" / "calibration.py"
    edits = [
        ("# a harmless comment\n", None),
        (None, ("(1 + options.slowdown)", "(2 + 2 * options.slowdown)")),
        ("# another harmless comment\n", None),
    ]
    for number, (comment, change) in enumerate(edits, 1):
        text = source.read_text()
        if change:
            assert change[0] in text
            text = text.replace(*change)
        source.write_text(text + (comment or ""))
        git(repo, "commit", "-qam", f"scratch {number}")
        commits.append(git(repo, "rev-parse", "HEAD"))
    return repo, commits


@pytest.mark.slow
def test_bisect_names_the_commit_that_planted_the_slowdown(scratch, tmp_path):
    repo, commits = scratch
    grid = tmp_path / "cell.yaml"
    grid.write_text(CELL)
    db = tmp_path / "b.db"
    args = ["bisect", "--repo", str(repo), "--good", commits[0], "--bad", commits[-1]]
    args += ["--grid", str(grid), "--db", str(db), "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"first bad revision: {commits[2]}" in result.output
    assert "scratch 2" in result.output
    # every job is on the timeline, under the revision it ran
    history = runner.invoke(app, ["history", "--db", str(db), "-f", "json"])
    (series,) = json.loads(history.stdout)
    ran = {point["git_revision"] or "-" for point in series["points"]}
    assert {commits[0][:12], commits[2][:12], commits[-1][:12]} <= ran
    assert not list((tmp_path / "cache" / "bisect").glob("*/tree"))  # worktrees removed


def test_a_range_that_is_not_one_is_refused_in_one_line(scratch, tmp_path):
    repo, commits = scratch
    with pytest.raises(BisectError, match="same revision"):
        revision_range(repo, commits[1], commits[1])
    with pytest.raises(BisectError, match="not an ancestor"):
        revision_range(repo, commits[-1], commits[0])
    with pytest.raises(BisectError, match="'nope' is not a revision"):
        revision_range(repo, "nope", commits[0])
    assert revision_range(repo, commits[0], commits[-1]) == commits
    grid = tmp_path / "two.yaml"
    grid.write_text(CELL.replace("context_sizes: [8]", "context_sizes: [8, 16]"))
    result = runner.invoke(
        app,
        ["bisect", "--repo", str(repo), "--good", commits[0], "--bad", commits[-1]]
        + ["--grid", str(grid), "--db", str(tmp_path / "x.db")],
    )
    assert result.exit_code == 2 and "measures one cell" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.db").exists()
