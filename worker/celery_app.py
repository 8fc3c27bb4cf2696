"""The Celery app, its settings, and the one task: run a job and publish its result.

Process model (chosen, not defaulted):
- **prefork pool, concurrency 1, one child per job** (`worker_max_tasks_per_child=1`).
  The parent never imports torch, so forking is safe (fork after OpenMP has started
  its thread pool is not); each job gets a fresh process whose thread pools are sized
  for that job and whose peak RSS is that job's alone. The parent stays free while a
  job runs, so remote control (`farm status`) answers, a lost broker connection is
  noticed, and the hard time limit can kill a stuck child. The `solo` pool would run
  the job in the consumer itself: no remote control and no hard limit while it runs.
- The child's CPU affinity and OMP_NUM_THREADS are inherited from the parent, which
  `farm worker --cpus` pinned before Celery started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery, Task
from celery.signals import worker_process_init

TASK_NAME = "whistle_stop.run_job"


@dataclass(frozen=True)
class FarmSettings:
    """Limits that every app sharing the broker must agree on (read from the environment)."""

    time_limit_s: float = field(
        default_factory=lambda: float(os.environ.get("FARM_JOB_TIME_LIMIT", 3600))
    )
    grace_s: float = field(default_factory=lambda: float(os.environ.get("FARM_JOB_GRACE", 60)))
    max_attempts: int = field(default_factory=lambda: int(os.environ.get("FARM_MAX_ATTEMPTS", 3)))

    @property
    def hard_limit_s(self) -> float:
        return self.time_limit_s + self.grace_s


def celery_config(broker_url: str, settings: FarmSettings) -> dict:
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


@dataclass
class WorkerContext:
    """Set by `farm worker` in the parent; forked children inherit it."""

    name: str = "worker"
    cache_dir: Path = Path("~/.cache/whistle-stop").expanduser()
    settings: FarmSettings = field(default_factory=FarmSettings)


CONTEXT = WorkerContext()


class FarmTask(Task):
    """Failures the child cannot report itself are reported here, in the parent."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        from billiard.exceptions import TimeLimitExceeded

        if isinstance(exc, TimeLimitExceeded) and len(args) == 3:
            sweep, job_id, _ = args
            _channel(self.app).publish(
                sweep, "result", job_id, task_id,
                {"status": "failed", "worker": CONTEXT.name,
                 "error": f"TimeLimitExceeded: the job passed the hard time limit of "
                          f"{CONTEXT.settings.hard_limit_s:g} s and was killed"},
            )  # fmt: skip


def make_app(broker_url: str, settings: FarmSettings | None = None) -> Celery:
    app = Celery("whistle_stop")
    app.conf.update(celery_config(broker_url, settings or FarmSettings()))
    app.task(bind=True, name=TASK_NAME, base=FarmTask)(run_job_task)
    return app


def run_job_task(self: Task, sweep: str, job_id: int, spec: dict) -> str:
    """Run one job unless it is done already, crashed too often, or running elsewhere.

    Whatever goes wrong outside the job itself (a time limit while waiting for a
    lease, say) still ends as a failed result, never as silence. Losing the broker
    is not such a failure: the job is delivered again once it is back.
    """
    import redis

    channel, task_id = _channel(self.app), self.request.id
    try:
        return _run_once(channel, task_id, sweep, job_id, spec)
    except redis.RedisError:
        raise  # the broker is away: the unacked message comes back and the job runs again
    except Exception as error:  # not BaseException: a cancelled child exits, and is redelivered
        import traceback

        channel.publish(sweep, "result", job_id, task_id, {
            "status": "failed", "worker": CONTEXT.name,
            "error": f"{type(error).__name__} outside the job: {traceback.format_exc()}",
        })  # fmt: skip
        raise


def _run_once(channel, task_id: str, sweep: str, job_id: int, spec: dict) -> str:
    from worker.channel import holder_name
    from worker.runner import run_job

    if channel.is_done(task_id):
        return "duplicate: already done"
    attempt = channel.count_attempt(task_id)
    limit = CONTEXT.settings.max_attempts
    if attempt > limit:
        channel.publish(sweep, "result", job_id, task_id, {
            "status": "failed", "worker": CONTEXT.name,
            "error": f"WorkerLost: the job crashed its worker {limit} time(s); not tried again",
        })  # fmt: skip
        return "failed: too many attempts"
    with channel.lease(task_id, holder_name()) as mine:
        if not mine:
            return "duplicate: finished elsewhere"
        channel.publish(
            sweep, "started", job_id, task_id, {"worker": CONTEXT.name, "attempt": attempt}
        )  # noqa: E501
        payload = run_job(spec, cache_dir=CONTEXT.cache_dir, worker_name=CONTEXT.name)
        payload["attempt"] = attempt
        channel.publish(sweep, "result", job_id, task_id, payload)
    return payload["status"]


def _channel(app: Celery):
    from worker.channel import WorkerChannel

    return WorkerChannel(app.conf.broker_url)


@worker_process_init.connect
def _child_start(**_kwargs) -> None:
    """In each forked child: die with the parent, and import torch before the job.

    Without PDEATHSIG a job would keep running (and publishing) after its worker was
    killed; importing torch here keeps it out of the job's own timings.
    """
    import ctypes
    import signal

    from worker.runner import preload

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    preload()
