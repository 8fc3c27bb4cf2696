"""What a job message from the broker must be before the worker acts on it.

Anyone who can write to the broker can put a message on the queue, so a message is
data to check, never instructions: its arguments must be exactly (sweep name, job id,
job spec), the spec must pass `JobSpec.from_dict` (every field, every type), and its
options must validate against the named backend's own options model. Nothing is
imported before the backend's name is found among the installed ones.
"""

from __future__ import annotations

from typing import Any

from whistle_stop.contract.jobspec import JobSpec, MalformedJobError
from whistle_stop.contract.queue import task_id_for

MAX_SWEEP_NAME = 200  # the sweeps.name column


class RejectedMessage(ValueError):
    """A message that is not a job of this version; the text says what is wrong."""


def accept(task_id: str, args: Any, kwargs: Any) -> tuple[str, int, JobSpec]:
    """(sweep, job id, spec) from a task message, or `RejectedMessage`.

    The task id must be the one the orchestrator derives from the sweep and the spec's
    key (contract/queue.py), so a message cannot speak for another job than its own.
    """
    if kwargs:
        raise RejectedMessage(f"unexpected keyword arguments {sorted(map(str, kwargs))}")
    if not isinstance(args, list | tuple) or len(args) != 3:
        raise RejectedMessage("expected 3 arguments: sweep name, job id, job spec")
    sweep, job_id, spec = args
    if not isinstance(sweep, str) or not 0 < len(sweep) <= MAX_SWEEP_NAME:
        raise RejectedMessage("the sweep name must be a string of 1 to 200 characters")
    if not isinstance(job_id, int) or isinstance(job_id, bool) or job_id < 1:
        raise RejectedMessage("the job id must be a positive integer")
    try:
        job = JobSpec.from_dict(spec)
    except MalformedJobError as error:
        raise RejectedMessage(f"malformed job spec: {error}") from None
    if task_id != task_id_for(sweep, job.key):
        raise RejectedMessage("its task id is not the one of its sweep and job spec")
    _check_options(job)
    return sweep, job_id, job


def _check_options(job: JobSpec) -> None:
    from whistle_stop.backends import registry

    if job.backend not in registry.names():
        return  # a well-formed job this worker cannot run: the task fails it, with the reason
    try:
        registry.entry(job.backend).options.model_validate(dict(job.options))
    except Exception as error:  # pydantic's ValidationError, or a plugin that will not load
        first = str(error).splitlines()
        raise RejectedMessage(
            f"options of backend {job.backend!r}: {' '.join(first[:3])}"
        ) from None
