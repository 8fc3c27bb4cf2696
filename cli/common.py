"""What every `farm` command shares: the app, the consoles, common options, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    help="whistle-stop: a benchmark farm for fast GPT inference on CPUs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,  # a plain traceback: short, and pastes into an issue
)
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
BrokerOption = Annotated[
    str | None,
    typer.Option(
        help="Redis URL of the Celery broker, e.g. redis://host:6379/0. "
        "Without one, jobs run here on the embedded default.",
        envvar="FARM_BROKER_URL",
    ),
]
QueueOption = Annotated[str, typer.Option(help="Celery queue the jobs go through.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or status lines; errors only.")
]
DEFAULT_CACHE = Path("~/.cache/whistle-stop").expanduser()


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one `error:` line on stderr (the message is never read as markup) and return
    the exit to raise."""
    errors.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    return typer.Exit(code)


def sessions(db: str):
    """The session factory of a database this command may create or upgrade."""
    from db.session import DatabaseError, make_session_factory

    try:
        return make_session_factory(db)
    except DatabaseError as error:
        raise fail(str(error)) from None


def open_existing(db: str):
    """A read-only session on an existing whistle-stop database: reading never writes."""
    from db.session import DatabaseError, open_readonly

    try:
        return open_readonly(db)()
    except DatabaseError as error:
        raise fail(str(error)) from None


def write(text: str, out: Path | None) -> None:
    if out:
        out.write_text(text)
        console.print(f"wrote {out}")
    else:
        typer.echo(text, nl=not text.endswith("\n"))
