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
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from celery import Celery, Task
from celery.signals import task_received, worker_process_init
from celery.utils.log import get_task_logger
from celery.worker.request import Request

from whistle_stop.contract.jobspec import JobSpec
from whistle_stop.contract.payload import ResultPayload, last_words
from whistle_stop.contract.queue import TASK_NAME, FarmSettings, celery_config
from whistle_stop.worker import failpoints

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


class FarmRequest(Request):
    """In the parent: a child that died mid-job (an engine's SIGILL, the OOM killer) leaves
    how it died and the last lines it wrote to stderr beside the job, in the broker, for
    whichever worker gives the job up after its last attempt."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        from billiard.exceptions import WorkerLostError

        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        if isinstance(exc, WorkerLostError):
            try:
                path = stderr_path(self.id)
                channel = _channel(self.task.app)
                channel.crashed(self.id, _death(str(exc)), last_words(path))
                channel.requeued(self.id)  # task_reject_on_worker_lost puts it back
                path.unlink(missing_ok=True)
            except Exception:  # noqa: BLE001 - the record is a courtesy; the requeue is not
                logger.exception("could not record how job %s died", self.id)
        return super().on_failure(exc_info, send_failed_event, return_ok)


def _death(text: str) -> str:
    """billiard's "Worker exited prematurely: signal 4 (SIGILL) Job: 0." -> "killed by
    SIGILL"; "...: exitcode 3 ..." -> "exit code 3"."""
    if found := re.search(r"signal \d+ \((\w+)\)", text):
        return f"killed by {found.group(1)}"
    if found := re.search(r"exitcode (-?\d+)", text):
        return f"exit code {found.group(1)}"
    return text


def stderr_path(task_id: str) -> Path:
    return CONTEXT.cache_dir / "logs" / f"celery-{task_id}.stderr"


class FarmTask(Task):
    """Failures the child cannot report itself are reported here, in the parent."""

    Request = FarmRequest

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        from billiard.exceptions import TimeLimitExceeded

        if isinstance(exc, TimeLimitExceeded) and len(args) == 3 and isinstance(args[0], str):
            sweep, job_id, spec = args
            error = (
                f"TimeLimitExceeded: the job passed the hard time limit of "
                f"{CONTEXT.settings.hard_limit_s:g} s and was killed"
            )
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

    from whistle_stop.worker.messages import RejectedMessage, accept

    task_id = self.request.id
    failpoints.reached("startup")
    try:
        sweep, job_id, spec = accept(task_id, args, kwargs)
    except RejectedMessage as rejected:
        logger.error("dropped job message %s: %s", task_id, rejected)
        return f"rejected: {rejected}"
    channel = _channel(self.app)
    installed = registry_names()
    if spec.backend not in installed:
        error = (
            f"backend {spec.backend!r} is not installed on worker {CONTEXT.name}; "
            f"it has: {', '.join(installed)}"
        )
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
    from whistle_stop.worker.channel import holder_name
    from whistle_stop.worker.runner import run_job

    if channel.is_done(task_id):
        return "duplicate: already done"
    attempt = channel.count_attempt(task_id)
    limit = CONTEXT.settings.max_attempts
    if attempt > limit:
        crash = channel.last_crash(task_id)
        last = f" (last: {crash['death']})" if crash["death"] else ""
        error = (
            f"{crash['said']}WorkerLost: the job crashed its worker {limit} time(s)"
            f"{last}; not tried again"
        )
        channel.result(sweep, job_id, task_id, _failed(error, spec.key))
        return "failed: too many attempts"
    failpoints.reached("counted")
    with channel.lease(task_id, holder_name()) as mine:
        if not mine:
            return "duplicate: finished elsewhere"
        channel.started(sweep, job_id, task_id, CONTEXT.name, attempt)
        failpoints.reached("leased")
        with _stderr_to(stderr_path(task_id)):
            result = run_job(
                spec.to_dict(),
                cache_dir=CONTEXT.cache_dir,
                worker_name=CONTEXT.name,
                assigned_cpus=CONTEXT.cpus,
            )
        channel.result(sweep, job_id, task_id, replace(result, attempt=attempt))
        failpoints.reached("published")
    return result.status


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """The job's file descriptor 2 (what C libraries write to) in a file of its own, so the
    parent can quote it if the job kills its process; removed when the job ends alive."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as file:
        os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        path.unlink(missing_ok=True)


def registry_names() -> list[str]:
    from whistle_stop.backends.registry import names

    return names()


def _channel(app: Celery):
    from whistle_stop.worker.channel import WorkerChannel

    return WorkerChannel(app.conf.broker_url, CONTEXT.settings.lease_s)


@task_received.connect
def _claim_at_delivery(sender, request, **_kwargs) -> None:
    """In the main process, the moment a job's message arrives: claim the job.

    Why here and not in the child: a child spends seconds between delivery and the
    lease it takes to run the job (it may still be importing torch, then it checks the
    message and counts the attempt). A worker that dies in that window held no lease,
    so nothing would lapse and the broker would hand the message out again only after
    its visibility timeout (hours). The main process claims the job before any of that
    and its heartbeat (worker/serve.py) renews the claim until the job is over, so the
    job is watched from delivery to acknowledgement, prefetched messages included.
    """
    if request.name != TASK_NAME or len(request.id) > 64:
        return  # not a job of ours (its checks come in the child, with the reason)
    from redis import RedisError

    try:
        _delivery_channel(sender.app).claim_delivery(request.id, CONTEXT.name)
    except RedisError:  # the broker is away: the message is redelivered to someone
        logger.exception("could not claim job %s", request.id)
    failpoints.reached("delivered")


_DELIVERY_CHANNEL = None


def _delivery_channel(app: Celery):
    global _DELIVERY_CHANNEL
    if _DELIVERY_CHANNEL is None:  # one connection pool for the main process's claims
        _DELIVERY_CHANNEL = _channel(app)
    return _DELIVERY_CHANNEL


@worker_process_init.connect
def _child_start(**_kwargs) -> None:
    """In each forked child: die with the parent, and import torch before the job.

    Without PDEATHSIG a job would keep running (and publishing) after its worker was
    killed; importing torch here keeps it out of the job's own timings.
    """
    import ctypes
    import signal

    from whistle_stop.worker.runner import preload

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if CONTEXT.preload:
        preload()
