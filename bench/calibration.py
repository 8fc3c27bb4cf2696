"""How often the farm's verdict is wrong, against slowdowns that are known.

Runs examples/calibration.yaml S times (each a separate sweep, rounds: auto): in each of
its cells a control, an identical twin, and twins reading 5% and 10% more bytes a step.
Each twin's within-round ratios to the control give a 95% interval (contract/figures.py)
and a verdict at ±2%: A/A (twin) should say same or unknown, never faster or slower; A/B
should say slower. `farm report --view calibration` prints the counts, the wrong-direction
calls, the rounds spent per cell, and the noise of one ratio on this host.

    farm bench calibration --sweeps 4 --db calibration.db
    farm bench calibration --sweeps 4 --db calibration.db --set max_rounds=30  # shorter

Nothing else may run on the machine meanwhile: it is what is being measured.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from whistle_stop.bench.common import add_set_option, counting, example, settings, submit, view


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweeps", type=counting, default=4, help="separate sweeps to run")
    parser.add_argument("--db", type=Path, required=True, help="where the sweeps are stored")
    parser.add_argument("--no-run", action="store_true", help="only read what --db holds")
    add_set_option(parser)
    args = parser.parse_args(argv)
    if not args.no_run:
        source = yaml.safe_load(example("calibration.yaml").read_text()) | settings(args.set)
        directory = Path(tempfile.mkdtemp(prefix="calibration-"))
        for index in range(1, args.sweeps + 1):
            print(f"sweep {index}/{args.sweeps}", flush=True)
            submit(source | {"name": f"calibration-{index}"}, directory, args.db)
    view("calibration", args.db, "--baseline", "control")
