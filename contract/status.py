"""Job statuses: the only spelling of them anywhere in the project."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """pending -> queued (Celery only) -> running -> done | failed."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)


UNFINISHED = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
