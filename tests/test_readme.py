"""The README's layout section names every top-level package and folder, and only those."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = {"build", "dist", "plots"}


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout") :]
    return section[section.index("```") + 3 : section.index("```", section.index("```") + 3)]


def test_the_layout_section_matches_the_tree():
    listed = {line.split()[0].rstrip("/") for line in _layout_block().splitlines() if line.strip()}
    top = {
        path.name
        for path in ROOT.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and path.name not in IGNORED
        and not path.name.endswith(".egg-info")
    }
    assert top <= listed, f"in the tree but not in the README: {sorted(top - listed)}"
    for name in listed:
        assert (ROOT / name).is_dir() or any(ROOT.glob(f"*/{name}")), f"README names {name}/"


def test_every_subpackage_is_named():
    block = _layout_block()
    for init in ROOT.glob("*/*/__init__.py"):
        package = init.parent
        if package.parent.name in ("tests", "benchmarks") or package.parent.name.startswith("."):
            continue
        assert re.search(rf"^\s+{package.name}/", block, re.M), f"README omits {package}"
