"""`farm bench NAME [ARGS]`: a benchmark by name, its arguments passed through."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from whistle_stop.bench import BENCHES
from whistle_stop.cli.common import app, console, fail


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,  # `farm bench NAME -h` is the benchmark's own help
)
def bench(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="The benchmark; none, -h or --help: the list.")
    ] = None,
) -> None:
    """Run a benchmark: it prints figures (nothing else may run on the machine meanwhile).
    `farm bench` lists them; `farm bench NAME -h` shows one's options."""
    if name in (None, "-h", "--help"):
        console.print("Usage: farm bench NAME [ARGS]... (farm bench NAME -h: its options)\n")
        for known, (_, summary) in BENCHES.items():
            console.print(f"  {known:<16} {summary}", highlight=False)
        return
    if name not in BENCHES:
        raise fail(f"no benchmark named {name!r}; known: {', '.join(BENCHES)}")
    module = importlib.import_module(f"whistle_stop.bench.{BENCHES[name][0]}")
    sys.argv[0] = f"farm bench {name}"  # what argparse names in its usage line
    module.main([*ctx.args])
