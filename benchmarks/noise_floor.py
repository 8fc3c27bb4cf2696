"""The farm's noise floor, and how stable its verdicts are, over separate sweeps.

Runs a sweep file S times through the real `farm submit` (the embedded pool, as a user
would), each time with `control: true` (a second copy of the baseline) and the given
number of rounds, then prints per cell and sweep:
  - the control's ratio to the baseline (1.00 on a perfect machine: the noise floor);
  - with --best LABEL, that path's speedup over the baseline, and its spread across sweeps.

    .venv/bin/python benchmarks/noise_floor.py examples/quick.yaml --sweeps 3 --rounds 3
    .venv/bin/python benchmarks/noise_floor.py examples/quick.yaml --sweeps 3 --rounds 1  # sequential
    .venv/bin/python benchmarks/noise_floor.py examples/quick.yaml --set min_duration_s=3
    .venv/bin/python benchmarks/noise_floor.py examples/fastest.yaml --best onnx-int4-all \
        --backends hf,onnx-int4-all,onnx-int8-all --contexts 128

Nothing else may run on the machine meanwhile: it is what is being measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml
from common import ROOT, edited_grid, submit, table

from whistle_stop.db.session import open_readonly
from whistle_stop.reports.query import find_sweeps, result_rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep", type=Path, nargs="?", default=ROOT / "examples/quick.yaml")
    parser.add_argument("--sweeps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--best", default=None, help="a label whose speedup to follow")
    parser.add_argument("--backends", default=None, help="only these labels (comma-separated)")
    parser.add_argument("--contexts", default=None, help="only these contexts")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep key, e.g. --set min_duration_s=3",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep the database here")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="noise-floor-"))
    db = args.keep or directory / "farm.db"
    labels = args.backends.split(",") if args.backends else None
    contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else None
    pairs = (setting.partition("=") for setting in args.set)
    settings = {key: yaml.safe_load(value) for key, _, value in pairs}
    for index in range(1, args.sweeps + 1):
        data = edited_grid(
            args.sweep,
            labels,
            contexts,
            **settings,
            name=f"nf{index}",
            rounds=args.rounds,
            control=True,
        )
        print(
            f"sweep {index}/{args.sweeps}: {data['name']} (rounds {args.rounds}) in {directory}",
            flush=True,
        )
        submit(data, directory, db)
    with open_readonly(str(db))() as session:
        sweeps = find_sweeps(session, None, every=True)
        baseline = sweeps[0].baseline or "hf"
        rows = result_rows(session, sweeps, baseline)

    def cells(label: str) -> dict[tuple, dict[str, float]]:
        found: dict[tuple, dict[str, float]] = {}
        for row in rows:
            if row["label"] == label and row["speedup"] is not None:
                cell = (row["context"], row["generation"], row["threads"])
                found.setdefault(cell, {})[row["sweep"]] = row["speedup"]
        return found

    names = [s.name for s in sweeps]
    for label, what in (
        (f"{baseline}-control", "control / baseline (the noise floor)"),
        (args.best, f"speedup of {args.best} over {baseline}"),
    ):
        if label is None:
            continue
        found = cells(label)
        lines, every = [], []
        for (context, generation, threads), ratios in sorted(found.items()):
            values = [ratios[n] for n in names if n in ratios]
            every += values
            spread = (max(values) - min(values)) / statistics.median(values)
            lines.append(
                [
                    f"{context}/{generation}/{threads}",
                    *(f"{v:.3f}" for v in values),
                    f"{spread:.1%}",
                ]
            )
        print(
            f"\n{what}, rounds: {args.rounds}, ratios taken within each round (median over rounds):"
        )
        print(table(["ctx/gen/thr", *names[: len(lines[0]) - 2], "spread"], lines))
        if every:
            print(f"all cells and sweeps: {min(every):.3f} to {max(every):.3f}")
    print(f"\ndatabase: {db}")


if __name__ == "__main__":
    main()
