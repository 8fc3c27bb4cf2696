"""The seam between the orchestrator and whatever runs the jobs.

An executor takes jobs and yields typed events as they happen (in batches of those that
arrived together); it never touches the
database. `orchestrator/dispatch.py` consumes the events and hands them to the store,
so everything written about a job is written once, whichever executor ran it (in the
spirit of optimum-benchmark's launchers: one `launch`, many ways to launch).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from contract.payload import ResultPayload
from contract.status import JobStatus


@dataclass(frozen=True)
class PendingJob:
    """A job the store says must run."""

    id: int
    key: str
    spec: dict[str, Any]
    restart: bool = False  # it failed before, or --rerun: any state left from before is cleared
    round: int = 1  # the sweep's round it belongs to: rounds run one after the other


@dataclass(frozen=True)
class Queued:
    """Handed to a broker; some worker will start it."""

    job_id: int


@dataclass(frozen=True)
class Started:
    job_id: int
    worker: str
    attempt: int = 1


@dataclass(frozen=True)
class Finished:
    """Measured: the payload's status is done."""

    job_id: int
    result: ResultPayload


@dataclass(frozen=True)
class Failed:
    """Not measured: the payload's status is failed, and its error says why."""

    job_id: int
    result: ResultPayload


@dataclass(frozen=True)
class Lost:
    """Its worker stopped renewing the lease (died, froze, lost the network): the job was
    handed to the queue again, as a new attempt."""

    job_id: int
    worker: str | None
    why: str


Event = Queued | Started | Finished | Failed | Lost


def outcome(job_id: int, result: ResultPayload) -> Finished | Failed:
    return Finished(job_id, result) if result.status is JobStatus.DONE else Failed(job_id, result)


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
