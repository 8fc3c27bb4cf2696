"""What happens to a job, as the executors report it and the store records it.

An executor (local pool or Celery workers) yields these events; `orchestrator/dispatch.py`
hands each to the store, the single writer. They live in the contract because both sides
speak them: the executors produce them, the store consumes them, neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from whistle_stop.contract.payload import ResultPayload
from whistle_stop.contract.status import JobStatus


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
