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
    # a folder's line starts with its name; an indented line goes on with the one above
    lines = _layout_block().splitlines()
    listed = {line.split()[0].rstrip("/") for line in lines if line[:1].strip()}
    top = {
        path.name
        for path in ROOT.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and path.name not in IGNORED
        and not path.name.endswith(".egg-info")
    }
    assert top <= listed, f"in the tree but not in the README: {sorted(top - listed)}"
    assert all(line.startswith(" " * 15) for line in lines if line and not line[:1].strip())
    for name in listed:
        assert (ROOT / name).is_dir() or any(ROOT.glob(f"*/{name}")), f"README names {name}/"


def test_every_subpackage_is_named():
    block = _layout_block()
    for init in ROOT.glob("*/*/__init__.py"):
        package = init.parent
        if package.parent.name in ("tests", "benchmarks") or package.parent.name.startswith("."):
            continue
        assert re.search(rf"^\s+{package.name}/", block, re.M), f"README omits {package}"


def test_the_readme_reads_in_80_columns():
    """No line is wider than a terminal, the block `farm results` writes included."""
    wide = [line for line in (ROOT / "README.md").read_text().splitlines() if len(line) > 80]
    assert not wide, wide
