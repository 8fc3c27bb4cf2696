"""The farm's noise floor, and how stable its verdicts are, over separate sweeps.

Runs a sweep file S times through the real `farm submit` (the embedded pool, as a user
would), each time with `control: true` (a second copy of the baseline) and the given
number of rounds, then prints (`farm report --view noise`) per cell and sweep:
  - the control's ratio to the baseline (1.00 on a perfect machine: the noise floor);
  - the fastest path's speedup over the baseline, its spread across sweeps, and its 95%
    intervals with the rounds each sweep spent (with --rounds auto: as many as it took).

    farm bench noise-floor examples/quick.yaml --sweeps 3 --rounds 3
    farm bench noise-floor examples/quick.yaml --sweeps 3 --rounds 1  # sequential
    farm bench noise-floor examples/quick.yaml --set min_duration_s=3
    farm bench noise-floor examples/fastest.yaml --rounds auto --contexts 128 \
        --backends hf,native-q4-b128,native-q8-b128,onnx-int4-b128-p8

Nothing else may run on the machine meanwhile: it is what is being measured.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from whistle_stop.bench.common import (
    add_set_option,
    counting,
    edited_grid,
    example,
    settings,
    submit,
    view,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, nargs="?", default=None, help="[examples/quick.yaml]")
    parser.add_argument("--sweeps", type=counting, default=3)
    parser.add_argument("--rounds", default="3", help="rounds a sweep, or auto (the file's budget)")
    parser.add_argument("--backends", default=None, help="only these labels (comma-separated)")
    parser.add_argument("--contexts", default=None, help="only these contexts")
    add_set_option(parser)
    parser.add_argument("--keep", type=Path, default=None, help="keep the database here")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="noise-floor-"))
    db = args.keep or directory / "farm.db"
    labels = args.backends.split(",") if args.backends else None
    contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else None
    rounds = args.rounds if args.rounds == "auto" else int(args.rounds)
    for index in range(1, args.sweeps + 1):
        data = edited_grid(
            args.sweep or example("quick.yaml"),
            labels,
            contexts,
            **settings(args.set),
            name=f"nf{index}",
            rounds=rounds,
            control=True,
        )
        print(
            f"sweep {index}/{args.sweeps}: {data['name']} (rounds {rounds}) in {directory}",
            flush=True,
        )
        submit(data, directory, db)
    view("noise", db)
    print(f"\ndatabase: {db}")
