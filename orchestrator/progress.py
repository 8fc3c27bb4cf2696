"""What a running sweep shows: a progress bar in a terminal, one plain line per job elsewhere.

A cut-off bar in a log file or a pipe says nothing (`quick ━━ 8/8 failed 0 0:…`), so
outside a terminal each finished job gets one line: what it was, and its speed or why
it failed. Everything goes to stderr; stdout is for results.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from whistle_stop.contract.status import JobStatus
from whistle_stop.orchestrator.store import Applied


class SweepProgress:
    """Told about each applied event by the dispatch loop; shows it."""

    def __init__(
        self, console: Console, name: str, total: int, *, quiet: bool = False, models: bool = False
    ) -> None:
        """`models`: the sweep has several, so each job's line names its model."""
        self.console, self.name, self.total, self.quiet = console, name, total, quiet
        self.models = models
        self.finished = self.failed = 0
        self.bar: Progress | None = None
        if console.is_terminal and not quiet and total:
            self.bar = _bar(console)
            self.task = self.bar.add_task(name, total=total, failed=0, current="")
            self.bar.start()

    def update(self, applied: Applied) -> None:
        if applied.status is JobStatus.RUNNING and self.bar:
            current = f"{applied.worker}: {applied.describe(model=self.models)}"
            self.bar.update(self.task, current=current)
        if applied.status not in (JobStatus.DONE, JobStatus.FAILED):
            return
        self.finished += 1
        self.failed += applied.status is JobStatus.FAILED
        if self.bar:
            self.bar.update(self.task, advance=1, failed=self.failed)
        elif not self.quiet:
            self.console.print(self._line(applied), highlight=False, markup=False, soft_wrap=True)

    def more(self, jobs: int) -> None:
        """Jobs added while the sweep runs (rounds: auto's next round)."""
        self.total += jobs
        if self.bar:
            self.bar.update(self.task, total=self.total)

    def note(self, text: str) -> None:
        """A line that stays (above the bar in a terminal), e.g. a lost worker."""
        if not self.quiet:
            printer = self.bar.console if self.bar else self.console
            printer.print(text, highlight=False, markup=False, soft_wrap=True)

    def _line(self, applied: Applied) -> str:
        count = f"{self.finished}/{self.total}" if self.total else "stored"  # 0: a backlog
        done = f"[{count}] {applied.describe(model=self.models)}"
        if applied.status is JobStatus.FAILED:
            reason = (applied.error or "").strip().splitlines()
            return f"{done}: failed: {reason[-1] if reason else 'no reason given'}"
        return f"{done}: {applied.decode_tokens_per_s or float('nan'):.1f} tok/s"

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


def _bar(console: Console) -> Progress:
    """jobs done/total, the job running now, elapsed time and an ETA."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[current]}", style="dim"),
        console=console,
        transient=False,
    )
