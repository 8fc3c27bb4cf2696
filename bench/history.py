"""A real history: one cell measured at each commit of a scratch branch of this project,
a slowdown planted in one commit, and what `farm history --changes` and `farm bisect`
find in it.

Clones this checkout's HEAD, adds --points commits (each a harmless comment; commit
--step-at makes the calibration backend's `slowdown` cost more, so the path `planted`
(slowdown 0.05) reads --slowdown more bytes a step, while `control`, slowdown 0 and the
sweep's baseline, is left alone, as a regression in one backend leaves transformers
alone), then runs the two paths once per commit, oldest first, each commit a sweep of
--rounds rounds with its worker from that commit's worktree (orchestrator/bisect.py's
checkout), and prints `farm history --changes`: tok/s carries the host's drift between
sweeps, the speedup over the control cancels it. With --slowdown 0 the planted commit
changes nothing measured: the history must show no change. With --bisect, `farm bisect`
runs `planted` over the same range (into a database of its own).

    farm bench history --points 10 --step-at 6 --slowdown 0.10 [--bisect]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
from pathlib import Path

from rich.console import Console

from whistle_stop.bench.common import CHECKOUT, counting, farm
from whistle_stop.db.session import make_session_factory
from whistle_stop.executors.local import LocalExecutor, plan_cpu_sets
from whistle_stop.orchestrator.bisect import checkout, git, remove_worktrees
from whistle_stop.orchestrator.dispatch import run_sweep
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep

CELL = """name: {name}
model: random:gpt2
backends:
  - {{name: calibration, label: control}}
  - {{name: calibration, slowdown: 0.05, label: planted}}
baseline: control
context_sizes: [8]
generation_lengths: [32]
threads: [1]
warmups: 1
repeats: 3
min_duration_s: 0.5
fidelity_tokens: 0
bandwidth: host
rounds: {rounds}
"""


def scratch_branch(repo: Path, points: int, step_at: int, slowdown: float) -> list[str]:
    subprocess.run(["git", "clone", "-q", str(CHECKOUT), str(repo)], check=True)
    git(repo, "config", "user.email", "bench@example.com")
    git(repo, "config", "user.name", "bench")
    source = repo / "backends" / "calibration.py"
    commits = []
    for point in range(1, points + 1):
        text = source.read_text()
        if point == step_at:  # the planted slowdown: more bytes read a step, for real
            factor = ((1 + slowdown) * 1.05 - 1) / 0.05  # 1 + 0.05 x factor = 1.05 (1 + s)
            text = text.replace("(1 + options.slowdown)", f"(1 + {factor:.4f} * options.slowdown)")
        source.write_text(text + f"# point {point}\n")
        git(repo, "commit", "-qam", f"point {point}" + (" (planted)" if point == step_at else ""))
        commits.append(git(repo, "rev-parse", "HEAD"))
    return commits


async def one_point(repo: Path, commit: str, name: str, rounds: int, db: str, cache: Path):
    site = checkout(repo, commit, cache / "bisect")
    executor = LocalExecutor(plan_cpu_sets(None, None), cache, code=site)
    plan = parse_sweep(CELL.format(name=name, rounds=rounds), origin="-", default_name=name)
    try:
        await run_sweep(plan, Store(make_session_factory(db)), executor, Console(quiet=True))
    finally:
        await executor.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=counting, default=10)
    parser.add_argument("--step-at", type=counting, default=6, help="the planted commit (1-based)")
    parser.add_argument("--slowdown", type=float, default=0.10, help="0: plant nothing")
    parser.add_argument("--rounds", type=counting, default=5, help="rounds a point")
    parser.add_argument("--db", type=Path, help="keep the results here")
    parser.add_argument("--bisect", action="store_true", help="then farm bisect the range")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        repo, cache = tmp / "repo", tmp / "cache"
        db = str(args.db or tmp / "history.db")
        commits = scratch_branch(repo, args.points, args.step_at, args.slowdown)
        try:
            for point, commit in enumerate(commits, 1):
                asyncio.run(one_point(repo, commit, f"point-{point:02d}", args.rounds, db, cache))
                print(f"point {point}: {commit[:8]} measured", flush=True)
        finally:
            remove_worktrees(repo, cache / "bisect")
        farm("history", "--changes", "--db", db)
        if args.bisect:
            grid = tmp / "cell.yaml"
            cell = CELL.format(name="bisect", rounds=1).replace("baseline: control\n", "")
            grid.write_text(cell.replace("  - {name: calibration, label: control}\n", ""))
            # good: the commit before the first point (the clone's HEAD)
            good = git(repo, "rev-parse", f"{commits[0]}~1")
            ends = ["--repo", str(repo), "--good", good, "--bad", commits[-1]]
            bisected = str(tmp / "bisect.db")
            farm("bisect", *ends, "--grid", str(grid), "--db", bisected, "--cache-dir", str(cache))
