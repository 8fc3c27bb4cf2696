"""Reports, plots and comparisons on a database filled with known rows."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from whistle_stop.cli import app
from whistle_stop.contract.events import outcome
from whistle_stop.contract.payload import ResultPayload
from whistle_stop.db.session import make_session_factory
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep

runner = CliRunner()
ENVIRONMENT = {
    "fingerprint": "f1",
    "hostname": "box",
    "cpu_model": "cpu",
    "cpu_features": ["avx2"],
    "logical_cores": 2,
    "physical_cores": 2,
    "memory_bytes": 1,
    "os": "linux",
    "kernel": "6",
    "container": False,
    "python": "3.11",
    "versions": {},
    "git_revision": None,
}
SPEED = {"hf": 25.0, "onnx": 50.0, "onnx[quantize=int8]": 100.0}
AGREEMENT = {"hf": 1.0, "onnx": 1.0, "onnx[quantize=int8]": 0.95}


def payload(
    label: str, context: int, generation: int, slowdown: float = 1.0, failed: bool = False
) -> ResultPayload:
    """A result whose figures follow from SPEED: decode steps of 1/speed seconds, 5 repeats."""
    if failed:
        return ResultPayload.failed("w", "Traceback ...\nRuntimeError: boom")
    step = slowdown / SPEED[label]
    prefill = 0.001 * context * slowdown
    e2e = [prefill + step * (generation - 1) * (1 + 0.001 * i) for i in range(5)]
    metrics = {
        "repeats": 5,
        "prefill_ms": 1e3 * prefill,
        "prefill_ms_p50": 1e3 * prefill,
        "decode_ms": 1e3 * step,
        "decode_ms_p50": 1e3 * step,
        "decode_ms_p90": 1e3 * step,
        "decode_ms_p99": 1e3 * step,
        "decode_tokens_per_s": 1 / step,
        "e2e_s": sum(e2e) / 5,
        "e2e_s_p50": e2e[2],
        "e2e_s_p90": e2e[4],
        "e2e_s_stdev": 0.001,
        "cv": 0.01,
        "noisy": False,
        "timer_gap": 0.0,
        "materialize_s": 0.1,
        "load_s": 1.0,
        "rss_peak_bytes": 1,
        "model_rss_bytes": 1,
        "torch_threads": 2,
        "top1_agreement": AGREEMENT[label],
        "mean_kl": 1e-3,
        "roofline_fraction": 0.5 / SPEED["hf"] * SPEED[label] / 4,
        "load_extra": {},
    }
    samples = {
        "prefill_s": [prefill * (1 + 0.01 * i) for i in range(5)],
        "e2e_s": e2e,
        "decode_steps_s": [[step * (1 + 0.002 * i)] * (generation - 1) for i in range(5)],
    }
    metrics |= {"samples": samples, "tokens": [1] * generation, "pinning_violations": []}
    return ResultPayload.from_dict(
        {
            "status": "done",
            "worker": "w@box",
            "cpus": "0-1",
            "environment": ENVIRONMENT,
            "metrics": metrics,
        }
    )


SWEEP = """
backends: [hf, onnx, {name: onnx, quantize: int8}]
context_sizes: [32, 128]
generation_lengths: [16, 64]
threads: [2]
"""


def fill(
    db: Path, name: str, *, slowdown: dict[str, float] | None = None, fail: str | None = None
) -> None:
    farm_store = Store(make_session_factory(str(db)))
    plan = parse_sweep(SWEEP, origin="s.yaml", default_name=name)
    for job in farm_store.record_sweep(plan).to_run:
        label, context, generation = job.spec["label"], job.spec["context"], job.spec["generation"]
        factor = (slowdown or {}).get(label, 1.0)
        result = payload(label, context, generation, factor, failed=label == fail and context == 32)
        farm_store.apply(outcome(job.id, result))


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "farm.db"
    fill(path, "base", fail="onnx")
    return path


def farm(*args: str, stream: str = "stdout"):
    """The command's results (stdout), or with stream="stderr" its status lines."""
    result = runner.invoke(app, [*args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return getattr(result, stream)


def test_csv_json_and_markdown_parse_back(db):
    rows = list(csv.DictReader(io.StringIO(farm("report", "--db", str(db), "-f", "csv"))))
    assert len(rows) == 12
    as_json = json.loads(farm("report", "--db", str(db), "-f", "json"))
    assert {r["label"] for r in as_json} == set(SPEED)
    onnx = [r for r in as_json if r["label"] == "onnx" and r["status"] == "done"]
    assert all(r["speedup"] == pytest.approx(2.0) for r in onnx)
    assert sum(r["status"] == "failed" for r in as_json) == 2
    markdown = farm("report", "--db", str(db), "-f", "markdown")
    header = markdown.splitlines()[0]
    assert (
        header.startswith("| backend | ctx | gen |") and "roofline" in header and "top-1" in header
    )
    assert "failed: onnx ctx=32" in markdown and "RuntimeError: boom" in markdown


def test_filters_group_by_and_pivot(db):
    only = json.loads(
        farm("report", "--db", str(db), "-f", "json", "--backend", "hf", "--where", "context=128")
    )
    assert {(r["label"], r["context"]) for r in only} == {("hf", 128)}
    elsewhere = runner.invoke(app, ["report", "--db", str(db), "-f", "json", "--host", "elsewhere"])
    assert elsewhere.exit_code == 2 and "known: box" in elsewhere.stderr  # not a silent []
    grouped = farm("report", "--db", str(db), "-f", "markdown", "--group-by", "context")
    assert "## context=32" in grouped and "## context=128" in grouped
    pivot = farm(
        "report", "--db", str(db), "-f", "csv", "--pivot", "label:generation:decode_tokens_per_s"
    )
    table = list(csv.reader(io.StringIO(pivot)))
    assert table[0] == ["label \\ generation", "16", "64"]
    assert dict((r[0], float(r[1])) for r in table[1:])["onnx[quantize=int8]"] == pytest.approx(100)


def test_bad_filters_say_what_is_valid(db):
    result = runner.invoke(app, ["report", "--db", str(db), "--where", "nope=1"])
    assert result.exit_code == 2 and "no column 'nope'; use one of: sweep, key" in result.output
    result = runner.invoke(app, ["report", "--db", str(db), "--pivot", "label:nope"])
    assert result.exit_code == 2 and "ROWS:COLUMNS:VALUE" in result.output


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self.cells += tag == "td"


def test_html_is_self_contained_with_the_plots(db, tmp_path):
    out = tmp_path / "report.html"
    farm("report", "--db", str(db), "-f", "html", "--out", str(out))
    parser = Images()
    parser.feed(out.read_text())
    assert parser.cells >= 12 * 10
    assert len(parser.images) == 5 and all(
        src.startswith("data:image/png;base64,") for src in parser.images
    )


def test_plots_are_valid_pngs(db, tmp_path):
    output = farm("plot", "--db", str(db), "--out", str(tmp_path / "plots"), stream="stderr")
    files = sorted((tmp_path / "plots").glob("*.png"))
    assert len(files) == 5, output
    for file in files:
        data = file.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        width = int.from_bytes(data[16:20], "big")  # the IHDR chunk's width
        assert width <= 1000, (file.name, width)  # a page's width, not a banner's


def test_plots_without_their_data_are_skipped(tmp_path):
    db = tmp_path / "one.db"
    farm_store = Store(make_session_factory(str(db)))
    plan = parse_sweep(
        "backends: [hf]\ncontext_sizes: [32]\ngeneration_lengths: [16]",
        origin="s",
        default_name="one",
    )
    [job] = farm_store.record_sweep(plan).to_run
    farm_store.apply(outcome(job.id, payload("hf", 32, 16)))
    output = farm("plot", "--db", str(db), "--out", str(tmp_path / "plots"), stream="stderr")
    assert "skipped latency_vs_generation: needs at least two generation lengths" in output
    assert "skipped prefill_vs_context: needs at least two context sizes" in output
    assert "skipped speed_vs_fidelity" in output
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == {
        "decode_tokens_per_s.png",
        "roofline.png",
    }


def test_compare_flags_a_planted_regression_and_passes_an_identical_pair(db):
    fill(db, "same")
    fill(db, "slower", slowdown={"onnx[quantize=int8]": 1.2})
    identical = runner.invoke(
        app, ["compare", "base", "same", "--db", str(db), "--fail-above", "5%"]
    )
    assert identical.exit_code == 0, identical.output
    assert "0 regressions" in identical.stderr and " regression " not in identical.stdout
    assert (
        "not compared: onnx ctx=32 gen=16 threads=2 (base: failed, same: done)" in identical.output
    )
    slower = runner.invoke(
        app, ["compare", "base", "slower", "--db", str(db), "--fail-above", "5%"]
    )
    assert slower.exit_code == 1
    assert "regression" in slower.output and "above --fail-above 5.0%" in slower.output
    assert "onnx[quantize=int8]" in slower.output


def test_sweeps_and_show(db):
    listing = farm("sweeps", "--db", str(db))
    assert "base" in listing and "box" in listing
    key = json.loads(farm("report", "--db", str(db), "-f", "json"))[0]["key"]
    shown = json.loads(farm("show", key[:8], "--db", str(db)))
    assert shown["key"] == key and shown["spec"]["backend"] and "samples" in shown
    assert shown["environment"]["hostname"] == "box"
