"""Our paths against the memory-bandwidth limit and the engines, goal by goal (issue #17).

Reads sweeps of `examples/engines.yaml` (every figure measured by the farm: each job a
fresh pinned process, rounds interleaved, bandwidth measured before and after each job)
and prints each goal beside its target, met or not:

  1. best int8 path (top-1 >= 0.95): >= 75% of its roofline, >= 1.2x the fastest int8 engine
  2. best 4-bit path: >= 70% of its roofline, >= 1.5x the fastest 4-bit engine
  3. float32: >= 85% of its roofline, each float32 path of ours
  4. robust speed: decode medians across sweeps within 15%, p90/p50 decode step < 1.2,
     non-weight time per decode step <= 1 ms (step p50 minus the weights' bytes at the
     bandwidth measured beside the job)
  5. time to first token at context 512 <= 0.5x transformers eager's
  6. decode at context 512 within 1.25x of context 32, every quantized path of ours (two
     farm jobs minutes apart: where the host's bandwidth moves, `long_context.py --labels`
     times a path's two contexts alternately in one process)

Context 128 unless said. Engines whose extra is missing, or that failed, are left out of
"fastest engine" and said so.

    farm bench goals --db engines.db            # every sweep in it
    farm bench goals --run 3 --db engines.db    # run engines.yaml 3x first
    farm bench goals --run 3 --db speed.db --contexts 128 \
        --labels onnx-int8-all,onnx-int4-b128-p8    # goal 4's spread only: minutes, not hours
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from whistle_stop.bench.common import counting, edited_grid, example, submit, view


def run_sweeps(
    count: int,
    db: Path,
    labels: list[str] | None,
    contexts: list[int] | None,
    rounds: int | None = None,
):
    """engines.yaml `count` times, as separate sweeps; only `labels` (and the baseline and
    its control) and `contexts` when given, and `rounds` instead of the file's."""
    directory = Path(tempfile.mkdtemp(prefix="goals-"))
    for index in range(1, count + 1):
        more = {"rounds": rounds} if rounds else {}
        data = edited_grid(
            example("engines.yaml"), labels, contexts, name=f"engines-{index}", **more
        )
        print(f"sweep {index}/{count}: {data['name']} in {directory}", flush=True)
        submit(data, directory, db)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", type=Path, required=True, help="the sweeps' database")
    parser.add_argument("--run", type=int, default=0, help="first run engines.yaml N times")
    parser.add_argument("--labels", help="with --run: only these backends (comma-separated)")
    parser.add_argument("--contexts", help="with --run: only these contexts (comma-separated)")
    parser.add_argument("--rounds", type=counting, help="with --run: rounds (engines.yaml's: 3)")
    args = parser.parse_args(argv)
    if args.run:
        labels = args.labels.split(",") if args.labels else None
        contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else None
        run_sweeps(args.run, args.db, labels, contexts, args.rounds)
    view("goals", args.db)
