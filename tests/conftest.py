"""Shared fixtures: tiny random GPT-2 models made on the fly, temporary databases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from whistle_stop.bench.harness import save_tiny_gpt2

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "farm.db"


PG_URL = os.environ.get("FARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1/test")


def _pg_admin():
    """A connection to the PostgreSQL server the machine runs, or None (with why)."""
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed: pip install -e '.[postgres]'"
    try:
        conninfo = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=3), None
    except psycopg.OperationalError as error:
        return None, f"no PostgreSQL answers at {PG_URL}: {str(error).strip().splitlines()[0]}"


@pytest.fixture
def pg_url():
    """A fresh PostgreSQL database for one test (dropped afterwards); skipped, loudly, only
    where no server answers (FARM_TEST_PG_URL names another)."""
    import uuid

    admin, why = _pg_admin()
    if admin is None:
        pytest.skip(f"PostgreSQL tests SKIPPED: {why}")
    name = f"whistle_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path) -> str:
    """The same test on SQLite (a file) and on PostgreSQL (a database of its own)."""
    if request.param == "sqlite":
        return str(tmp_path / "farm.db")
    return request.getfixturevalue("pg_url")
