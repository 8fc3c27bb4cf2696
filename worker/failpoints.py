"""Named places in a job's life where a test can stop a worker.

With FARM_FAILPOINT=NAME, the process that reaches NAME says so on stderr and pauses
there (FARM_FAILPOINT_PAUSE_S, 30 s by default), so a test can kill or freeze the worker
in exactly that window (tests/test_lost_windows.py). Unset, as everywhere but those
tests, `reached` is one environment lookup. The names, in the order a job meets them:

    delivered   the worker's main process has the message and has claimed it
    startup     the job's process begins the task (checks, the first Redis calls)
    counted     the attempt is counted; the lease is not taken yet
    leased      the lease is held and `started` published; the job is about to run
    published   the result is in the stream; the message is not acknowledged yet
"""

from __future__ import annotations

import os
import sys
import time

NAMES = ("delivered", "startup", "counted", "leased", "published")


def reached(name: str) -> None:
    if os.environ.get("FARM_FAILPOINT") != name:
        return
    print(f"failpoint {name} reached in pid {os.getpid()}", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("FARM_FAILPOINT_PAUSE_S", 30)))
