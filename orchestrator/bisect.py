"""`farm bisect`: the first revision of the project between a good and a bad one that made
a cell slower, found by binary search with the verdict's intervals.

Each revision runs from a git worktree of the repository, its packages laid out as
pyproject maps them (symlinks, no install), and only the worker comes from it: this
orchestrator plans, dispatches and stores, so every measurement lands in one database
(each a one-job sweep `<name>@<revision>-<n>`, on `farm history`'s timeline with its
revision). Revisions are compared within an attempt, as a sweep compares paths within a
round: the host's drift between attempts cancels in the ratios. The ends are measured
first, in alternating order, until bad/good is decidedly slower (contract/figures.py's
verdict on the ratios' interval); then each midpoint, between the last good and the
first bad revision known, until it is decidedly slower than the good one or decidedly
faster than the bad one. A midpoint still undecided after the most attempts stops the
search there and says so, as Pinpoint says unknown.
"""

from __future__ import annotations

import statistics
import subprocess
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from whistle_stop.contract.figures import SLOWER, ratio_interval, verdict
from whistle_stop.orchestrator.dispatch import run_sweep
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import SweepPlan


class BisectError(ValueError):
    """A range that cannot be bisected: not revisions, not an ancestry path, no cell."""


def git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except (OSError, ValueError) as error:  # no git; a NUL byte in an argument
        raise BisectError(f"git {' '.join(args)!r}: {error}") from None
    if done.returncode != 0:
        raise BisectError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def revision_range(repo: Path, good: str, bad: str) -> list[str]:
    """good, then each first-parent commit after it up to bad: full hashes, oldest first."""
    ends = []
    for name in (good, bad):
        try:
            ends.append(git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"))
        except BisectError:
            raise BisectError(f"{name!r} is not a revision of {repo}") from None
    if ends[0] == ends[1]:
        raise BisectError("good and bad are the same revision")
    ancestry = ["git", "-C", str(repo), "merge-base", "--is-ancestor", *ends]
    if subprocess.run(ancestry, capture_output=True).returncode:
        raise BisectError(f"{good} is not an ancestor of {bad}: nothing between them to bisect")
    between = git(repo, "rev-list", "--reverse", "--first-parent", f"{ends[0]}..{ends[1]}")
    return [ends[0], *between.split()]


def checkout(repo: Path, revision: str, under: Path) -> Path:
    """A worktree of `revision` and beside it a directory that imports as that revision's
    `whistle_stop` (its pyproject's package-dir mapping, as symlinks): put it first on
    PYTHONPATH. The worktree keeps its .git, so a result records its revision."""
    tree, site = under / revision / "tree", under / revision / "site"
    if not tree.exists():
        tree.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "add", "--detach", "--force", str(tree), revision)
    if not site.exists():
        mapping = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]
        folders = mapping.get("package-dir", {})
        package = site.with_suffix(".partial") / "whistle_stop"
        package.mkdir(parents=True, exist_ok=True)
        for entry in (tree / folders.get("whistle_stop", "whistle_stop")).iterdir():
            (package / entry.name).symlink_to(entry)
        for name, folder in folders.items():
            if name.startswith("whistle_stop."):
                (package / name.removeprefix("whistle_stop.")).symlink_to(tree / folder)
        package.parent.rename(site)
    return site


def remove_worktrees(repo: Path, under: Path) -> None:
    for tree in under.glob("*/tree"):
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)])


@dataclass
class Bisection:
    revisions: list[str]
    speeds: dict[str, list[float]] = field(default_factory=dict)  # decode tok/s, one a job
    first_bad: str | None = None
    why: str = ""  # what stopped the search, when it did not name a revision


# a revision's runner: the revision, the sweep name -> its job's tok/s (None if it failed)
Measure = Callable[[str, str], Awaitable[float | None]]


async def bisect(
    revisions: list[str],
    measure: Measure,
    name: str,
    margin: float,
    attempts: tuple[int, int],
    say: Callable[[str], None],
) -> Bisection:
    """Binary search over `revisions` (good first, bad last) for the first slower one;
    `attempts` = (first, most) attempts at a revision before it is judged."""
    first, most = attempts
    found = Bisection(revisions)
    counter = iter(range(1, 1_000_000))

    async def one(revision: str) -> float:
        speed = await measure(revision, f"{name}@{revision[:8]}-{next(counter)}")
        if speed is None:
            raise BisectError(f"the job failed at {revision[:8]}: see farm report")
        found.speeds.setdefault(revision, []).append(speed)
        return speed

    def slower(ratios: list[float]) -> bool:
        # 99%, not 95%: the interval is looked at after every attempt, and each look is
        # another chance for noise to pass as a step
        return verdict(ratio_interval(ratios, confidence=0.99), margin) == SLOWER

    good_end, bad_end = revisions[0], revisions[-1]
    ratios: list[float] = []  # bad / good, within an attempt: drift between attempts cancels
    for count in range(most):
        pair = [good_end, bad_end] if count % 2 == 0 else [bad_end, good_end]
        speeds = {revision: await one(revision) for revision in pair}
        ratios.append(speeds[bad_end] / speeds[good_end])
        if count + 1 >= first and slower(ratios):
            break
    else:
        low, high = ratio_interval(ratios, confidence=0.99) or (float("nan"),) * 2
        found.why = (
            f"bad is not shown slower than good after {most} attempts: "
            f"bad/good {low:.2f}-{high:.2f} (99% interval)"
        )
        return found
    say(f"bad/good {statistics.median(ratios):.2f}x: slower; bisecting {len(revisions)}")
    lo, hi = 0, len(revisions) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probe, good, bad = revisions[mid], revisions[lo], revisions[hi]
        after_good, before_bad = [], []  # probe / good, bad / probe, within each attempt
        answer = ""
        for count in range(most):
            order = [good, probe, bad] if count % 2 == 0 else [bad, probe, good]
            speeds = {revision: await one(revision) for revision in order}
            after_good.append(speeds[probe] / speeds[good])
            before_bad.append(speeds[bad] / speeds[probe])
            if count + 1 >= first:
                answer = "bad" if slower(after_good) else "good" if slower(before_bad) else ""
                if answer:
                    break
        if not answer:
            found.why = (
                f"{probe[:8]} stayed undecided after {most} attempts: the first bad "
                f"revision is after {good[:8]} and at or before {bad[:8]}"
            )
            return found
        say(f"{probe[:8]}: {answer} (probe/good {statistics.median(after_good):.2f}x)")
        lo, hi = (mid, hi) if answer == "good" else (lo, mid)
    found.first_bad = revisions[hi]
    return found


def one_job_runner(plan: SweepPlan, store: Store, executor_for, console: Console) -> Measure:
    """Measure: the plan's one job as a sweep of its own, on the revision's executor."""

    async def measure(revision: str, sweep: str) -> float | None:
        executor = await executor_for(revision)
        await run_sweep(replace(plan, name=sweep), store, executor, console, quiet=True)
        speeds = store.speeds(sweep)
        return speeds[0][1] if speeds else None

    return measure
