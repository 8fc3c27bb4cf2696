"""Fidelity on trained weights beside the same model untrained: what random weights hid.

Runs examples/fidelity.yaml twice through the real `farm submit`: on
`trained:gpt2-shakespeare`, and on `trained:gpt2-shakespeare-untrained` (the same
architecture, tokenizer and held-out windows, with the seeded initial weights: what every
fidelity figure was measured on before). Prints `farm report --view fidelity` for each and
draws both speed-vs-fidelity figures side by side.

    farm bench fidelity [--backends hf,native-q4-b128,llama-q4_K_M] [--keep farm.db]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from whistle_stop.bench.common import edited_grid, example, farm, submit

TWINS = {
    "fidelity": "trained:gpt2-shakespeare",
    "fidelity-untrained": "trained:gpt2-shakespeare-untrained",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=None, help="only these labels (comma-separated)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the database here")
    parser.add_argument("--plots", type=Path, default=Path("plots/fidelity"))
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="fidelity-"))
    db = args.keep or directory / "farm.db"
    labels = args.backends.split(",") if args.backends else None
    for name, model in TWINS.items():
        data = edited_grid(example("fidelity.yaml"), labels, name=name, model=model)
        print(f"{name}: {model} in {directory}", flush=True)
        submit(data, directory, db, "--skip-missing")
    for name in TWINS:
        print(f"\n## {name}\n", flush=True)
        farm("report", "--sweep", name, "--view", "fidelity", "--db", str(db), "-f", "markdown")
    sweeps = [arg for name in TWINS for arg in ("--sweep", name)]  # drawn side by side
    farm("plot", *sweeps, "--db", str(db), "--out", str(args.plots))
    print(f"\ndatabase: {db}; figures: {args.plots}/speed_vs_fidelity.png")
