"""The engine and session factory: SQLite by default, any SQLAlchemy URL accepted."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from db.models import Base

DEFAULT_DB = "farm.db"


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
    return engine


def make_session_factory(path_or_url: str) -> sessionmaker[Session]:
    return sessionmaker(make_engine(path_or_url), expire_on_commit=False)


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
