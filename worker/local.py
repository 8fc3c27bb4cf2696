"""An embedded worker: a fork server that runs each job in a fresh child process.

`farm submit` without a broker starts one of these per CPU set. It pins itself, imports
what every job needs (torch, transformers' GPT-2: seconds), and then, for each JSON job
spec read on stdin, forks a child that runs the job and writes one JSON result line on
the original stdout. Every job still gets a process of its own (its thread pools sized
for it alone, its peak memory its own, a crash its own), but none pays the imports.

Why forking after the imports is safe: importing torch starts no thread. OpenMP's and
torch's pools come into being at the first parallel operation, which only a child ever
runs; the server runs no model and no tensor operation. A child that dies without a
result is reported on its line as `{"child_died": "killed by SIGSEGV"}`, and the
executor fails the job with the child's last stderr lines.

    python -m whistle_stop.worker.local --cpus 0-1 --name local-0 --cache-dir DIR
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import TextIO

from whistle_stop.contract.cpus import parse_cpu_list
from whistle_stop.worker.pinning import pin_process

PR_SET_PDEATHSIG = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpus", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    args = parser.parse_args()

    # Ctrl-C in a terminal reaches this process too; the orchestrator decides (and kills
    # this process if it stops), so the job is not recorded as failed by a race.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cpus = parse_cpu_list(args.cpus)
    pin_process(cpus)  # before anything imports torch; children inherit the CPU set
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints and C-level output must not corrupt the protocol

    from whistle_stop.worker.runner import preload

    preload()
    for line in sys.stdin:  # one job per line, until the orchestrator closes the pipe
        if line.strip():
            serve_one(line, results, args.name, cpus, args.cache_dir)
    # The pipe closed: the sweep is over and waits for this exit. An interpreter that
    # imported torch and transformers takes ~2 s to tear them down (2-core Zen 3 VM):
    # two seconds at the end of every sweep, for nothing this process still holds.
    results.flush()
    sys.stderr.flush()
    os._exit(0)


def serve_one(line: str, results: TextIO, name: str, cpus: list[int], cache_dir: Path) -> None:
    """Fork; the child runs the job and writes its result; the parent waits for it and
    speaks for it if it died without a word."""
    results.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            try:
                spec = json.loads(line)
            except json.JSONDecodeError as error:
                spec = {"malformed": str(error)}
            from whistle_stop.worker.runner import run_job

            result = run_job(spec, cache_dir=cache_dir, worker_name=name, assigned_cpus=cpus)
            results.write(result.to_json() + "\n")
            results.flush()
            code = 0
        finally:
            os._exit(code)  # no atexit handlers, no buffers of the server flushed twice
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        results.write(json.dumps({"child_died": _death(code)}) + "\n")


def _death(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


if __name__ == "__main__":
    main()
