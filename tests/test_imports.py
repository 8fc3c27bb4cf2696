"""The house's shape: one installed name, imports that only point down, and no cycle.

The graph counts every import statement, those inside functions included: a lazy import
keeps `farm --help` fast, but it is still an arrow between two modules.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import whistle_stop

ROOT = Path(__file__).resolve().parent.parent
# each floor may import its own and the floors below; PACKAGES lists them lowest first
FLOOR = {"whistle_stop": 0, "artifacts": 0} | {
    name: index for index, name in enumerate(whistle_stop.PACKAGES)
}
# arrows that point down but cross a boundary the architecture draws
FORBIDDEN = {
    # workers, executors and backends never touch the database: the store is its one writer
    ("worker", "db"),
    ("executors", "db"),
    ("backends", "db"),
    ("native", "db"),
    # the single writer and the read side hear of jobs through the contract only
    ("orchestrator", "worker"),
    ("reports", "worker"),
    ("reports", "executors"),
    ("reports", "orchestrator"),
    ("executors", "worker"),
}
# `farm worker` starts a worker and measures bandwidth: the CLI's only way into worker/
ALLOWED = {
    ("whistle_stop.cli.worker", "whistle_stop.worker.serve"),
    ("whistle_stop.cli.worker", "whistle_stop.worker.bandwidth"),
}


def modules() -> dict[str, Path]:
    found = {"whistle_stop": ROOT / "whistle_stop" / "__init__.py"}
    found["whistle_stop.artifacts"] = ROOT / "whistle_stop" / "artifacts.py"
    for package in whistle_stop.PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("whistle_stop", *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The whistle_stop modules `path` imports anywhere in its body."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)  # `from pkg import submodule` names the submodule
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in known}


def floor_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "whistle_stop"


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_every_module_is_on_a_floor():
    assert {floor_of(name) for name in modules()} <= set(FLOOR)


def test_no_import_points_up_or_crosses_a_boundary():
    problems = []
    for module, targets in graph().items():
        for target in targets:
            here, there = floor_of(module), floor_of(target)
            if (module, target) in ALLOWED:
                continue
            if FLOOR[there] > FLOOR[here] or (here, there) in FORBIDDEN:
                problems.append(f"{module} -> {target}")
    assert problems == []


def test_nothing_imports_a_folder_by_its_bare_name():
    """A checkout puts `db/` on sys.path too: `import db` would work here and nowhere
    else. Every import in the tree (tests and bench too) goes through whistle_stop."""
    bare = set(whistle_stop.PACKAGES) | {"artifacts"}
    found = []
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") or part == "build" for part in path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in bare]
        text = path.read_text()
        found += [
            f"{path.relative_to(ROOT)}: {m}" for m in re.findall(r"from (?:cli|db) import", text)
        ]
    assert found == []


def test_the_store_does_not_know_the_executors():
    assert not {t for t in graph()["whistle_stop.orchestrator.store"] if "executors" in t}


def test_the_import_graph_has_no_cycle():
    edges = graph()
    # a package's __init__ is imported with each of its modules: not an arrow of the code
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    cycles = strongly_connected(edges)
    assert [sorted(c) for c in cycles if len(c) > 1] == []


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: each returned set is one strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in edges:
        if node not in index:
            visit(node)
    return components


def test_the_cycle_finder_finds_one():
    assert {"a", "b"} in strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}})


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name_with_every_module(tmp_path):
    """`pip install` adds `whistle_stop` to site-packages and nothing else, and every
    module of the checkout (and the engine's C++) is in it."""
    source = tmp_path / "source"  # a copy: setuptools builds in the tree it is given
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "whistle_stop", *whistle_stop.PACKAGES):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(
            ROOT / name,
            source / name,
            *([shutil.ignore_patterns("__pycache__")] if copy is shutil.copytree else []),
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("whistle_stop-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"whistle_stop"}
    expected = {module.replace(".", "/") for module in modules()}
    shipped = {name.removesuffix(".py").removesuffix("/__init__") for name in names}
    assert expected - shipped == set()
    assert "whistle_stop/native/gpt2.cc" in names


def test_only_tests_import_tests():
    """Benchmarks and the package start real parts from whistle_stop.bench.harness, never
    from tests/: an installed farm has no tests/ to import."""
    found = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if parts[0] in ("tests", "build") or any(part.startswith(".") for part in parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests":
                found.append(f"{path.relative_to(ROOT)}: {node.module}")
            if isinstance(node, ast.Import):
                found += [
                    f"{path.relative_to(ROOT)}: {alias.name}"
                    for alias in node.names
                    if alias.name.split(".")[0] == "tests"
                ]
    assert found == []
