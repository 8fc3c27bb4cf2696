"""500 no-op jobs through the real Celery path (submit -> Redis -> 4 workers -> the result
stream -> the store): every one stored once, nothing left behind in Redis. The figures
(throughput, overhead) are farm bench farm-scale's job; this checks correctness at
a size where batching, pipelining and coalescing all take part."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from whistle_stop.bench.harness import FARM, RedisServer, farm_env, noop_workers
from whistle_stop.contract.queue import RESULTS_GROUP, results_stream
from whistle_stop.db.models import Job, Result
from whistle_stop.db.session import make_session_factory

ROOT = Path(__file__).resolve().parent.parent  # the checkout: examples/ and cwd

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_five_hundred_jobs_flow_through_four_workers(tmp_path, tiny_model):
    server = RedisServer(tmp_path / "redis", fsync="everysec")
    server.start()
    workers = []
    try:
        workers = noop_workers(server.url(), 4, tmp_path, farm_env())
        grid = tmp_path / "five-hundred.yaml"
        grid.write_text(
            f"model: {tiny_model}\nbackends: [noop]\ncontext_sizes: {list(range(1, 11))}\n"
            f"generation_lengths: {list(range(1, 51))}\nthreads: [1]\nwarmups: 0\n"
            "repeats: 1\nfidelity_tokens: 0\nbandwidth: host\n"
        )
        db = tmp_path / "farm.db"
        done = subprocess.run(
            [FARM, "submit", "--grid", str(grid), "--broker", server.url(), "--db", str(db)],
            capture_output=True,
            text=True,
            env=farm_env(),
            cwd=ROOT,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "500 done, 0 failed" in done.stderr
        with make_session_factory(str(db))() as session:
            assert session.scalar(select(func.count()).select_from(Result)) == 500
            assert session.scalar(select(func.count(func.distinct(Result.job_id)))) == 500
            assert {status for (status,) in session.execute(select(Job.status).distinct())} == {
                "done"
            }
            workers_used = {w for (w,) in session.execute(select(Result.worker).distinct())}
        assert len(workers_used) == 4  # every worker took a share
        client = redis.Redis(port=server.port)
        assert client.llen("farm") == 0
        pending = client.xpending(results_stream("five-hundred"), RESULTS_GROUP)
        assert pending["pending"] == 0  # every result entry acknowledged after it was stored
    finally:
        for worker in workers:
            worker.kill9()
        server.stop()
