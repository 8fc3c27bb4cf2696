"""What every `farm` command shares: the app, the consoles, common options, errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

DEFAULT_CACHE = Path("~/.cache/whistle-stop").expanduser()
# typer carries its own click; its usage errors are the base class of its BadParameter
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneLineErrors(TyperGroup):
    """A usage error (unknown option, bad value) is one `error:` line on stderr, exit 2,
    like every other error of the farm, instead of a boxed usage panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except UsageError as error:
            if type(error).__name__ == "NoArgsIsHelpError":
                sys.exit(0)  # `farm` alone: the help was shown, as asked
            command = error.ctx.command_path if error.ctx else "farm"
            fail(f"{error.format_message().replace('Value error, ', '')} (see {command} -h)")
            sys.exit(2)
        except typer.Abort:
            sys.exit(130)
        except Exception as error:  # a bug: one line for the user, the traceback kept
            fail(f"internal error {type(error).__name__}: {error} (a bug; {_keep_traceback()})")
            sys.exit(3)
        sys.exit(result if isinstance(result, int) else 0)


def _keep_traceback() -> str:
    """Write the traceback under the cache's logs/ and say where, for a bug report."""
    import os
    import tempfile
    import time
    import traceback

    logs = Path(os.environ.get("FARM_CACHE_DIR", DEFAULT_CACHE)).expanduser() / "logs"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        path = logs / f"farm-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        path.write_text(traceback.format_exc())
    except OSError:
        fd, name = tempfile.mkstemp(prefix="farm-error-", suffix=".txt")
        os.write(fd, traceback.format_exc().encode())
        os.close(fd)
        path = Path(name)
    return f"please report it with {path}"


app = typer.Typer(
    cls=OneLineErrors,
    help="whistle-stop: a benchmark farm for fast GPT inference on CPUs.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: it wraps at 80 columns and never cuts an option
    pretty_exceptions_enable=False,  # a plain traceback: short, and pastes into an issue
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"whistle-stop {version('whistle-stop')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """whistle-stop: a benchmark farm for fast GPT inference on CPUs."""


console = Console()
errors = Console(stderr=True, soft_wrap=True)

DEFAULT_DB = "farm.db"  # in the current directory, like git's .git

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        help="SQLite file path or any SQLAlchemy URL for the results database.",
        envvar="FARM_DB_URL",
    ),
]
CacheOption = Annotated[
    Path,
    typer.Option(
        help="Where workers keep materialised models and exported artifacts.",
        envvar="FARM_CACHE_DIR",
    ),
]


def _broker_url(value: str | None) -> str | None:
    """A Redis URL or nothing: checked at the edge, so no command meets a URL that the
    Redis client would refuse with a traceback."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as error:
        raise typer.BadParameter(f"{value!r} is not a URL ({error})") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise typer.BadParameter(
            f"{value!r} is not a Redis URL: write redis://HOST:6379/0 (or rediss://, unix://)"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise typer.BadParameter(f"{value!r} names no host: write redis://HOST:6379/0")
    del port  # only parsed: an out-of-range port raises above
    return value


BrokerOption = Annotated[
    str | None,
    typer.Option(
        help="Redis URL of the Celery broker, e.g. redis://host:6379/0. "
        "Without one, jobs run here on the embedded default.",
        envvar="FARM_BROKER_URL",
        callback=_broker_url,
    ),
]
QueueOption = Annotated[str, typer.Option(help="Celery queue the jobs go through.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or status lines; errors only.")
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one `error:` line on stderr (the message is never read as markup) and return
    the exit to raise."""
    errors.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    return typer.Exit(code)


def sessions(db: str):
    """The session factory of a database this command may create or upgrade."""
    from whistle_stop.db.session import DatabaseError, make_session_factory

    try:
        return make_session_factory(db)
    except DatabaseError as error:
        raise fail(str(error)) from None


def open_existing(db: str):
    """A read-only session on an existing whistle-stop database: reading never writes."""
    from whistle_stop.db.session import DatabaseError, open_readonly

    try:
        return open_readonly(db)()
    except DatabaseError as error:
        raise fail(str(error)) from None
