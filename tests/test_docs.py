"""The front door and the generated pages: the README stays short and its links resolve,
the sweep-file reference is the validation models', and the results pages and the
README's headline regenerate byte for byte from the committed exports."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from whistle_stop.orchestrator.reference import reference
from whistle_stop.reports.results import BEGIN, END, ExportError, load_export, write_pages

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"


def test_the_readme_is_read_in_five_minutes_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target


def test_the_sweep_file_reference_is_the_validation_models():
    assert (ROOT / "docs" / "sweep-file.md").read_text() == reference(), "run: make docs"


def test_results_pages_and_the_readme_regenerate_byte_identical(tmp_path):
    exports = sorted(RESULTS.glob("*.json"))
    assert exports, "docs/results holds at least one export"
    for stored in [*exports, *RESULTS.glob("*.png")]:  # a page shows a figure beside it
        shutil.copy(stored, tmp_path / stored.name)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    write_pages(tmp_path, readme)
    for export in exports:
        page = export.with_suffix(".md")
        assert (tmp_path / page.name).read_text() == page.read_text(), "run: make results"
    assert readme.read_text() == (ROOT / "README.md").read_text(), "run: make results"


def test_the_readme_headline_is_the_newest_export(tmp_path):
    rows = load_export(sorted(RESULTS.glob("*.json"))[0])
    older = [dict(r, measured_at="2000-01-01T00:00:00", cpu_model="An Old CPU") for r in rows]
    newer = [dict(r, measured_at="2100-01-01T00:00:00", cpu_model="A New CPU") for r in rows]
    (tmp_path / "old.json").write_text(json.dumps(older))
    (tmp_path / "new.json").write_text(json.dumps(newer))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{BEGIN}\nstale\n{END}\n\nmore\n")
    write_pages(tmp_path, readme)
    text = readme.read_text()
    assert "A New CPU" in text and "An Old CPU" not in text and "stale" not in text
    assert text.endswith("\n\nmore\n") and "docs/results/new.md" in text
    assert "An Old CPU" in (tmp_path / "old.md").read_text()


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not a JSON export"),
        ("{}", "a list of rows"),
        ('[{"sweep": "a"}]', "rows lack"),
    ],
)
def test_a_file_that_is_not_an_export_is_refused_by_name(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ExportError, match=message):
        load_export(path)
