"""Shared fixtures: tiny random GPT-2 models made on the fly, temporary databases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Worker processes started by tests import the project from this checkout.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def save_tiny_gpt2(directory: Path, *, seed: int = 0, n_positions: int = 128, **overrides) -> Path:
    """A GPT-2 of a few thousand parameters, written with save_pretrained (safetensors)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=256, n_positions=n_positions)
    config.update(overrides)
    config.update(bos_token_id=config["vocab_size"] - 1, eos_token_id=config["vocab_size"] - 1)
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**config)).eval().save_pretrained(directory)
    return directory


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
