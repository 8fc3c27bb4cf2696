"""Real parts for the farm's tests and benchmarks: a private redis-server, real `farm
worker` processes, and a tiny GPT-2 written on the fly.

Nothing here touches a server it did not start: Redis runs on a free port with its own
directory, and every process is stopped afterwards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

FARM = str(Path(sys.executable).with_name("farm"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


class RedisServer:
    """redis-server with an append-only file, so a kill -9 and restart keeps the queue."""

    def __init__(
        self,
        directory: Path,
        binds: tuple[str, ...] = ("127.0.0.1",),
        password: str = "",
        fsync: str = "always",
    ) -> None:
        self.directory, self.binds, self.port = directory, binds, free_port()
        self.password, self.fsync = password, fsync
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def url(self, host: str = "127.0.0.1", password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"redis://{':' + secret + '@' if secret else ''}{host}:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                *self.binds,
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--dir",
                str(self.directory),
                "--protected-mode",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(
            port=self.port, password=self.password or None, socket_connect_timeout=1
        )
        wait_for(lambda: _pings(client), 15, "redis-server to answer")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def farm_env(**settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings)
    return env


class FarmWorker:
    """One `farm worker` process group (Celery parent + its job child)."""

    def __init__(
        self,
        broker: str,
        cpus: str,
        name: str,
        log: Path,
        cache: Path,
        env: dict[str, str],
        prefix: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
    ) -> None:
        self.args = [
            *prefix,
            FARM,
            "worker",
            "--broker",
            broker,
            "--cpus",
            cpus,
            "--name",
            name,
            "--cache-dir",
            str(cache),
            *extra,
        ]
        self.name, self.log, self.env = name, log, env
        self.process: subprocess.Popen | None = None

    def start(self, *, wait: bool = True) -> FarmWorker:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        if wait:
            wait_for(
                lambda: "ready." in self.log_text(offset) or self._died(), 60, f"{self.name} ready"
            )
            assert not self._died(), self.log_text()
        return self

    def log_text(self, offset: int = 0) -> str:
        return self.log.read_bytes()[offset:].decode(errors="replace") if self.log.exists() else ""

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def kill9(self) -> None:
        """The whole worker at once, job included, as when its machine dies."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def freeze(self) -> None:
        """SIGSTOP the whole worker, job included: a machine that stops answering."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def terminate(self, timeout: float = 60) -> None:
        """SIGTERM to the Celery parent: a warm shutdown that finishes the running job."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            try:
                self.terminate(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


def noop_workers(broker: str, count: int, directory: Path, env: dict[str, str]) -> list[FarmWorker]:
    """`count` workers of the no-op kind (no torch preload, one child for many jobs), each
    under a hostname of its own (a UTS namespace, so each claims its CPU on its own
    'machine'), spread over this machine's CPUs. Their bandwidth cache is filled first,
    from one real measurement, so starting sixteen does not measure sixteen times."""
    import json
    import socket

    cpus = sorted(os.sched_getaffinity(0))
    cache = directory / "cache"
    (cache / "bandwidth").mkdir(parents=True, exist_ok=True)
    figures = {
        "read_bytes_per_s": 2e10,
        "copy_bytes_per_s": 2e10,
        "threads": 1,
        "measured_at": time.time(),
        "note": "placeholder: no-op jobs read no weights",
    }
    workers = []
    for index in range(count):
        host, cpu = f"noop{index}", str(cpus[index % len(cpus)])
        (cache / "bandwidth" / f"{host}-cpus{cpu}.json").write_text(
            json.dumps({**figures, "host": host, "cpus": cpu})
        )
        prefix = ("unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh")
        workers.append(
            FarmWorker(
                broker,
                cpu,
                f"n{index}",
                directory / f"n{index}.log",
                cache,
                env,
                prefix,
                ("--jobs-per-child", "0", "--no-preload"),
            )
        )
    assert socket.gethostname() not in {f"noop{i}" for i in range(count)}
    for worker in workers:
        worker.start(wait=False)
    for worker in workers:
        wait_for(
            lambda w=worker: "ready." in w.log_text() or w._died(), 120, f"{worker.name} ready"
        )
        assert not worker._died(), worker.log_text()
    return workers


def save_tiny_gpt2(directory: Path, *, seed: int = 0, n_positions: int = 128, **overrides) -> Path:
    """A GPT-2 of a few thousand parameters, written with save_pretrained (safetensors)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=256, n_positions=n_positions)
    config.update(overrides)
    config.update(bos_token_id=config["vocab_size"] - 1, eos_token_id=config["vocab_size"] - 1)
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**config)).eval().save_pretrained(directory)
    return directory


# a machine as a result records it: for results made up to fill a database
ENVIRONMENT = {
    "fingerprint": "f1",
    "hostname": "box",
    "cpu_model": "cpu",
    "cpu_features": ["avx2"],
    "logical_cores": 2,
    "physical_cores": 2,
    "memory_bytes": 1,
    "os": "linux",
    "kernel": "6",
    "container": False,
    "python": "3.11",
    "versions": {},
    "git_revision": None,
}


def made_up_result(
    speed: float,
    context: int,
    generation: int,
    *,
    slowdown: float = 1.0,
    agreement: float = 1.0,
    roofline: float = 0.5,
    failed: bool = False,
):
    """A result whose figures follow from `speed` (tokens/s): decode steps of 1/speed
    seconds, 5 repeats; for filling a database without running jobs (tests, farm-scale)."""
    from whistle_stop.contract.payload import ResultPayload
    from whistle_stop.contract.status import JobStatus

    if failed:
        return ResultPayload.failed("w", "Traceback ...\nRuntimeError: boom")
    step = slowdown / speed
    prefill = 0.001 * context * slowdown
    e2e = [prefill + step * (generation - 1) * (1 + 0.001 * i) for i in range(5)]
    metrics = {
        "repeats": 5,
        "prefill_ms": 1e3 * prefill,
        "prefill_ms_p50": 1e3 * prefill,
        "decode_ms": 1e3 * step,
        "decode_ms_p50": 1e3 * step,
        "decode_ms_p90": 1e3 * step,
        "decode_ms_p99": 1e3 * step,
        "decode_tokens_per_s": 1 / step,
        "e2e_s": sum(e2e) / 5,
        "e2e_s_p50": e2e[2],
        "e2e_s_p90": e2e[4],
        "e2e_s_stdev": 0.001,
        "cv": 0.01,
        "noisy": False,
        "timer_gap": 0.0,
        "materialize_s": 0.1,
        "load_s": 1.0,
        "rss_peak_bytes": 1,
        "model_rss_bytes": 1,
        "torch_threads": 2,
        "top1_agreement": agreement,
        "mean_kl": 1e-3,
        "roofline_fraction": roofline,
        "load_extra": {},
        "samples": {
            "prefill_s": [prefill * (1 + 0.01 * i) for i in range(5)],
            "e2e_s": e2e,
            "decode_steps_s": [[step * (1 + 0.002 * i)] * (generation - 1) for i in range(5)],
        },
        "tokens": [1] * generation,
        "pinning_violations": [],
    }
    return ResultPayload.from_dict(
        {
            "status": JobStatus.DONE.value,
            "worker": "w@box",
            "cpus": "0-1",
            "environment": ENVIRONMENT,
            "metrics": metrics,
        }
    )
