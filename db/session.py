"""Engines and session factories: SQLite by default, PostgreSQL (or any SQLAlchemy URL).

Two ways in:
- `make_session_factory` for commands whose job is to write (`submit`, `collect`):
  it creates the schema, or adds the columns a newer version has.
- `open_readonly` for commands that only read (`report`, `show`, ...): a SQLite file
  is opened with `mode=ro`, nothing is created, no pragma is written, and a file that
  is not a whistle-stop database is refused in one line; one an older whistle-stop
  wrote is read as it is, the figures added since read as empty.
Both raise `DatabaseError` with a message a user can act on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, literal
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from whistle_stop.db.models import Base

TABLES = {table.name for table in Base.metadata.sorted_tables}
SCHEMA_LOCK = 4729_0001  # the PostgreSQL advisory lock held while the schema is made


class DatabaseError(RuntimeError):
    """The database cannot be used; the message says why and what to do, in one line."""


def database_url(path_or_url: str) -> str:
    """A file path becomes a SQLite URL; anything with '://' is used as it is."""
    if "://" in path_or_url:
        return path_or_url
    return f"sqlite:///{Path(path_or_url).expanduser()}"


def _json(value: Any) -> str:
    """JSON that every database accepts: NaN and infinities (a one-token generation has
    no decode step) become null, since PostgreSQL's JSON has no NaN."""
    return json.dumps(_finite(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _engine(url: str, **options: Any) -> Engine:
    try:
        engine = create_engine(url, json_serializer=_json, **options)
    except sa_exc.NoSuchModuleError:
        scheme = url.split("://", 1)[0]
        raise DatabaseError(
            f"unknown database URL scheme {scheme!r}; use a file path, sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from None
    except ModuleNotFoundError as error:
        raise DatabaseError(
            f"the database driver {error.name!r} for {url.split('://', 1)[0]} is not installed: "
            "pip install -e '.[postgres]' (psycopg) for PostgreSQL"
        ) from None
    except sa_exc.ArgumentError as error:
        raise DatabaseError(f"not a database URL: {error}") from None
    return engine


def make_engine(path_or_url: str, *, create: bool = True) -> Engine:
    """An engine with the schema created. SQLite gets WAL and a busy timeout:
    readers (`farm report`) never block the writer, and brief locks are waited out."""
    url = database_url(path_or_url)
    if url.startswith("sqlite:///") and Path(url.removeprefix("sqlite:///")).is_dir():
        raise DatabaseError(f"{path_or_url} is a directory, not a database file")
    if create and url.startswith("sqlite:///"):
        _refuse_foreign_file(Path(url.removeprefix("sqlite:///")), path_or_url)
    engine = _engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        try:
            with engine.begin() as connection:
                if engine.dialect.name == "postgresql":
                    # two submits meeting a new database: one creates the schema while the
                    # other waits, instead of both racing to CREATE the same tables
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
                _refuse_foreign(connection, path_or_url)
                Base.metadata.create_all(connection)
                upgrade_schema(connection)
        except sa_exc.DatabaseError as error:
            raise DatabaseError(f"{path_or_url}: {_reason(error)}") from None
    return engine


def _refuse_foreign(connection: Connection, name: str) -> None:
    """A database that holds tables and none of ours belongs to another application:
    adding whistle-stop's tables to it would be a write nobody asked for."""
    tables = set(inspect(connection).get_table_names())
    if tables and not tables & TABLES:
        shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        raise DatabaseError(
            f"{name} is another application's database (tables {shown}, none of "
            "whistle-stop's); nothing was written: pass --db a new file or an empty database"
        )


def _refuse_foreign_file(path: Path, name: str) -> None:
    """The same check on an SQLite file, read-only: the writer's first connection turns on
    write-ahead logging, which is already a write to someone else's file."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    reader = _engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
    try:
        with reader.connect() as connection:
            _refuse_foreign(connection, name)
    except sa_exc.DBAPIError as error:
        raise DatabaseError(f"{name}: {_reason(error)}") from None
    finally:
        reader.dispose()


def upgrade_schema(connection: Connection) -> list[str]:
    """Add columns that this version's models have and the database lacks, in the
    caller's transaction.

    Additive only: a newer whistle-stop can read and extend a database written by an
    older one. Returns the columns added ("table.column").
    """
    added = []
    inspector = inspect(connection)
    dialect = connection.dialect
    for table in Base.metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=dialect)
            value = _default_sql(column, dialect)
            if value is not None:
                clause = f" NOT NULL DEFAULT {value}"
            elif column.nullable:
                clause = ""
            else:
                raise DatabaseError(
                    f"the database lacks the required column {table.name}.{column.name}; "
                    "it was written by an incompatible whistle-stop: start a new one with --db"
                )
            connection.exec_driver_sql(
                f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{clause}'
            )
            added.append(f"{table.name}.{column.name}")
    return added


def make_session_factory(path_or_url: str) -> sessionmaker[Session]:
    return sessionmaker(make_engine(path_or_url), expire_on_commit=False)


def open_readonly(path_or_url: str) -> sessionmaker[Session]:
    """Sessions on an existing whistle-stop database that can change nothing in it."""
    url = database_url(path_or_url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists():
            raise DatabaseError(
                f"no database at {path_or_url}; run `farm submit --grid FILE` first, or pass --db"
            )
        if path.is_dir():
            raise DatabaseError(f"{path_or_url} is a directory, not a database file")
        # A URI filename with mode=ro: SQLite itself refuses every write. A database at
        # rest (no -wal file: no writer has it open) is opened immutable, or SQLite would
        # leave -wal and -shm files beside it; one in use shares its writer's.
        at_rest = not path.with_name(path.name + "-wal").exists()
        url = f"sqlite:///file:{path.resolve()}?mode=ro{'&immutable=1' if at_rest else ''}&uri=true"
    engine = _engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_read_pragmas)
    lacking = _check_schema(engine, path_or_url)
    if lacking:
        # every connection from here on reads through the views; none made before
        engine.dispose()
        event.listen(engine, "connect", lambda connection, _: _read_as_null(connection, lacking))
    return sessionmaker(engine, expire_on_commit=False)


def _check_schema(engine: Engine, name: str) -> dict[str, str]:
    """Refuses what is not a whistle-stop database, or one that lacks a column it needs;
    for each table that lacks columns this version has (an older whistle-stop wrote it),
    the view that reads them as their default or NULL (`_read_as_null`)."""
    lacking: dict[str, str] = {}
    try:
        inspector = inspect(engine)
        tables = set(inspector.get_table_names())
        if not TABLES <= tables:
            missing = ", ".join(sorted(TABLES - tables))
            raise DatabaseError(f"{name} is not a whistle-stop database (no table {missing})")
        dialect = engine.dialect
        schema = "main" if dialect.name == "sqlite" else inspector.default_schema_name
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            missing = {
                c.name: _stand_in(c, dialect) for c in table.columns if c.name not in present
            }
            required = [column for column, stand_in in missing.items() if stand_in is None]
            if required:
                raise DatabaseError(
                    f"{name} was written by an older whistle-stop (no {table.name}."
                    f"{required[0]}); upgrade it by submitting a sweep to it: "
                    f"farm submit --grid FILE --db {name}"
                )
            if missing:
                nulls = ", ".join(f'{value} AS "{column}"' for column, value in missing.items())
                lacking[table.name] = (
                    f'CREATE TEMP VIEW "{table.name}" AS SELECT *, {nulls} '
                    f'FROM "{schema}"."{table.name}"'
                )
    except sa_exc.DBAPIError as error:
        raise DatabaseError(f"{name}: {_reason(error)}") from None
    return lacking


def _default_sql(column, dialect) -> str | None:
    """A column's constant default as SQL text (None: no default, or one computed in
    Python): what upgrade_schema gives old rows, and what a reader shows in their place."""
    default = column.default.arg if column.default is not None else None
    if default is None or callable(default):
        return None
    return str(
        literal(default, column.type).compile(
            dialect=dialect, compile_kwargs={"literal_binds": True}
        )
    )


def _stand_in(column, dialect) -> str | None:
    """What a column a database lacks reads as: its default, else NULL where it may be
    NULL; None where neither (the database cannot be read as this version's)."""
    kind = column.type.compile(dialect=dialect)
    value = _default_sql(column, dialect)
    if value is None and not column.nullable:
        return None
    return f"CAST({value or 'NULL'} AS {kind})"


def _read_as_null(connection, lacking: dict[str, str]) -> None:
    """A figure this version added is read as NULL from a database written before it:
    a view of each such table in the connection's own temporary schema, which both
    SQLite and PostgreSQL search before the database's, adds the missing columns. Reading
    an old database needs no write to it (a writer adds them: upgrade_schema)."""
    cursor = connection.cursor()
    for statement in lacking.values():
        cursor.execute(statement)
    cursor.close()


def _reason(error: sa_exc.DBAPIError) -> str:
    """The driver's own one-line reason ('file is not a database', 'connection refused')."""
    text = str(error.orig) if error.orig is not None else str(error)
    return " ".join(text.split("\n")[0].split()) or type(error).__name__


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_read_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")  # a writer's brief lock is waited out
    cursor.close()
