"""The farm for real: a private redis-server, real `farm worker` processes, real failures.

Every test starts its own Redis on a free port and its own workers, and stops them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from whistle_stop.bench.harness import FARM, FarmWorker, RedisServer, farm_env, wait_for
from whistle_stop.db.models import Job, Result
from whistle_stop.worker import failpoints

ROOT = Path(__file__).resolve().parent.parent  # the checkout: examples/ and cwd

pytestmark = [pytest.mark.slow, pytest.mark.redis]
FAULT = "fault"  # tests/plugin, installed as an entry point
TWO_CPUS = len(os.sched_getaffinity(0)) >= 2
# Short limits so lost jobs come back quickly: hard limit 8 s, visibility timeout 16 s.
LIMITS = {"FARM_JOB_TIME_LIMIT": "6", "FARM_JOB_GRACE": "2", "FARM_MAX_ATTEMPTS": "2"}


@pytest.fixture(scope="session")
def measured_bandwidth(tmp_path_factory) -> Path:
    """Each CPU set's bandwidth, measured once per session. A worker measures its own at
    start-up when its cache lacks it, which would add seconds to every worker start."""
    cache = tmp_path_factory.mktemp("bandwidth-cache")
    for cpus in ("0", "1") if TWO_CPUS else ("0",):
        subprocess.run(
            [FARM, "bandwidth", "--cpus", cpus, "--cache-dir", str(cache)],
            check=True,
            env=farm_env(),
            cwd=ROOT,
            capture_output=True,
        )
    return cache / "bandwidth"


@pytest.fixture
def farm(tmp_path, tiny_model, measured_bandwidth):
    """Start/stop helpers bound to this test's directory, Redis and database."""
    farm = Farm(tmp_path, tiny_model)
    shutil.copytree(measured_bandwidth, tmp_path / "cache" / "bandwidth")
    return farm


class Farm:
    def __init__(
        self,
        tmp_path: Path,
        model: Path,
        binds: tuple[str, ...] = ("127.0.0.1",),
        password: str = "",
    ):
        self.tmp, self.model = tmp_path, model
        self.redis = RedisServer(tmp_path / "redis", binds, password)
        self.redis.start()
        self.db = tmp_path / "farm.db"
        self.env = farm_env(**LIMITS)
        self.workers: list[FarmWorker] = []
        self.submits: list[subprocess.Popen] = []

    def worker(self, cpus: str, name: str, *, broker: str | None = None, prefix=(), start=True):
        worker = FarmWorker(
            broker or self.redis.url(),
            cpus,
            name,
            self.tmp / f"{name}.log",
            self.tmp / "cache",
            self.env,
            prefix,
        )
        self.workers.append(worker)
        return worker.start() if start else worker

    def sweep(self, backends: list[dict], *, name: str = "farm", contexts=(8,)) -> Path:
        text = {
            "name": name,
            "model": str(self.model),
            "backends": backends,
            "context_sizes": list(contexts),
            "generation_lengths": [5],
            "threads": [1],
            "warmups": 0,
            "repeats": 1,
            "fidelity_tokens": 0,
        }
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(text))  # JSON is YAML
        return path

    def submit(self, grid: Path, *extra: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [
                FARM,
                "submit",
                "--grid",
                str(grid),
                "--broker",
                self.redis.url(),
                "--db",
                str(self.db),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=ROOT,
        )
        self.submits.append(process)
        return process

    def run(self, grid: Path, *extra: str, timeout: float = 180, code: int = 0) -> str:
        """Submit and wait; `code` 3 when some job is meant to fail."""
        process = self.submit(grid, *extra)
        output, _ = process.communicate(timeout=timeout)
        assert process.returncode == code, output
        return output

    def collect(self, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`farm collect` of this test's sweep, as a user runs it."""
        return subprocess.run(
            [
                FARM,
                "collect",
                "--sweep",
                "farm",
                *extra,
                "--broker",
                self.redis.url(),
                "--db",
                str(self.db),
            ],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=ROOT,
            timeout=timeout,
        )

    def jobs(self) -> list[tuple[Job, Result | None]]:
        with Session(create_engine(f"sqlite:///{self.db}")) as session:
            rows = session.execute(select(Job, Result).outerjoin(Result).order_by(Job.id)).all()
            for _, result in rows:
                if result is not None:
                    _ = result.environment
            return rows

    def job_with_status(self, status: str):
        from sqlalchemy.exc import OperationalError

        try:
            return next((job for job, _ in self.jobs() if job.status == status), None)
        except OperationalError:  # the orchestrator has not created the tables yet
            return None

    def close(self) -> None:
        for process in self.submits:
            if process.poll() is None:
                process.kill()
        for worker in self.workers:  # the test is over: no need to wait for a warm shutdown
            if worker.process and worker.process.poll() is None:
                worker.kill9()
        self.redis.stop()


@pytest.fixture(autouse=True)
def _cleanup(request):
    yield
    farm = request.node.funcargs.get("farm")
    if farm is not None:
        farm.close()


def ok(label: str, step_s: float = 0.05) -> dict:
    return {"name": FAULT, "mode": "ok", "step_s": step_s, "label": label}


def assert_exactly_one_result_each(farm: Farm) -> None:
    rows = farm.jobs()
    assert rows and all(job.status == "done" for job, _ in rows), [
        (j.label, j.status, j.error) for j, _ in rows
    ]
    assert all(result is not None for _, result in rows)
    assert len({result.job_id for _, result in rows}) == len(rows)


@pytest.mark.skipif(not TWO_CPUS, reason="needs two CPUs for two pinned workers")
def test_two_pinned_workers_share_a_sweep_on_disjoint_cpus(farm):
    farm.worker("0", "w0")
    farm.worker("1", "w1")
    farm.run(farm.sweep([ok("a", 0.2), ok("b", 0.2)], contexts=(8, 16)))
    assert_exactly_one_result_each(farm)
    cpus_by_worker: dict[str, set[str]] = {}
    for _, result in farm.jobs():
        cpus_by_worker.setdefault(result.worker.split("@")[0], set()).add(result.cpus)
    assert cpus_by_worker == {"w0": {"0"}, "w1": {"1"}}


def test_a_real_model_through_the_farm(farm):
    # an ONNX export takes seconds, more on a busy machine: not the 6 s limit of the fault tests
    farm.env = farm_env(**{**LIMITS, "FARM_JOB_TIME_LIMIT": "120"})
    shutil.rmtree(farm.tmp / "cache" / "bandwidth")  # as on a new host
    farm.worker("0", "w0")
    # the worker measured its CPU set's bandwidth before taking jobs, not inside the first one
    assert [p.name for p in (farm.tmp / "cache" / "bandwidth").iterdir()] == [
        f"{socket.gethostname()}-cpus0.json"
    ]
    farm.run(farm.sweep([{"name": "hf"}, {"name": "nanogpt"}, {"name": "onnx"}]))
    assert_exactly_one_result_each(farm)
    for _job, result in farm.jobs():
        assert result.decode_tokens_per_s > 0 and result.torch_threads == 1 and result.cpus == "0"
        assert result.pinning_violations == []


@pytest.mark.skipif(not TWO_CPUS, reason="needs a second worker on its own CPU")
def test_kill9_worker_mid_job_completes_on_another_worker_once(farm):
    victim = farm.worker("0", "victim")
    submit = farm.submit(farm.sweep([ok("slow", step_s=0.8)]))  # ~4 s of generation
    wait_for(lambda: farm.job_with_status("running"), 90, "the job to start")
    survivor = farm.worker("1", "survivor")
    victim.kill9()
    output, _ = submit.communicate(timeout=120)
    assert submit.returncode == 0, output
    assert_exactly_one_result_each(farm)
    [(job, result)] = farm.jobs()
    assert result.worker.startswith("survivor@") and job.attempts == 2
    assert "succeeded" in survivor.log_text()


def _show(farm: Farm, key: str) -> dict:
    shown = subprocess.run(
        [FARM, "show", key, "--db", str(farm.db)],
        capture_output=True,
        text=True,
        env=farm.env,
        cwd=ROOT,
        check=True,
    )
    return json.loads(shown.stdout)


def test_a_lost_worker_costs_its_lease_not_hours_with_default_limits(
    tmp_path, tiny_model, measured_bandwidth
):
    """SIGKILL a worker's whole process group mid-job, with every limit at its default:
    the job comes back once its lease lapses (FARM_LEASE_S, 30 s), runs on the survivor,
    and the lost attempt is on the job for `farm show`."""
    farm = Farm(tmp_path, tiny_model)
    farm.env = farm_env()  # default limits: a 3660 s hard limit, so the broker would wait 2 h
    shutil.copytree(measured_bandwidth, tmp_path / "cache" / "bandwidth")
    try:
        victim = farm.worker("0", "victim")
        survivor = farm.worker("1" if TWO_CPUS else "0", "survivor", start=False)
        submit = farm.submit(farm.sweep([ok("slow", step_s=0.6)]))
        wait_for(lambda: farm.job_with_status("running"), 90, "the job to start")
        victim.kill9()
        killed = time.monotonic()
        survivor.start()
        output, _ = submit.communicate(timeout=180)
        took = time.monotonic() - killed
        assert submit.returncode == 0, output
        assert took < 30 + 20, f"{took:.0f} s from the kill to the result"  # lease + job
        assert "lost slow ctx=8 gen=5 threads=1 on victim@" in output
        assert_exactly_one_result_each(farm)
        [(job, result)] = farm.jobs()
        assert result.worker.startswith("survivor@") and job.attempts == 2
        [lost] = _show(farm, job.key)["lost_attempts"]
        assert lost["worker"].startswith("victim@") and "no heartbeat for 30 s" in lost["why"]
    finally:
        farm.close()


def test_a_frozen_worker_that_wakes_up_late_adds_no_second_result(farm):
    """SIGSTOP a worker past its lease: the job finishes elsewhere; SIGCONT: the frozen
    job finishes too and publishes, and the store refuses its late result."""
    if not TWO_CPUS:  # the frozen worker holds the one CPU: no survivor could claim it
        pytest.skip("needs two CPUs: a survivor beside the frozen worker")
    farm.env["FARM_LEASE_S"] = "6"
    # the broker's own redelivery (visibility timeout: twice the hard limit, 16 s with the
    # test's limits) raced the lease (6 s + the watch's looks) under load and sometimes won:
    # one result still, but no lost attempt named. With 60 s it cannot win.
    farm.env["FARM_JOB_TIME_LIMIT"] = "60"
    frozen = farm.worker("0", "frozen")
    submit = farm.submit(farm.sweep([ok("slow", step_s=0.6)]))
    wait_for(lambda: farm.job_with_status("running"), 90, "the job to start")
    frozen.freeze()
    farm.worker("1", "survivor")
    output, _ = submit.communicate(timeout=180)
    assert submit.returncode == 0, output
    frozen.thaw()
    wait_for(lambda: frozen.log_text().count("succeeded") >= 1, 60, "the frozen job to end")
    collected = farm.collect("--no-wait")
    assert collected.returncode == 0, collected.stderr
    assert "stored 0 done and 0 failed" in collected.stderr
    assert_exactly_one_result_each(farm)
    [(job, result)] = farm.jobs()
    assert result.worker.startswith("survivor@") and len(job.lost_attempts) == 1


WINDOW_LEASE_S = 5


@pytest.mark.skipif(not TWO_CPUS, reason="needs a survivor beside the lost worker")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
@pytest.mark.parametrize("window", failpoints.NAMES)
def test_a_worker_lost_in_any_window_of_a_job_costs_its_lease(farm, window, how):
    """Stop the worker's whole process group at one moment of a job's life (a failpoint
    holds it there), with the broker's visibility timeout at its default (2 h): the job
    ends with exactly one result within FARM_LEASE_S + the watch's two looks + its own
    run, and its history names the lost attempt. Lost after publishing, nothing is lost:
    the result is there and nothing runs again. SIGCONT afterwards adds no second result."""
    farm.env = farm_env(FARM_LEASE_S=str(WINDOW_LEASE_S))  # default time limits
    victim_env = {**farm.env, "FARM_FAILPOINT": window, "FARM_FAILPOINT_PAUSE_S": "15"}
    victim = farm.worker("0", "victim", start=False)
    victim.env = victim_env
    victim.start()
    submit = farm.submit(farm.sweep([ok("job", step_s=0.05)]))
    wait_for(lambda: f"failpoint {window} reached" in victim.log_text(), 90, window)
    survivor = farm.worker("1", "survivor")
    lost_at = time.monotonic()
    victim.kill9() if how == "SIGKILL" else victim.freeze()
    output, _ = submit.communicate(timeout=120)
    took = time.monotonic() - lost_at
    assert submit.returncode == 0, output
    assert_exactly_one_result_each(farm)
    [(job, result)] = farm.jobs()
    print(f"{window} {how}: {took:.1f} s from the loss to the stored result")
    if window == "published":
        assert result.worker.startswith("victim@") and not job.lost_attempts
        assert "succeeded" not in survivor.log_text()
    else:
        # lease + up to two looks of the watch (5 s, then 1 s) + the job on the survivor
        assert took < WINDOW_LEASE_S + 6 + 20, f"{took:.0f} s from the loss to the result"
        assert result.worker.startswith("survivor@")
        shown = _show(farm, job.key)
        [lost] = shown["lost_attempts"]
        assert lost["worker"].startswith("victim@") and "FARM_LEASE_S" in lost["why"]
    if how == "SIGSTOP":
        victim.thaw()  # its pause ends, it goes on with the job, and finds it done
        wait_for(lambda: "succeeded in" in victim.log_text(), 60, "the thawed victim's task")
        collected = farm.collect("--no-wait")
        assert collected.returncode == 0, collected.stderr
        assert_exactly_one_result_each(farm)


@pytest.mark.skipif(not TWO_CPUS, reason="needs a survivor beside the lost worker")
def test_collect_watching_a_no_wait_sweep_recovers_a_job_lost_at_start_up(farm):
    """The same guarantee for `farm collect`: a --no-wait sweep whose worker dies while
    its job's process starts comes back within the lease, under collect's watch."""
    farm.env = farm_env(FARM_LEASE_S=str(WINDOW_LEASE_S))
    victim = farm.worker("0", "victim", start=False)
    victim.env = {**farm.env, "FARM_FAILPOINT": "startup"}
    victim.start()
    farm.run(farm.sweep([ok("job", step_s=0.05)]), "--no-wait")
    wait_for(lambda: "failpoint startup reached" in victim.log_text(), 90, "start-up")
    farm.worker("1", "survivor")
    lost_at = time.monotonic()
    victim.kill9()
    collected = farm.collect()
    took = time.monotonic() - lost_at
    assert collected.returncode == 0, collected.stderr
    assert "lost" in collected.stderr and took < WINDOW_LEASE_S + 6 + 20, collected.stderr
    assert_exactly_one_result_each(farm)
    [(job, result)] = farm.jobs()
    assert result.worker.startswith("survivor@") and len(job.lost_attempts) == 1


def test_sigterm_mid_job_finishes_it_and_a_restart_runs_nothing_twice(farm):
    worker = farm.worker("0", "w0")
    submit = farm.submit(farm.sweep([ok("slow", step_s=0.6)]))
    wait_for(lambda: farm.job_with_status("running"), 90, "the job to start")
    status = subprocess.run(
        [FARM, "status", "--db", str(farm.db), "--broker", farm.redis.url()],
        capture_output=True,
        text=True,
        timeout=60,
        env=farm.env,
    )
    assert "1 running" in status.stdout and "w0@" in status.stdout, status.stdout + status.stderr
    assert "farm: slow ctx=8 gen=5" in status.stdout  # what the worker is running
    worker.terminate()  # warm shutdown: the running job completes first
    worker.start()
    output, _ = submit.communicate(timeout=120)
    assert submit.returncode == 0, output
    assert_exactly_one_result_each(farm)
    [(job, _)] = farm.jobs()
    assert job.attempts == 1
    assert worker.log_text().count("succeeded in") == 1


def test_broker_kill9_and_restart_mid_sweep(farm):
    # A job that is running when the broker dies waits for it to return before it can
    # publish; that wait counts against its time limit, so give it more room here.
    farm.env["FARM_JOB_TIME_LIMIT"] = "12"
    farm.worker("0", "w0")
    if TWO_CPUS:
        farm.worker("1", "w1")
    submit = farm.submit(farm.sweep([ok("a", 0.3), ok("b", 0.3), ok("c", 0.3)], contexts=(8, 16)))
    wait_for(lambda: farm.job_with_status("done"), 120, "a first result")
    farm.redis.kill()
    time.sleep(2)
    farm.redis.start()  # the append-only file brings back the queue and the stream
    output, _ = submit.communicate(timeout=240)
    assert submit.returncode == 0, output
    assert len(farm.jobs()) == 6
    assert_exactly_one_result_each(farm)


def test_killed_submit_then_resubmit_runs_only_what_is_missing(farm):
    worker = farm.worker("0", "w0")
    grid = farm.sweep([ok("a", 0.2), ok("b", 0.2)], contexts=(8, 16))
    first = farm.submit(grid)
    wait_for(lambda: farm.job_with_status("done"), 120, "a first result")
    first.kill()
    first.wait()
    output = farm.run(grid)
    assert "already done: skipped" in output
    assert_exactly_one_result_each(farm)
    # every job ran exactly once: one measured run per job in the worker's log, no second attempt
    assert worker.log_text().count(": 'done'") == 4
    assert all(job.attempts == 1 for job, _ in farm.jobs())


def test_a_job_that_crashes_its_worker_is_failed_after_n_tries(farm):
    worker = farm.worker("0", "w0")
    farm.run(farm.sweep([{"name": FAULT, "mode": "crash", "label": "crasher"}, ok("fine")]), code=3)
    by_label = {job.label: job for job, _ in farm.jobs()}
    assert by_label["fine"].status == "done"
    crasher = by_label["crasher"]
    assert crasher.status == "failed"
    assert "crashed its worker 2 time(s) (last: killed by SIGKILL)" in crasher.error
    # what the job wrote to stderr just before it died, quoted by the worker that gave up
    assert crasher.error.startswith("stderr: fault backend: illegal instruction")
    assert worker.log_text().count("WorkerLostError") >= 2


def test_time_limits_fail_the_job_and_the_worker_goes_on(farm):
    farm.worker("0", "w0")
    backends = [
        {"name": FAULT, "mode": "sleep", "sleep_s": 30, "label": "soft"},
        {"name": FAULT, "mode": "hang", "sleep_s": 30, "label": "hard"},
        ok("after"),
    ]
    farm.run(farm.sweep(backends), code=3)
    by_label = {job.label: job for job, _ in farm.jobs()}
    assert by_label["after"].status == "done"
    assert by_label["soft"].status == "failed" and "SoftTimeLimitExceeded" in by_label["soft"].error
    assert (
        by_label["hard"].status == "failed" and "hard time limit of 8 s" in by_label["hard"].error
    )


def test_bad_messages_are_rejected_and_the_worker_keeps_serving(farm):
    from kombu import Connection, Exchange, Producer, Queue

    worker = farm.worker("0", "w0")
    with Connection(farm.redis.url()) as connection:
        producer = Producer(
            connection.channel(), exchange=Exchange("farm", type="direct"), routing_key="farm"
        )
        queue = Queue("farm", Exchange("farm", type="direct"), routing_key="farm")
        producer.publish(
            {"not": "a task"},
            serializer="pickle",
            declare=[queue],
            headers={"task": "whistle_stop.run_job", "id": "pickled"},
        )
        producer.publish(
            "{not json",
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "whistle_stop.run_job", "id": "garbled"},
        )
    from whistle_stop.contract.queue import TASK_NAME
    from whistle_stop.executors.celery import make_app

    make_app(farm.redis.url()).send_task(
        TASK_NAME, args=["farm", 999, {"bogus": True}], queue="farm"
    )
    farm.run(farm.sweep([ok("after")]))
    assert_exactly_one_result_each(farm)
    log = worker.log_text()
    assert (
        "ContentDisallowed" in log
        or "content type" in log.lower()
        or "Refusing to deserialize" in log
    )
    assert (
        "MalformedJobError" in log
        or "malformed" in log.lower()
        or "DecodeError" in log
        or "Can't decode" in log
    )
    assert worker.process.poll() is None


def test_forged_messages_are_dropped_without_running_anything(farm, tmp_path):
    """Messages naming callables, modules and wrong types: each logged and dropped, nothing
    imported (the payload module would leave a marker), and the worker serves on."""
    import redis

    from whistle_stop.contract.jobspec import JobSpec
    from whistle_stop.contract.payload import ResultPayload
    from whistle_stop.contract.queue import TASK_NAME, task_id_for
    from whistle_stop.executors.celery import make_app

    marker = tmp_path / "marker"
    farm.env["WHISTLE_STOP_PAYLOAD_MARKER"] = str(marker)
    worker = farm.worker("0", "w0")
    spec = json.loads(json.dumps(_good_spec(farm.model)))
    forged = [
        ["farm", 1, {**spec, "backend": "os:system"}],
        ["farm", 2, {**spec, "backend": "whistle_stop_testplugins.payload:Touch"}],
        ["farm", 3, {**spec, "context": True}],
        ["farm", 4, {**spec, "options": {"mode": ["crash"]}, "backend": FAULT}],
        ["farm", 5],
    ]
    app = make_app(farm.redis.url())
    for args in forged:  # random task ids: not the ids their sweep and spec make
        app.send_task(TASK_NAME, args=args, queue="farm")
    app.send_task(TASK_NAME, args=["farm", 6, spec], kwargs={"shell": "rm -rf /"}, queue="farm")
    # well-formed, with the right task id, naming a backend no worker has: failed, with why
    unknown = {**spec, "backend": "os:system"}
    ghost_task = task_id_for("ghost", JobSpec.from_dict(unknown).key)
    app.send_task(TASK_NAME, args=["ghost", 99, unknown], task_id=ghost_task, queue="farm")
    farm.run(farm.sweep([ok("after")]))
    assert_exactly_one_result_each(farm)
    log = worker.log_text()
    assert log.count("dropped job message") == 6, log  # malformed: dropped unheard
    [(_, entry)] = redis.Redis.from_url(farm.redis.url()).xrange("farm:results:ghost")
    failed = ResultPayload.from_json(entry[b"payload"])
    assert (
        failed.status == "failed" and "'os:system' is not installed on worker w0@" in failed.error
    )
    assert not marker.exists()  # the payload module was never imported, its class never called
    assert worker.process.poll() is None


def _good_spec(model: Path) -> dict:
    from whistle_stop.contract.jobspec import JobSpec

    return JobSpec(
        model=str(model),
        backend=FAULT,
        label="x",
        options=(("mode", "ok"),),
        context=8,
        generation=5,
        threads=1,
        warmups=0,
        repeats=1,
        min_duration_s=0.0,
        max_repeats=1,
        noise_threshold=0.05,
        fidelity_tokens=0,
        eval_text=None,
        eval_tokens=2,
        rerun_noisy=False,
        prompt_text=None,
        tokenizer="fast",
        seed=0,
    ).to_dict()


def test_a_password_protected_broker(tmp_path, tiny_model, measured_bandwidth):
    """The farm runs end to end through a Redis that wants a password; a worker given the
    wrong one stops at once with one line naming the problem (and not the password)."""
    farm = Farm(tmp_path, tiny_model, password="s3cret-pass")
    shutil.copytree(measured_bandwidth, tmp_path / "cache" / "bandwidth")
    try:
        wrong = farm.worker("0", "intruder", broker=farm.redis.url(password="guess"), start=False)
        wrong.start(wait=False)
        assert wrong.process.wait(60) == 2
        lines = [line for line in wrong.log_text().splitlines() if line.strip()]
        assert len(lines) == 1 and "refused the password" in lines[0], lines
        assert "guess" not in lines[0] and "s3cret" not in lines[0]
        farm.worker("0", "w0")
        farm.run(farm.sweep([ok("guarded")]))
        assert_exactly_one_result_each(farm)
        no_password = subprocess.run(
            [
                FARM,
                "submit",
                "--grid",
                str(farm.sweep([ok("x")], name="other")),
                "--broker",
                farm.redis.url(password=""),
                "--db",
                str(farm.db),
            ],
            capture_output=True,
            text=True,
            env=farm.env,
            cwd=ROOT,
            timeout=60,
        )
        assert no_password.returncode == 2 and "refused the password" in no_password.stderr
    finally:
        farm.close()


def test_an_overlapping_cpu_set_is_refused(farm):
    farm.worker("0", "first")
    second = farm.worker("0", "second", start=False)
    second.start(wait=False)
    assert second.process.wait(60) == 2
    assert "CPU 0 is used by worker first@" in second.log_text()


def test_a_broker_that_does_not_answer(tmp_path):
    grid = tmp_path / "s.yaml"
    grid.write_text("backends: [hf]\n")
    db = tmp_path / "farm.db"
    started = time.monotonic()
    result = subprocess.run(
        [
            FARM,
            "submit",
            "--grid",
            str(grid),
            "--db",
            str(db),
            "--broker",
            "redis://:hunter2@127.0.0.1:9/0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=farm_env(),
    )
    assert result.returncode == 2
    assert "does not answer" in result.stderr and "hunter2" not in result.stderr + result.stdout
    assert time.monotonic() - started < 15
    assert not db.exists()


def test_worker_refuses_cpus_this_machine_lacks(tmp_path):
    result = subprocess.run(
        [FARM, "worker", "--broker", "redis://127.0.0.1:9/0", "--cpus", "4000-4001"],
        capture_output=True,
        text=True,
        timeout=60,
        env=farm_env(),
    )
    assert result.returncode == 2 and "valid CPUs" in result.stderr


class TwoHosts:
    """Two network namespaces, each a 'machine' joined to this one by a veth pair."""

    def __init__(self) -> None:
        tag = os.getpid() % 10000
        self.hosts = []
        for index in (1, 2):
            netns, host_if, ns_if = f"ws{tag}h{index}", f"ws{tag}a{index}", f"ws{tag}b{index}"
            gateway, address = f"10.231.{index}.1", f"10.231.{index}.2"
            self.hosts.append((netns, host_if, gateway, f"host{index}"))
            for command in (
                ["ip", "netns", "add", netns],
                ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                ["ip", "link", "set", ns_if, "netns", netns],
                ["ip", "addr", "add", f"{gateway}/30", "dev", host_if],
                ["ip", "link", "set", host_if, "up"],
                ["ip", "netns", "exec", netns, "ip", "addr", "add", f"{address}/30", "dev", ns_if],
                ["ip", "netns", "exec", netns, "ip", "link", "set", ns_if, "up"],
                ["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"],
            ):
                subprocess.run(command, check=True, capture_output=True)

    def prefix(self, index: int) -> tuple[str, ...]:
        """Run a command inside host `index`, under its own hostname."""
        netns, _, _, hostname = self.hosts[index]
        return (
            "ip",
            "netns",
            "exec",
            netns,
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {hostname} && exec "$@"',
            "sh",
        )

    def remove(self) -> None:
        for netns, host_if, _, _ in self.hosts:
            subprocess.run(["ip", "link", "del", host_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _can_make_hosts() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not all(map(shutil.which, ("ip", "unshare"))):
        return "needs iproute2's ip and util-linux's unshare"
    return None


@pytest.mark.skipif(_can_make_hosts() is not None, reason=str(_can_make_hosts()))
def test_workers_on_two_hosts_reach_the_broker_over_the_network(tmp_path, tiny_model):
    hosts = TwoHosts()
    farm = None
    try:
        farm = Farm(tmp_path, tiny_model, binds=("127.0.0.1", "10.231.1.1", "10.231.2.1"))
        for index, cpus in ((0, "0"), (1, "1" if TWO_CPUS else "0")):
            gateway = hosts.hosts[index][2]
            farm.worker(
                cpus, f"w{index}", broker=farm.redis.url(gateway), prefix=hosts.prefix(index)
            )
        farm.run(farm.sweep([ok("a", 0.3), ok("b", 0.3)], contexts=(8, 16)))
        assert_exactly_one_result_each(farm)
        hostnames = {result.environment.hostname for _, result in farm.jobs()}
        assert hostnames == {"host1", "host2"}
        assert {result.worker.split("@")[1] for _, result in farm.jobs()} == {"host1", "host2"}
    finally:
        if farm is not None:
            farm.close()
        hosts.remove()


def test_rounds_run_on_celery_workers_one_round_after_another(farm):
    """The rounds loop sits above the executor seam: Celery runs it as the embedded pool
    does, a round published whole once the one before is stored."""
    farm.worker("0", "w0")
    if TWO_CPUS:
        farm.worker("1", "w1")
    text = json.loads(farm.sweep([ok("a"), ok("b")]).read_text()) | {"rounds": 2}
    grid = farm.tmp / "rounds.yaml"
    grid.write_text(json.dumps(text))
    output = farm.run(grid)
    assert "round 1 of 2: 2 job(s)" in output and "round 2 of 2: 2 job(s)" in output
    rows = farm.jobs()
    assert sorted((job.round, job.position) for job, _ in rows) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert_exactly_one_result_each(farm)
    refused = subprocess.run(
        [
            FARM,
            "submit",
            "--grid",
            str(grid),
            "--broker",
            farm.redis.url(),
            "--db",
            str(farm.db),
            "--no-wait",
            "--rerun",
        ],
        capture_output=True,
        text=True,
        env=farm.env,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "drop --no-wait" in refused.stderr
