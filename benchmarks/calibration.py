"""How often the farm's verdict is wrong, against slowdowns that are known.

Runs examples/calibration.yaml S times (each a separate sweep, rounds: auto): in each of
its cells a control, an identical twin, and twins reading 5% and 10% more bytes a step.
Each twin's within-round ratios to the control give a 95% interval (contract/figures.py)
and a verdict at --margin: A/A (twin) should say same or unknown, never faster or slower;
A/B should say slower. Prints the counts, the wrong-direction calls, and how many rounds
rounds: auto spent per cell.

    .venv/bin/python benchmarks/calibration.py --sweeps 4 --db calibration.db

Nothing else may run on the machine meanwhile: it is what is being measured.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from common import ROOT, submit, table

from whistle_stop.contract.figures import FASTER, SLOWER, ratio_interval, verdict
from whistle_stop.db.session import open_readonly
from whistle_stop.reports.query import find_sweeps, result_rows

EXPECTED = {"twin": "no difference", "slower-5": SLOWER, "slower-10": SLOWER}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweeps", type=int, default=4, help="separate sweeps to run")
    parser.add_argument("--db", type=Path, required=True, help="where the sweeps are stored")
    parser.add_argument("--margin", type=float, default=0.02, help="same within ±this")
    parser.add_argument("--no-run", action="store_true", help="only read what --db holds")
    args = parser.parse_args()
    if not args.no_run:
        source = yaml.safe_load((ROOT / "examples/calibration.yaml").read_text())
        directory = Path(tempfile.mkdtemp(prefix="calibration-"))
        for index in range(1, args.sweeps + 1):
            print(f"sweep {index}/{args.sweeps}", flush=True)
            submit(source | {"name": f"calibration-{index}"}, directory, args.db)
    with open_readonly(str(args.db))() as session:
        rows = result_rows(session, find_sweeps(session, None, every=True), "control")
    calls: dict[str, Counter] = {label: Counter() for label in EXPECTED}
    rounds = Counter()
    for row in rows:
        if row["label"] in EXPECTED and row["status"] == "done":
            found = verdict(ratio_interval(row["round_speedups"]), args.margin)
            calls[row["label"]][found] += 1
            rounds[row["rounds"]] += 1
    lines = []
    for label, counted in calls.items():
        total = sum(counted.values())
        if label == "twin":
            wrong = counted[FASTER] + counted[SLOWER]
            what = f"false alarms {wrong}/{total}"
        else:
            wrong = counted[FASTER]
            what = f"detected {counted[SLOWER]}/{total}"
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counted.items()))
        lines.append(
            [label, str(total), shown, what, f"wrong direction {wrong if label != 'twin' else 0}"]
        )
    print(table(["path", "cells", "verdicts", "rate", ""], lines))
    spent = ", ".join(f"{n} rounds: {c} cells" for n, c in sorted(rounds.items()))
    print(f"margin ±{args.margin:.0%}; rounds: auto spent {spent}")


if __name__ == "__main__":
    main()
