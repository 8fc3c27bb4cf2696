"""Each path beside a busy neighbour: the same sweep quiet, then with a busy loop on one
of the job's CPUs (issue #31's goal 4: median step <= 2.3x the quiet median, mean step
<= 1.3x the median).

Runs examples/sizes.yaml cut to --model, --labels and --contexts (2 threads: the job's
two CPUs), once quiet and once while a process spins on the last CPU of the machine (or
--cpu; pinned there; pure arithmetic, no memory traffic, so the roofline's bandwidth is
left alone), as the sweeps `<tag>-quiet` and `<tag>-busy`; `farm report --view limits` pairs
them. --revision runs the farm (orchestrator and workers) from a git worktree of that
revision of this checkout instead (orchestrator/bisect.py's checkout): the engine before
a change, beside it after.

    farm bench neighbour --db limits.db
    farm bench neighbour --db limits.db --cpu 0 --tag cpu0  # the job's first CPU
    farm bench neighbour --db limits.db --revision 669a8fb --tag before

Nothing else may run on the machine meanwhile: it is what is being measured.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from whistle_stop.bench.common import (
    CACHE,
    CHECKOUT,
    counting,
    edited_grid,
    example,
    model_source,
    view,
)

LABELS = "native-q8-b128,native-q4-b128,llama-q8_0,llama-q4_0"
BUSY_LOOP = "import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", type=Path, required=True, help="where the sweeps are stored")
    parser.add_argument("--labels", default=LABELS, help=f"paths of sizes.yaml [{LABELS}]")
    parser.add_argument("--model", default="random:gpt2", type=model_source, help="[random:gpt2]")
    parser.add_argument("--contexts", default="128", help="[128]")
    parser.add_argument("--rounds", type=counting, default=2, help="rounds a sweep [2]")
    parser.add_argument(
        "--cpu",
        type=int,
        default=None,
        help="the CPU the busy loop spins on [the last]; the job's threads move between its CPUs",
    )
    parser.add_argument("--tag", default="neighbour", help="the sweeps' names: TAG-quiet, -busy")
    parser.add_argument("--revision", help="run the farm from this revision's worktree")
    parser.add_argument("--no-run", action="store_true", help="only read what --db holds")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 1
    cpu = cpus - 1 if args.cpu is None else args.cpu
    if not 0 <= cpu < cpus:
        parser.error(f"--cpu {cpu}: this machine's CPUs are 0-{cpus - 1}")
    if not args.no_run:
        env = dict(os.environ)
        if args.revision:
            from whistle_stop.orchestrator.bisect import checkout

            site = checkout(CHECKOUT, args.revision, CACHE / "bisect")
            env["PYTHONPATH"] = str(site)
            print(f"the farm from {args.revision}: {site}", flush=True)
        labels = args.labels.split(",")
        data = edited_grid(
            example("sizes.yaml"),
            labels,
            [int(c) for c in args.contexts.split(",")],
            models=[args.model],
            rounds=args.rounds,
            threads=[2],
            baseline=labels[0],
        )
        data["backends"] = [b for b in data["backends"] if _label(b) in labels]
        directory = Path(tempfile.mkdtemp(prefix="neighbour-"))
        for quiet in (True, False):
            name = f"{args.tag}-{'quiet' if quiet else 'busy'}"
            grid = directory / f"{name}.yaml"
            grid.write_text(yaml.safe_dump(data | {"name": name}, sort_keys=False))
            print(f"{name}: {', '.join(labels)} on {args.model}", flush=True)
            busy = None if quiet else _busy_loop(cpu)
            try:
                farm = Path(sys.executable).with_name("farm")
                command = [str(farm), "submit", "--grid", str(grid), "--db", str(args.db), "-q"]
                subprocess.run(command, env=env, check=False)
            finally:
                if busy:
                    busy.kill()
                    busy.wait()
    view("limits", args.db)


def _label(entry) -> str:
    from whistle_stop.orchestrator.sweep import backend_label

    return backend_label(entry)


def _busy_loop(cpu: int) -> subprocess.Popen:
    """A process spinning on `cpu` until killed: the neighbour."""
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(cpu)])
