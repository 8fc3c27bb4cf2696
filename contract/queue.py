"""What the orchestrator and the Celery workers agree on in Redis.

- `farm:results:<sweep>`: a stream of `started` and `result` entries. The
  orchestrator reads it with a consumer group and acknowledges an entry only
  after committing it, so a result that lands while no orchestrator runs waits here.
- `farm:done:<task>`: set together with the result entry; a re-delivered copy
  of a finished job is dropped instead of run again.
- `farm:attempts:<task>`: incremented at each start; past the limit the job is
  failed instead of crashing another worker.
- `farm:lease:<task>`: held, with a heartbeat, by the one process running the job.
- `farm:delivery:<task>`: how many times a worker received the job, and which worker
  last did; written by the worker's main process the moment the message arrives.
- `farm:claim:<task>`: held by that main process from delivery until the job is over
  (its start-up, the child's imports, the run, the ack), renewed by its heartbeat: the
  window the lease does not cover. A job that was delivered and has neither a claim,
  a lease nor a result was lost with its worker (executors/celery.py, LeaseWatch).
- `farm:enqueued:<task>`: set when the job is published, so a re-submitted sweep
  does not publish a job that is still in flight.
- `farm:cpu:<host>:<cpu>`: claimed by a worker for each CPU of its set, so two
  workers on one host cannot share a CPU.

Also the Celery settings, which every app sharing the broker must agree on.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

TASK_NAME = "whistle_stop.run_job"
RESULTS_GROUP = "farm-orchestrator"
DONE_TTL_S = 30 * 24 * 3600  # longer than any sweep


class EntryKind(StrEnum):
    """What a result-stream entry says."""

    STARTED = "started"
    RESULT = "result"


def results_stream(sweep: str) -> str:
    return f"farm:results:{sweep}"


def task_id_for(sweep: str, job_key: str) -> str:
    """The deterministic Celery task id of a job: the same sweep and key, the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"whistle-stop:{sweep}:{job_key}"))


def done_key(task_id: str) -> str:
    return f"farm:done:{task_id}"


def attempts_key(task_id: str) -> str:
    return f"farm:attempts:{task_id}"


def crash_key(task_id: str) -> str:
    """How the job's last worker died (signal, last lines of stderr), for the failure."""
    return f"farm:crash:{task_id}"


def lease_key(task_id: str) -> str:
    return f"farm:lease:{task_id}"


def delivery_key(task_id: str) -> str:
    return f"farm:delivery:{task_id}"


def claim_key(task_id: str) -> str:
    return f"farm:claim:{task_id}"


def enqueued_key(task_id: str) -> str:
    return f"farm:enqueued:{task_id}"


def cpu_claim_key(host: str, cpu: int) -> str:
    return f"farm:cpu:{host}:{cpu}"


def job_state_keys(task_id: str) -> list[str]:
    """Everything that says a job was tried: cleared when it starts afresh."""
    return [
        done_key(task_id),
        attempts_key(task_id),
        lease_key(task_id),
        crash_key(task_id),
        delivery_key(task_id),
        claim_key(task_id),
    ]


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class FarmSettings:
    """Limits that every app sharing the broker must agree on (read from the environment)."""

    time_limit_s: float = field(default_factory=lambda: _env_float("FARM_JOB_TIME_LIMIT", 3600))
    grace_s: float = field(default_factory=lambda: _env_float("FARM_JOB_GRACE", 60))
    max_attempts: int = field(default_factory=lambda: int(os.environ.get("FARM_MAX_ATTEMPTS", 3)))
    # a delivered job's claim (and a running job's lease) lapses this long after its
    # worker's last heartbeat; whoever watches the sweep then hands the job to another
    # worker (executors/celery.py)
    lease_s: float = field(default_factory=lambda: _env_float("FARM_LEASE_S", 30))

    @property
    def hard_limit_s(self) -> float:
        return self.time_limit_s + self.grace_s


def celery_config(broker_url: str, settings: FarmSettings) -> dict:
    """The Celery settings of the farm (see worker/celery_app.py for the process model)."""
    return {
        "broker_url": broker_url,
        # a job whose worker dies is delivered again instead of being lost
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # one job at a time per worker, and no job waiting behind a running one
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_max_tasks_per_child": 1,
        # a child imports torch and transformers before it reports ready (~4 s here, more on
        # a busy host); the default 4 s limit would kill and respawn it forever
        "worker_proc_alive_timeout": 120,
        # the soft limit raises inside the job (recorded as failed); the hard limit kills it
        "task_soft_time_limit": settings.time_limit_s,
        "task_time_limit": settings.hard_limit_s,
        # unacked jobs come back after this: it must exceed the hard limit, or a job
        # still running would be handed to a second worker
        "broker_transport_options": {
            "visibility_timeout": 2 * settings.hard_limit_s,
            "unacked_restore_interval": 5,  # look for lost jobs every 5 s ...
            "unacked_restore_throttle": 1,  # ... on every look, not every tenth
            "socket_connect_timeout": 5,
        },
        # a job running when the broker connection drops is stopped and redelivered,
        # since its ack could not reach the broker anyway
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # keep reconnecting while the broker restarts
        # enqueueing survives a broker blip
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 5, "interval_start": 0.5, "interval_step": 1},
        # JSON only: a broker message must never be able to run code by unpickling
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # results travel through our own stream; Celery's result store holds nothing
        # long, and what it holds outlives any sweep
        "task_ignore_result": True,
        "result_expires": 30 * 24 * 3600,
        "worker_hijack_root_logger": True,
        "worker_redirect_stdouts_level": "INFO",
    }


def broker_problem(redacted_url: str, error: BaseException) -> str:
    """One line for a broker that cannot be used, with what to do about it."""
    text = str(error)
    kind = type(error).__name__
    if "Authentication" in kind or "NOAUTH" in text or "WRONGPASS" in text:
        return (
            f"the broker at {redacted_url} refused the password ({text.strip() or kind}); "
            "put the right one in the URL: redis://:PASSWORD@HOST:6379/0"
        )
    return (
        f"the broker at {redacted_url} does not answer ({kind}); start Redis "
        "(e.g. `docker compose up -d redis`) or fix --broker / FARM_BROKER_URL"
    )
