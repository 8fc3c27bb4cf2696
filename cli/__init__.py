"""`farm`: the whistle-stop command line (typer). Every command is a thin wrapper around
one library function; importing this package never imports torch, so `farm --help` is fast.

Exit codes: 0 ok; 1 a regression found by `farm compare --fail-above`; 2 a usage or
input error (nothing was written); 3 something failed at run time (jobs failed in
`farm submit`, a broker that went away); 130 interrupted.
"""

from __future__ import annotations

from whistle_stop.cli import (  # noqa: F401  (each registers its commands)
    bench,
    bisect,
    history,
    model,
    reports,
    run,
    worker,
)
from whistle_stop.cli.common import app


def main() -> None:
    app()
