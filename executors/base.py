"""The seam between the orchestrator and whatever runs the jobs.

An executor takes jobs and yields typed events as they happen (in batches of those that
arrived together); it never touches the
database. `orchestrator/dispatch.py` consumes the events and hands them to the store,
so everything written about a job is written once, whichever executor ran it (in the
spirit of optimum-benchmark's launchers: one `launch`, many ways to launch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from whistle_stop.contract.events import Event, PendingJob


class Executor(Protocol):
    """Runs jobs somewhere and says what happens to them."""

    # True when jobs go on without the orchestrator (a broker's workers); False when
    # they die with it (the local pool), so an interrupted sweep puts them back to pending
    detached: bool

    def describe(self) -> str:
        """Where the jobs run, for the line printed before a sweep starts."""
        ...

    def run(
        self, sweep: str, jobs: Sequence[PendingJob], *, wait: bool
    ) -> AsyncIterator[list[Event]]:
        """Start `jobs`; yield their events until each has finished (or, if `wait` is
        false and the executor is detached, once each is queued). Events come in batches
        of those that arrived together; the caller stores a batch in one transaction
        before it asks for the next."""
        ...

    def follow(
        self, sweep: str, jobs: Sequence[PendingJob], *, wait: bool
    ) -> AsyncIterator[list[Event]]:
        """Events of jobs started earlier: those that landed while nobody watched, then,
        with `wait`, the rest until every one of `jobs` has finished."""
        ...

    async def aclose(self) -> None: ...
