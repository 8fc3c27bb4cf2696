"""An embedded worker process: the same job runner, fed over a pipe instead of a broker.

`farm submit` without a broker starts one of these per CPU set. It reads one
JSON job spec per line on stdin and writes one JSON result per line on the
original stdout; everything else the libraries print goes to stderr.

    python -m worker.local --cpus 0-1 --name local-0 --cache-dir ~/.cache/whistle-stop
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from whistle_stop.contract.cpus import parse_cpu_list
from whistle_stop.worker.pinning import pin_process


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
    pin_process(cpus)  # before anything imports torch
    results = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints and C-level output must not corrupt the protocol

    from whistle_stop.worker.runner import preload, run_job

    preload()

    for line in sys.stdin:  # one job per line, until the orchestrator closes the pipe
        if not line.strip():
            continue
        try:
            spec = json.loads(line)
        except json.JSONDecodeError as error:
            spec = {"malformed": str(error)}
        result = run_job(spec, cache_dir=args.cache_dir, worker_name=args.name, assigned_cpus=cpus)
        results.write(result.to_json() + "\n")


if __name__ == "__main__":
    main()
