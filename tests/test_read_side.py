"""Reading never writes and never crashes: every bad input is one line with the
documented exit code, files stay byte-identical, tables fit, and compare is a gate."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_report import fill
from whistle_stop.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def farm_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("read") / "farm.db"
    fill(path, "base", fail="onnx")
    fill(path, "same")
    fill(path, "slower", slowdown={"onnx[quantize=int8]": 1.2})
    fill(path, "broken", fail="hf")
    import gc

    gc.collect()  # the writers' engines close: SQLite folds the write-ahead log into the file
    assert not path.with_name("farm.db-wal").exists()
    return path


def _digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def _other_files(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("create table notes (text)")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(bytes(range(256)) * 8)
    (tmp_path / "g.yaml").write_text("name: g\nmodel: random:gpt2\nbackends: [hf]\n")
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"not a directory")
    return {"empty": empty, "other": other, "corrupt": corrupt, "existing": existing}


BAD = [
    (["report", "--db", "{empty}"], 2, "is not a whistle-stop database"),
    (["report", "--db", "{other}"], 2, "is not a whistle-stop database (no table"),
    (["report", "--db", "{corrupt}"], 2, "file is not a database"),
    (["report", "--db", "{dir}"], 2, "is a directory, not a database file"),
    (["report", "--db", "{dir}/typo.db"], 2, "no database at"),
    (["report", "--db", "sqlite:///{dir}/typo2.db"], 2, "no database at"),
    (["report", "--db", "mongodb://x/y"], 2, "unknown database URL scheme 'mongodb'"),
    (["report", "--db", "postgresql+pg8000://u@h/d"], 2, "pip install -e '.[postgres]'"),
    (["report", "--db", "{db}", "--out", "{dir}/nope/r.md", "-f", "markdown"], 2, "no directory"),
    (["report", "--db", "{db}", "--out", "{dir}", "-f", "csv"], 2, "is a directory; name a file"),
    (["report", "--db", "{db}", "--out", "{dir}/r.txt"], 2, "add -f markdown"),
    (["report", "--db", "{db}", "--where", "context==128"], 2, "context is a number, not '=128'"),
    (["report", "--db", "{db}", "--where", "context=abc"], 2, "context is a number, not 'abc'"),
    (["report", "--db", "{db}", "--where", "nope=1"], 2, "no column 'nope'"),
    (["report", "--db", "{db}", "--where", "label>a"], 2, "label is text; use = or !="),
    (["report", "--db", "{db}", "--backend", "gpt5"], 2, "--backend 'gpt5' is not in these sweeps"),
    (["report", "--db", "{db}", "--host", "nowhere"], 2, "--host 'nowhere' is not in these sweeps"),
    (["report", "--db", "{db}", "--baseline", "nope"], 2, "--baseline 'nope' is not in these"),
    (["report", "--db", "{db}", "--pivot", "label:generation:status"], 2, "status is not a number"),
    (["report", "--db", "{db}", "--pivot", "a:b"], 2, "write ROWS:COLUMNS:VALUE"),
    (["report", "--db", "{db}", "--columns", "nope"], 2, "--columns: no column 'nope'"),
    (["report", "--db", "{db}", "--sort", "nope"], 2, "--sort 'nope': no such column"),
    (["report", "--db", "{db}", "--sweep", "nope"], 2, "no sweep named 'nope'; known sweeps"),
    (["report", "--db", "{db}", "-f", "yaml"], 2, "'yaml' is not one of"),
    (["plot", "--db", "{db}", "--out", "{existing}"], 2, "is a file; farm plot writes a directory"),
    (["status", "--db", "{dir}/missing.db"], 2, "no database at"),
    (["sweeps", "--db", "{other}"], 2, "is not a whistle-stop database"),
    (["show", "nope", "--db", "{db}"], 2, "no job with id or key 'nope'"),
    (["show", "nope/abc", "--db", "{db}"], 2, "no sweep named 'nope'"),
    (["compare", "base", "nope", "--db", "{db}"], 2, "no sweep named 'nope'"),
    (["compare", "base", "same", "--db", "{db}", "-f", "html"], 2, "'html' is not one of"),
    (
        ["compare", "base", "same", "--db", "{db}", "--threshold", "-5%"],
        2,
        "a fraction of 0 or more",
    ),
    (["compare", "base", "same", "--db", "{db}", "--fail-above", "x"], 2, "is not a fraction"),
    (["compare", "base", "same", "--db", "{db}", "--kl-factor", "0.5"], 2, "--kl-factor 1 or more"),
    (["compare", "base", "same", "--db", "{db}", "--out", "{dir}/c.md"], 2, "add -f markdown"),
    (
        ["compare", "base", "same", "--db", "{db}", "-f", "json", "--out", "{db}"],
        2,
        "is a database",
    ),
    # nothing a user types destroys data or shows a traceback (issue 28's cases, as classes)
    (["report", "--db", "{db}", "-f", "html", "--out", "{db}"], 2, "is a database; nothing was"),
    (["report", "--db", "{db}", "-f", "csv", "--out", "{other}"], 2, "is a database; nothing was"),
    (["report", "--db", "{db}", "-f", "json", "--out", "{db}-wal"], 2, "is a database; nothing"),
    (["submit", "--grid", "{dir}/g.yaml", "--db", "{other}"], 2, "another application's database"),
    (["plot", "--db", "{db}", "--out", "/sys/plots"], 2, "cannot write there"),
    (["show", "99999999999999999999999999", "--db", "{db}"], 2, "no job with id or key '9999"),
    (["show", "%", "--db", "{db}"], 2, "no job with id or key '%'"),
    (["show", "_", "--db", "{db}"], 2, "no job with id or key '_'"),
    (["status", "--broker", "localhost:6379"], 2, "is not a Redis URL"),
    (["status", "--broker", "http://x"], 2, "is not a Redis URL"),
    (["status", "--broker", "redis://:6379"], 2, "names no host"),
    (["submit", "--grid", "{dir}/g.yaml", "--broker", "localhost:6379"], 2, "not a Redis URL"),
    (["collect", "--sweep", "s", "--broker", "redis://h:99999"], 2, "Port out of range"),
    (["worker", "--cpus", "0", "--broker", "localhost:6379"], 2, "is not a Redis URL"),
]


@pytest.mark.parametrize(
    "args, code, message", BAD, ids=[" ".join(a[:3]) + f" {m[:20]}" for a, _, m in BAD]
)
def test_a_bad_read_is_one_line_and_changes_nothing(args, code, message, farm_db, tmp_path):
    files = _other_files(tmp_path)
    names = {"db": str(farm_db), "dir": str(tmp_path), **{k: str(v) for k, v in files.items()}}
    before = _digests(tmp_path), _digests(farm_db.parent)
    result = runner.invoke(app, [arg.format(**names) for arg in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert (_digests(tmp_path), _digests(farm_db.parent)) == before


NUMBER_CUT = re.compile(r"[\d.]…|…[\d.]")


@pytest.mark.parametrize("width", [80, 120])
def test_the_table_fits_and_never_cuts_a_number(width, farm_db, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    result = runner.invoke(
        app, ["report", "--db", str(farm_db), "--sweep", "base"], terminal_width=width
    )
    assert result.exit_code == 0, result.output
    table = [line for line in result.stdout.splitlines() if line.strip()]
    assert all(len(line) <= width for line in table), max(map(len, table))
    assert not any(NUMBER_CUT.search(line) for line in table), result.stdout
    header = table[1]
    for heading in (
        "backend",
        "ctx",
        "gen",
        "tok/s",
        "speedup",
        "prefill ms",
        "top-1",
        "KL",
        "status",
    ):
        assert heading in header, header
    if width >= 120:
        assert "key" in header.split()  # so `farm show` is reachable from the table


def test_where_takes_operators_and_headings(farm_db):
    def labels(*where: str) -> list[str]:
        args = ["report", "--db", str(farm_db), "-f", "json"]
        for clause in where:
            args += ["--where", clause]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        return [row["label"] for row in json.loads(result.stdout)]

    assert set(labels("tok/s>=60")) == {"onnx[quantize=int8]"}
    assert set(labels("ctx=128", "label!=hf")) == {"onnx", "onnx[quantize=int8]"}
    assert len(labels("gen<64")) == 6


def test_an_empty_result_says_so_and_an_empty_csv_keeps_its_header(farm_db):
    result = runner.invoke(app, ["report", "--db", str(farm_db), "-f", "csv", "--where", "ctx>999"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0].startswith("sweep,key,label,backend,context")
    assert "no jobs match" in result.stderr


def test_the_pivot_says_what_a_cell_is(farm_db):
    result = runner.invoke(
        app, ["report", "--db", str(farm_db), "--pivot", "label:gen:tok/s", "-f", "markdown"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "mean decode_tokens_per_s over the matching jobs (averaged over context)" in result.stderr
    )


def test_out_writes_every_text_format(farm_db, tmp_path):
    for fmt in ("markdown", "csv", "json", "html", "JSON"):
        out = tmp_path / f"r.{fmt}"
        result = runner.invoke(app, ["report", "--db", str(farm_db), "-f", fmt, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 100 and result.stdout == ""
    page = (tmp_path / "r.html").read_text()
    assert "Where these figures come from" in page and "box" in page and "Columns" in page


def test_show_reaches_a_key_held_by_two_sweeps(farm_db):
    key = json.loads(
        runner.invoke(app, ["report", "--db", str(farm_db), "-f", "json", "--sweep", "same"]).stdout
    )[0]["key"]
    ambiguous = runner.invoke(app, ["show", key, "--db", str(farm_db)])
    assert ambiguous.exit_code == 2 and "name one as SWEEP/KEY, e.g. farm show" in ambiguous.stderr
    for args in (["show", f"same/{key}"], ["show", key[:8], "--sweep", "same"]):
        shown = runner.invoke(app, [*args, "--db", str(farm_db)])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["sweep"] == "same"


def _compare(farm_db, *args: str):
    return runner.invoke(app, ["compare", *args, "--db", str(farm_db)])


def test_compare_is_stable_summarised_and_machine_readable(farm_db):
    first, again = _compare(farm_db, "base", "slower"), _compare(farm_db, "base", "slower")
    assert first.stdout == again.stdout
    # the slowed backend: decode tok/s, e2e and prefill in 4 cells, decided from the
    # repeats of one round (no speedup compared: one round has no interval for it)
    assert first.stderr.splitlines()[-1] == (
        "10 cells: 0 faster, 4 slower, 6 same, 0 unknown (tok/s, same within ±5%); "
        "fidelity: 0 worse, 0 better, 0 unknown; 0 newly failed, 0 missing"
    )
    as_json = json.loads(_compare(farm_db, "base", "slower", "-f", "json").stdout)
    assert as_json["summary"] == first.stderr.splitlines()[-1]
    slowed = [c for c in as_json["changes"] if c["verdict"] == "slower"]
    assert len(slowed) == 12 and all(c["basis"] == "5+5 repeats" for c in slowed)
    assert all(c["low"] <= c["change"] <= c["high"] for c in slowed)
    changed = _compare(farm_db, "base", "slower", "--only-changes", "-f", "csv").stdout
    assert len(changed.splitlines()) == 1 + 12 and ",same" not in changed
    assert ",speedup," not in changed


def test_compare_fails_the_gate_on_a_newly_failed_job(farm_db):
    gate = _compare(farm_db, "same", "broken", "--fail-above", "50%")
    assert gate.exit_code == 1, gate.output
    assert "2 job(s) newly failed" in gate.stderr
    assert "newly failed in broken: hf ctx=32 gen=16" in gate.stderr
    fine = _compare(farm_db, "base", "same", "--fail-above", "5%")
    assert fine.exit_code == 0, fine.output


def _labels(farm_db: Path, *args: str) -> list[str]:
    result = runner.invoke(
        app, ["report", "--db", str(farm_db), "--sweep", "base", "-f", "json", *args]
    )
    assert result.exit_code == 0, result.output
    return sorted({row["label"] for row in json.loads(result.stdout) if row["status"] == "done"})


@pytest.mark.parametrize("clause", ["roofline>20", "roofline>20%", "speedup>1.5x", "speedup>1.5"])
def test_filters_read_figures_in_the_units_the_table_shows(farm_db, clause):
    """The table shows roofline 12%/25%/50% and speedups 1x/2x/4x: a filter says 20 or
    20% for 20%, 1.5x or 1.5 for 1.5x, and matches what the reader sees."""
    assert _labels(farm_db, "--where", clause) == ["onnx", "onnx[quantize=int8]"]


def test_a_raw_name_filters_the_figure_shown_under_its_heading():
    from whistle_stop.reports.columns import resolve

    keys = ["decode_ms", "decode_ms_p50", "prefill_ms", "prefill_ms_p50"]
    assert resolve("decode_ms", keys) == resolve("decode ms", keys) == "decode_ms_p50"
    assert resolve("prefill_ms", keys) == "prefill_ms_p50"


def test_pivot_and_group_by_put_numbers_in_numeric_order(farm_db):
    pivoted = runner.invoke(
        app,
        [
            "report",
            "--db",
            str(farm_db),
            "--sweep",
            "base",
            "--pivot",
            "label:ctx:tok/s",
            "-f",
            "csv",
        ],
    )
    assert pivoted.exit_code == 0, pivoted.output
    assert pivoted.stdout.splitlines()[0].endswith(",32,128")  # not "128,32" (text order)
    grouped = runner.invoke(
        app,
        ["report", "--db", str(farm_db), "--sweep", "base", "--group-by", "ctx", "-f", "markdown"],
    )
    assert grouped.exit_code == 0, grouped.output
    headings = [line for line in grouped.stdout.splitlines() if line.startswith("## ")]
    assert headings == ["## context=32", "## context=128"]


def test_columns_asked_for_by_name_fit_and_the_rest_are_named(farm_db, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    args = ["report", "--db", str(farm_db), "--sweep", "base", "--columns", "all"]
    result = runner.invoke(app, args, terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), max(map(len, lines))
    assert not any(NUMBER_CUT.search(line) for line in lines), result.stdout
    assert (
        "not shown at 80 columns:" in result.stdout and "key" in result.stdout.split("not shown")[1]
    )
    raw = runner.invoke(app, [*args[:-1], "backend,e2e_s_stdev"], terminal_width=80)
    figures = [line.split()[-1] for line in raw.stdout.splitlines()[3:15] if line.strip()]
    assert figures and all(len(f) <= 10 for f in figures), figures  # 4 digits, not 17


def test_threads_beyond_an_embedded_workers_cpus_are_refused(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("model: random:gpt2\nbackends: [hf]\nthreads: [999]\n")
    result = runner.invoke(app, ["submit", "--grid", str(grid), "--db", str(tmp_path / "f.db")])
    assert result.exit_code == 2 and "threads: 999 is more than the" in result.stderr
    assert not (tmp_path / "f.db").exists()


def test_a_kl_of_zero_on_both_sides_is_no_change():
    from whistle_stop.reports.compare import Change

    assert Change("a", "c", "mean_kl", 0.0, 0.0, None, None, "-", "same").ratio == 1.0


def test_workers_and_cpus_together_are_refused(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("model: random:gpt2\nbackends: [hf]\nthreads: [1]\n")
    args = [
        "submit",
        "--grid",
        str(grid),
        "--workers",
        "2",
        "--cpus",
        "0",
        "--db",
        str(tmp_path / "f.db"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--workers and --cpus" in result.stderr


def test_compare_takes_the_median_prefill_the_report_shows():
    from whistle_stop.reports.compare import METRICS

    assert "prefill_ms_p50" in METRICS and "prefill_ms" not in METRICS
