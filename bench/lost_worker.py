"""Issue #33's scenario: a worker lost at the start of its second job, default limits.

Two `farm worker`s (CPUs 0 and 1) on a private redis-server, every limit at its default
(FARM_LEASE_S 30 s; the broker's visibility timeout two hours), an 8-job sweep (hf and
nanogpt x contexts 32, 64 x generation 48, 64, repeats 3). 2.5 s after worker 0 receives
its second job, its whole process group is SIGKILLed. Prints when the job was handed
back and when every job was stored.

    farm bench lost-worker
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from whistle_stop.bench.harness import FARM, FarmWorker, RedisServer, farm_env, wait_for

SWEEP = {
    "name": "s",
    "model": "random:gpt2",
    "backends": ["hf", "nanogpt"],
    "context_sizes": [32, 64],
    "generation_lengths": [48, 64],
    "threads": [1],
    "repeats": 3,
}


def main(argv: list[str] | None = None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lost-worker-"))
    redis = RedisServer(tmp / "redis")
    redis.start()
    env = farm_env()
    cache = Path("~/.cache/whistle-stop").expanduser()
    workers = []
    try:
        for cpu in (0, 1):
            log = tmp / f"w{cpu}.log"
            workers.append(FarmWorker(redis.url(), str(cpu), f"w{cpu}", log, cache, env).start())
        grid = tmp / "s.yaml"
        grid.write_text(json.dumps(SWEEP))
        db = tmp / "farm.db"
        started = time.monotonic()
        with open(tmp / "submit.log", "w") as log:
            submit = subprocess.Popen(
                [FARM, "submit", "--grid", str(grid), "--broker", redis.url(), "--db", str(db)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            victim = workers[0]
            wait_for(lambda: victim.log_text().count("] received") >= 2, 600, "w0's 2nd job", 0.05)
            received = time.monotonic()
            time.sleep(2.5)
            victim.kill9()
            killed, killed_at = time.monotonic(), time.strftime("%H:%M:%S")
            submit.wait(1800)
        print(
            f"w0 killed at {killed_at}, {killed - started:.1f} s after the submit, "
            f"{killed - received:.1f} s after its 2nd job arrived"
        )
        lost = [line for line in (tmp / "submit.log").read_text().splitlines() if "lost" in line]
        rows = (
            sqlite3.connect(db)
            .execute(
                "select j.label, j.context, j.generation, r.worker, j.lost_attempts "
                "from jobs j left join results r on r.job_id = j.id"
            )
            .fetchall()
        )
        stored = sum(1 for row in rows if row[3])
        print(
            f"submit exit {submit.returncode}, {time.monotonic() - killed:.1f} s after the kill: "
            f"{stored} results for {len(rows)} jobs"
        )
        for row in rows:
            if row[4] and row[4] != "null":
                handed = json.loads(row[4])[0]["at"]
                print(
                    f"lost {row[0]} ctx={row[1]} gen={row[2]} on w0, handed back at {handed}, "
                    f"stored from {row[3]}"
                )
        print("\n".join(lost))
    finally:
        for worker in workers:
            worker.stop()
        redis.stop()
