"""The engine and session factory: SQLite by default, any SQLAlchemy URL accepted."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

from db.models import Base


def database_url(path_or_url: str) -> str:
    """A file path becomes a SQLite URL; anything with '://' is used as it is."""
    if "://" in path_or_url:
        return path_or_url
    return f"sqlite:///{Path(path_or_url).expanduser()}"


def make_engine(path_or_url: str, *, create: bool = True) -> Engine:
    """An engine with the schema created. SQLite gets WAL and a busy timeout:
    readers (`farm report`) never block the writer, and brief locks are waited out."""
    engine = create_engine(database_url(path_or_url))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        Base.metadata.create_all(engine)
        upgrade_schema(engine)
    return engine


def upgrade_schema(engine: Engine) -> list[str]:
    """Add columns that this version's models have and the database lacks.

    Additive only: a newer whistle-stop can read and extend a database written by an
    older one. Returns the columns added ("table.column").
    """
    added = []
    inspector = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                default = column.default.arg if column.default is not None else None
                if default is not None and not callable(default):
                    value = int(default) if isinstance(default, bool) else repr(default)
                    clause = f" NOT NULL DEFAULT {value}"
                elif column.nullable:
                    clause = ""
                else:
                    raise RuntimeError(
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


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
