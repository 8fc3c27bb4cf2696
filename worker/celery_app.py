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

from dataclasses import dataclass, field, replace
from pathlib import Path

from celery import Celery, Task
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger

from contract.jobspec import JobSpec
from contract.payload import ResultPayload
from contract.queue import TASK_NAME, FarmSettings, celery_config

logger = get_task_logger(__name__)


@dataclass
class WorkerContext:
    """Set by `farm worker` in the parent; forked children inherit it."""

    name: str = "worker"
    cache_dir: Path = Path("~/.cache/whistle-stop").expanduser()
    settings: FarmSettings = field(default_factory=FarmSettings)
    preload: bool = True  # import torch in each child before its job (off: no-op backends)
    cpus: list[int] | None = None  # the CPU set this worker was given (pinning is checked on it)


CONTEXT = WorkerContext()


class FarmTask(Task):
    """Failures the child cannot report itself are reported here, in the parent."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        from billiard.exceptions import TimeLimitExceeded

        if isinstance(exc, TimeLimitExceeded) and len(args) == 3 and isinstance(args[0], str):
            sweep, job_id, spec = args
            error = (f"TimeLimitExceeded: the job passed the hard time limit of "
                     f"{CONTEXT.settings.hard_limit_s:g} s and was killed")  # fmt: skip
            key = JobSpec.from_dict(spec).key  # it was accepted before it ran
            _channel(self.app).result(sweep, job_id, task_id, _failed(error, key))


def _failed(error: str, key: str | None) -> ResultPayload:
    return ResultPayload.failed(CONTEXT.name, error, key=key)


def make_app(broker_url: str, settings: FarmSettings | None = None) -> Celery:
    app = Celery("whistle_stop")
    app.conf.update(celery_config(broker_url, settings or FarmSettings()))
    app.task(bind=True, name=TASK_NAME, base=FarmTask)(run_job_task)
    return app


def run_job_task(self: Task, *args, **kwargs) -> str:
    """Run one job unless it is malformed, done already, crashed too often, or running
    elsewhere.

    The broker is a trust boundary: a message whose arguments are not (sweep, job id,
    job spec) of this version's schema is logged and dropped (acknowledged, nothing
    published, nothing imported). A well-formed job naming a backend this worker does
    not have fails with that reason. Whatever goes wrong outside the job itself (a time
    limit while waiting for a lease, say) still ends as a failed result, never as
    silence. Losing the broker is not such a failure: the job is delivered again.
    """
    import redis

    from worker.messages import RejectedMessage, accept

    task_id = self.request.id
    try:
        sweep, job_id, spec = accept(task_id, args, kwargs)
    except RejectedMessage as rejected:
        logger.error("dropped job message %s: %s", task_id, rejected)
        return f"rejected: {rejected}"
    channel = _channel(self.app)
    installed = registry_names()
    if spec.backend not in installed:
        error = (f"backend {spec.backend!r} is not installed on worker {CONTEXT.name}; "
                 f"it has: {', '.join(installed)}")  # fmt: skip
        channel.result(sweep, job_id, task_id, _failed(error, spec.key))
        return "failed: unknown backend"
    try:
        return _run_once(channel, task_id, sweep, job_id, spec)
    except redis.RedisError:
        raise  # the broker is away: the unacked message comes back and the job runs again
    except Exception as error:  # not BaseException: a cancelled child exits, and is redelivered
        import traceback

        error_text = f"{type(error).__name__} outside the job: {traceback.format_exc()}"
        channel.result(sweep, job_id, task_id, _failed(error_text, spec.key))
        raise


def _run_once(channel, task_id: str, sweep: str, job_id: int, spec: JobSpec) -> str:
    from worker.channel import holder_name
    from worker.runner import run_job

    if channel.is_done(task_id):
        return "duplicate: already done"
    attempt = channel.count_attempt(task_id)
    limit = CONTEXT.settings.max_attempts
    if attempt > limit:
        error = f"WorkerLost: the job crashed its worker {limit} time(s); not tried again"
        channel.result(sweep, job_id, task_id, _failed(error, spec.key))
        return "failed: too many attempts"
    with channel.lease(task_id, holder_name()) as mine:
        if not mine:
            return "duplicate: finished elsewhere"
        channel.started(sweep, job_id, task_id, CONTEXT.name, attempt)
        result = run_job(spec.to_dict(), cache_dir=CONTEXT.cache_dir, worker_name=CONTEXT.name,
                         assigned_cpus=CONTEXT.cpus)  # fmt: skip
        channel.result(sweep, job_id, task_id, replace(result, attempt=attempt))
    return result.status


def registry_names() -> list[str]:
    from backends.registry import names

    return names()


def _channel(app: Celery):
    from worker.channel import WorkerChannel

    return WorkerChannel(app.conf.broker_url, CONTEXT.settings.lease_s)


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
    if CONTEXT.preload:
        preload()
