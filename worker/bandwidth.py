"""Measure a CPU set's memory bandwidth in a process of its own, pinned to that set.

    python -m worker.bandwidth --cpus 0-1 --cache-dir ~/.cache/whistle-stop [--remeasure]

prints the figures as one JSON line. `farm bandwidth` and `farm worker` call it as a
child, so neither pins itself nor imports torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from whistle_stop.contract.cpus import format_cpu_list, parse_cpu_list


def measure_in_child(cpus: list[int], cache_dir: Path, *, remeasure: bool = False) -> dict:
    """The cached (or, with `remeasure`, fresh) bandwidth of `cpus`. Raises RuntimeError."""
    command = [
        sys.executable,
        "-P",  # not the current directory: a folder there named like a package would shadow it
        "-m",
        "whistle_stop.worker.bandwidth",
        "--cpus",
        format_cpu_list(cpus),
        "--cache-dir",
        str(cache_dir),
    ] + (["--remeasure"] if remeasure else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the bandwidth measurement failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpus", required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--remeasure", action="store_true")
    args = parser.parse_args()

    from whistle_stop.worker.pinning import pin_process

    cpus = parse_cpu_list(args.cpus)
    pin_process(cpus)  # before torch is imported
    from whistle_stop.worker.roofline import cached_bandwidth

    figures = cached_bandwidth(args.cpus, len(cpus), args.cache_dir, remeasure=args.remeasure)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
