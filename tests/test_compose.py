"""No Docker engine runs here, so check docker-compose.yml by parsing it: every farm
service's command must be one the `farm` CLI accepts."""

from __future__ import annotations

from pathlib import Path

import click
import typer
import yaml

from whistle_stop.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_every_compose_command_is_accepted_by_the_cli():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    group = typer.main.get_command(app)
    checked = 0
    for name, service in compose["services"].items():
        if "build" not in service:
            continue  # not our image (redis)
        command, *args = service["command"]
        sub = group.get_command(click.Context(group), command)
        assert sub is not None, f"{name}: farm has no command {command!r}"
        sub.make_context(command, list(args))  # raises on an unknown or malformed option
        checked += 1
    assert checked >= 3


def test_workers_have_disjoint_cpusets_matching_their_pinning():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    workers = {n: s for n, s in services.items() if s.get("command", [None])[0] == "worker"}
    cpus = [s["command"][s["command"].index("--cpus") + 1] for s in workers.values()]
    assert [s["cpuset"] for s in workers.values()] == cpus
    assert len(set(cpus)) == len(cpus)


def test_redis_keeps_an_append_only_file():
    redis = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["redis"]
    assert "--appendonly" in redis["command"]


def test_redis_asks_for_a_password_that_is_not_in_the_file():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    command = services["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert password.startswith("${REDIS_PASSWORD")  # from .env, never committed
    for name, service in services.items():
        if "--broker" in service.get("command", []):
            url = service["command"][service["command"].index("--broker") + 1]
            assert url.startswith("redis://:${REDIS_PASSWORD}@"), name
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_the_image_copies_every_package_pyproject_installs():
    """`pip install .` in the image finds only what was copied: a package left out of
    the Dockerfile is a worker that cannot import it (or, for native/, compile it)."""
    import re
    import tomllib

    root = Path(__file__).resolve().parent.parent
    found = tomllib.loads((root / "pyproject.toml").read_text())
    packages = set(found["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\w+) \1$", (root / "Dockerfile").read_text(), re.M))
    assert packages <= copied, sorted(packages - copied)
