"""whistle-stop's paths beside the engines a user might pick instead, as one farm sweep.

A thin wrapper: `farm submit --grid examples/engines.yaml` (every engine variant a farm
backend, each job its own pinned process, so a crashing engine is one failed job with
its signal, and the sweep goes on), then the report and the speed-vs-fidelity plot.
Engines are optional extras: `make engines` (pip builds llama.cpp from source); a variant whose extra is missing is left out, and said so.

    .venv/bin/python benchmarks/peers.py [--rounds 3] [--contexts 32,128,512] [--db FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml
from common import ROOT, farm

from whistle_stop.backends import registry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=None, help="override the file's rounds")
    parser.add_argument("--contexts", default=None, help="override context_sizes, e.g. 128")
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    data = yaml.safe_load((ROOT / "examples/engines.yaml").read_text())
    kept = []
    for entry in data["backends"]:
        name = entry if isinstance(entry, str) else entry["name"]
        try:
            registry.check_extra(name)
            kept.append(entry)
        except registry.MissingDependencyError as error:
            print(
                f"left out {entry.get('label', name) if isinstance(entry, dict) else name}: {error}"
            )
    data["backends"] = kept
    if args.rounds:
        data["rounds"] = args.rounds
    if args.contexts:
        data["context_sizes"] = [int(c) for c in args.contexts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    grid, db = work / "engines.yaml", args.db or work / "farm.db"
    grid.write_text(yaml.safe_dump(data, sort_keys=False))
    farm("submit", "--grid", str(grid), "--db", str(db))
    farm("report", "--db", str(db), "--sweep", data["name"])
    farm("plot", "--db", str(db), "--sweep", data["name"], "--out", str(work / "plots"))


if __name__ == "__main__":
    main()
