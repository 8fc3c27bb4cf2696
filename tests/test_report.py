"""Reports, plots and comparisons on a database filled with known rows."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from whistle_stop.bench.harness import made_up_result
from whistle_stop.cli import app
from whistle_stop.contract.events import outcome
from whistle_stop.contract.payload import ResultPayload
from whistle_stop.db.session import make_session_factory
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep

runner = CliRunner()
SPEED = {"hf": 25.0, "onnx": 50.0, "onnx[quantize=int8]": 100.0}
AGREEMENT = {"hf": 1.0, "onnx": 1.0, "onnx[quantize=int8]": 0.95}


def payload(
    label: str, context: int, generation: int, slowdown: float = 1.0, failed: bool = False
) -> ResultPayload:
    """A result whose figures follow from SPEED: decode steps of 1/speed seconds, 5 repeats."""
    return made_up_result(
        SPEED[label],
        context,
        generation,
        slowdown=slowdown,
        agreement=AGREEMENT[label],
        roofline=0.5 / SPEED["hf"] * SPEED[label] / 4,
        failed=failed,
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
    assert "0 slower" in identical.stderr and " slower " not in identical.stdout
    assert (
        "not compared: onnx ctx=32 gen=16 threads=2 (base: failed, same: done)" in identical.output
    )
    slower = runner.invoke(
        app, ["compare", "base", "slower", "--db", str(db), "--fail-above", "5%"]
    )
    assert slower.exit_code == 1
    assert "12 decided speed regression(s) above --fail-above 5.0% (worst 20.0%)" in slower.output
    assert "onnx[quant" in slower.output and "slower" in slower.stdout
    # a slowdown smaller than the limit is decided but does not fail the gate
    assert "error" not in _compare_gate(db, "base", "slower", "25%")


def _compare_gate(db, a: str, b: str, limit: str) -> str:
    result = runner.invoke(app, ["compare", a, b, "--db", str(db), "--fail-above", limit])
    assert result.exit_code == 0, result.output
    return result.stderr


def test_sweeps_and_show(db):
    listing = farm("sweeps", "--db", str(db))
    assert "base" in listing and "box" in listing
    key = json.loads(farm("report", "--db", str(db), "-f", "json"))[0]["key"]
    shown = json.loads(farm("show", key[:8], "--db", str(db)))
    assert shown["key"] == key and shown["spec"]["backend"] and "samples" in shown
    assert shown["environment"]["hostname"] == "box"


def test_compare_says_unknown_where_rounds_disagree_and_strict_gates_on_it(tmp_path):
    """Three rounds a side: a steady 20% slowdown is decided, rounds that scatter by ±15%
    around no change are unknown, and --strict fails on that where --fail-above does not."""
    db = tmp_path / "r.db"
    text = SWEEP.replace("context_sizes: [32, 128]", "context_sizes: [32]") + "rounds: 3\n"
    scatter = {1: 1.0, 2: 1.15, 3: 0.87}
    for name, factor in (("before", lambda r: 1.0), ("steady", lambda r: 1.2)) + (
        ("scattered", scatter.get),
    ):
        farm_store = Store(make_session_factory(str(db)))
        for job in farm_store.record_sweep(parse_sweep(text, origin="s", default_name=name)).to_run:
            spec = job.spec
            slowdown = factor(spec["round"]) if spec["label"] == "onnx" else 1.0
            result = payload(spec["label"], spec["context"], spec["generation"], slowdown)
            farm_store.apply(outcome(job.id, result))

    def changes(b: str) -> dict:
        found = runner.invoke(app, ["compare", "before", b, "--db", str(db), "-f", "json"])
        rows = json.loads(found.stdout)["changes"]
        return {(c["backend"], c["cell"], c["metric"]): c for c in rows}

    steady = changes("steady")[("onnx", "ctx=32 gen=16 threads=2", "decode_tokens_per_s")]
    assert steady["verdict"] == "slower" and steady["basis"] == "3+3 rounds"
    assert steady["high"] < 0.95
    scattered = changes("scattered")
    assert scattered[("onnx", "ctx=32 gen=16 threads=2", "decode_tokens_per_s")]["verdict"] == (
        "unknown"
    )
    assert scattered[("onnx", "ctx=32 gen=16 threads=2", "speedup")]["verdict"] == "unknown"
    assert scattered[("hf", "ctx=32 gen=16 threads=2", "decode_tokens_per_s")]["verdict"] == "same"
    gate = ["compare", "before", "scattered", "--db", str(db), "--fail-above", "5%"]
    assert runner.invoke(app, gate).exit_code == 0
    strict = runner.invoke(app, [*gate, "--strict"])
    assert strict.exit_code == 1 and "unknown verdict(s) (--strict)" in strict.stderr


def test_the_noise_view_reads_the_floor_and_the_fastest_paths_intervals(tmp_path):
    db = tmp_path / "n.db"
    text = SWEEP.replace("context_sizes: [32, 128]", "context_sizes: [32]")
    for name in ("nf1", "nf2"):
        farm_store = Store(make_session_factory(str(db)))
        plan = parse_sweep(text + "rounds: 3\ncontrol: true\n", origin="s", default_name=name)
        for job in farm_store.record_sweep(plan).to_run:
            spec = job.spec
            label = "hf" if spec["label"] == "hf-control" else spec["label"]
            slowdown = {1: 1.0, 2: 1.02, 3: 0.99}[spec["round"]]
            result = payload(label, spec["context"], spec["generation"], slowdown)
            farm_store.apply(outcome(job.id, result))
    shown = farm("report", "--view", "noise", "--all", "--db", str(db))
    assert "hf-control / hf (the noise floor)" in shown
    assert "speedup of onnx[quantize=int8] over hf (the fastest path)" in shown
    assert "| 32/16/2 | 4.000 | 4.000 | 0.0% |" in shown
    assert "onnx[quantize=int8]: 95% interval" in shown and "(3 r) | yes |" in shown
    # its prose wrapped to the terminal (80 columns here), its table rows left whole
    prose = [line for line in shown.splitlines() if not line.startswith("|")]
    assert prose and max(len(line) for line in prose) <= 80, shown


def test_a_views_prose_wraps_and_its_tables_do_not():
    from whistle_stop.reports.render import wrap_prose

    row = "| " + " | ".join(["a-long-cell"] * 10) + " |"
    bullet = "- " + " ".join(["word"] * 30)
    text = wrap_prose("\n".join(["short", row, bullet, "  " + "x" * 90]), 40)
    lines = text.splitlines()
    assert lines[0] == "short" and lines[1] == row  # a table row stays one line
    assert all(len(line) <= 40 for line in lines[2:-1])
    assert lines[2].startswith("- word") and lines[3].startswith("  word")  # hangs
    assert lines[-1] == "  " + "x" * 90  # one word longer than the width: left whole


def test_the_calibration_view_counts_false_alarms_and_detections():
    from whistle_stop.reports.analyses import calibration

    def row(label, ratios):
        return {"label": label, "status": "done", "round_speedups": ratios, "rounds": 4}

    rows = [
        row("twin", [1.0, 1.01, 0.99, 1.0]),
        row("twin", [1.05, 1.06, 1.04, 1.05]),  # a false alarm: "faster" on an A/A pair
        row("slower-5", [0.95, 0.96, 0.94, 0.95]),
        row("slower-10", [0.9, 1.1, 0.8, 1.0]),  # too noisy to call
    ]
    text = calibration(rows, ["c"], "control")
    assert "| twin | 2 | faster 1, same 1 | false alarms 1/2 | 0 | 1.025x |" in text
    assert "| slower-5 | 1 | slower 1 | detected 1/1 |" in text
    assert "| slower-10 | 1 | unknown 1 | detected 0/1 |" in text
    assert "cells by rounds spent: 4 at 4" in text
    assert max(len(line) for line in text.splitlines()) <= 80  # an 80-column terminal


def test_the_limits_view_judges_each_goal_where_it_applies():
    from whistle_stop.reports.limits import limits

    def row(sweep, label, backend, options, tok_s, *, model="random:gpt2-xl", **more):
        return {
            "sweep": sweep,
            "label": label,
            "backend": backend,
            "options": json.dumps(options),
            "model": model,
            "context": 128,
            "generation": 64,
            "threads": 2,
            "status": "done",
            "decode_tokens_per_s": tok_s,
            "round_figures": {"decode_tokens_per_s": {1: tok_s, 2: tok_s * 1.01}},
            "roofline_fraction": 0.9,
            "llc_multiple": 24.0,
            "mean_kl": 1e-3,
            "decode_ms_p50": 1e3 / tok_s,
            "decode_ms": 1e3 / tok_s,
            "cpu_model": "AMD EPYC",
            "isa": "avx2 avx512f avx512_vnni avx512_bf16 sse4_2",
            "llc_bytes": 32 * 2**20,
            "bandwidth_bytes_per_s": 55.8e9,
            **more,
        }

    rows = [
        row("sizes", "llama-q8_0", "llama-cpp", {"quant": "q8_0"}, 10.0),
        row("sizes", "llama-q4_K_M", "llama-cpp", {"quant": "q4_K_M"}, 10.0, mean_kl=2e-3),
        row("sizes", "n8", "native", {"bits": 8}, 14.0),
        row("sizes", "n4", "native", {"bits": 4}, 14.0, mean_kl=3e-3),  # fast, less faithful
        row("sizes", "n4-h8", "native", {"bits": 4}, 12.0, mean_kl=1e-3),
        # small: its weights under 10x the LLC are not judged against DRAM
        row("sizes", "n8", "native", {"bits": 8}, 99.0, model="random:gpt2", llc_multiple=4.0),
        row("t-quiet", "n8", "native", {"bits": 8}, 100.0),
        row("t-busy", "n8", "native", {"bits": 8}, 40.0, decode_ms=40.0),  # p50 25 ms
        # llama.cpp beside the same neighbour: shown to compare with, not the goal's
        row("t-quiet", "llama-q8_0", "llama-cpp", {"quant": "q8_0"}, 50.0),
        row("t-busy", "llama-q8_0", "llama-cpp", {"quant": "q8_0"}, 10.0, decode_ms=200.0),
        # at large two rounds disagree (1.1x, then 1.6x): an interval that holds 1.3x
        row("sizes", "llama-q8_0", "llama-cpp", {"quant": "q8_0"}, 10.0, model="random:gpt2-large"),
        row(
            "sizes",
            "n8",
            "native",
            {"bits": 8},
            13.5,
            model="random:gpt2-large",
            # under 85% on its weights alone, over it on the bytes a step reads, but its
            # three rounds' shares (each beside its own job's bandwidth) straddle 85%
            # ... and a third round its rival did not finish: the ratio pairs rounds 1, 2
            round_figures={
                "roofline_kv_fraction": {1: 0.80, 2: 0.87, 3: 0.95},
                "decode_tokens_per_s": {1: 11.0, 2: 16.0, 3: 20.0},
            },
            roofline_fraction=0.8,
            roofline_kv_fraction=0.87,
        ),
    ]
    text = limits(rows, ["sizes", "t-quiet", "t-busy"], "llama-q8_0")
    assert "| gpt2-large ctx 128 | n8 / q8_0 | 1.34x | 0.13x-13.40x | unknown |" in text
    assert "verdicts: met 1, unknown 1 (of 2); unknown: the 95% interval holds" in text
    assert "| gpt2-xl ctx 128 | n8 (24.0x) | 90% | - |  | met |" in text  # one share
    assert "| gpt2-large ctx 128 | n8 (24.0x) | 80% | 87% | 70%-108% | unknown |" in text
    assert "| gpt2 ctx 128 | n8 (4.0x) | 90% | - |  | not judged: cache |" in text
    assert "| gpt2-xl ctx 128 | n8 / q8_0 | 1.40x | 1.40x-1.40x | met |" in text
    assert "| gpt2-xl ctx 128 | n4-h8 | 1.20x | 1.20x-1.20x | NOT met |" in text
    assert "- gpt2-xl ctx 128: n4-h8 1.0e-03 vs q4_K_M 2.0e-03" in text
    assert "| t: n8 ctx 128 | busy/quiet median (10.00 ms) | 2.50x | NOT met |" in text
    assert "| t: llama-q8_0 ctx 128 | busy mean / median | 2.00x | (NOT met) |" in text
    assert "verdicts: NOT met 2 (of 2); (bracketed): llama.cpp's, or the model" in text
    assert "| t: n8 ctx 128 | busy mean / median | 1.60x | NOT met |" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    # KL where it is real: on a model trained here the fast n4 matches q4_K_M and n4-h8
    # does not, so goal 3 takes n4 (its speed in the xl cell), not the random weights' pick
    trained = dict(model="trained:gpt2-shakespeare", llc_multiple=0.5)
    rows += [
        row(
            "four-bit",
            "llama-q4_K_M",
            "llama-cpp",
            {"quant": "q4_K_M"},
            50.0,
            **trained,
            mean_kl=2e-3,
        ),
        row("four-bit", "n4", "native", {"bits": 4}, 90.0, **trained, mean_kl=1.9e-3),
        row("four-bit", "n4-h8", "native", {"bits": 4}, 80.0, **trained, mean_kl=2.1e-3),
    ]
    text = limits(rows, ["sizes", "four-bit"], "llama-q8_0")
    assert "| gpt2-xl ctx 128 | n4 | 1.40x |" in text
    assert "- n4: KL 1.9e-03 vs 2.0e-03 on trained:gpt2-shakespeare" in text
    # the trained model's own speed is shown, bracketed: 9M parameters are not the limit
    assert "| gpt2-shakespeare ctx 128 | n4 | 1.80x | 1.80x-1.80x | (met) |" in text
    assert "| gpt2-shakespeare ctx 128 | n4 (0.5x) | 90% | - |  | (not judged: cache) |" in text
    assert "verdicts: NOT met 1 (of 1); (bracketed)" in text  # goal 3: the xl cell alone
    trained_only = [r for r in rows if r["sweep"] == "four-bit"]
    assert "verdicts: none counted; (bracketed)" in limits(trained_only, ["four-bit"], "hf")
    assert text.count("1.9e-03") == 1  # the trained cell's KL, said once
    assert max(len(line) for line in text.splitlines()) <= 80


def test_weights_are_judged_against_the_cache_a_vm_reads_from():
    """A Xeon VM reports 480 MiB of L3 but reads at DRAM speed from 128 MiB: gpt2-xl's
    1.6 GB of int8 weights are 12x that (judged), 3.3x the LLC (not judged)."""
    from whistle_stop.reports.limits import _machine
    from whistle_stop.reports.query import cache_bytes

    row = {"llc_bytes": 480 * 2**20, "dram_from_bytes": 128 * 2**20}
    assert cache_bytes(row) == 128 * 2**20
    assert cache_bytes({"llc_bytes": 32 * 2**20, "dram_from_bytes": 63 * 2**20}) == 32 * 2**20
    assert cache_bytes({"llc_bytes": None, "dram_from_bytes": None}) is None
    header = _machine([{**row, "cpu_model": "Intel Xeon", "isa": "avx2 amx_int8"}])
    assert "LLC 480 MiB, DRAM speed from 128 MiB" in header


def test_a_models_sweep_pairs_each_path_with_its_own_models_baseline(tmp_path):
    """`models:` as an axis: a path's speedup is against the baseline of the same model
    and round, the report names the model, the verdict has a line per model, and the
    size figure is drawn."""
    from dataclasses import replace

    db = tmp_path / "sizes.db"
    farm_store = Store(make_session_factory(str(db)))
    plan = parse_sweep(
        "models: [random:gpt2, random:gpt2-medium]\nbackends: [hf, onnx]\n"
        "context_sizes: [32]\ngeneration_lengths: [16]\nthreads: [2]\nrounds: 2",
        origin="s",
        default_name="sizes",
    )
    weights = {"random:gpt2": 5e8, "random:gpt2-medium": 1.4e9}
    for job in farm_store.record_sweep(plan).to_run:
        model, label = job.spec["model"], job.spec["label"]
        slower = weights[model] / weights["random:gpt2"]  # each model's own speed
        result = payload(label, 32, 16, slowdown=slower * (1 + 0.01 * job.spec["round"]))
        metrics = replace(result.metrics, weight_bytes_per_token=weights[model], llc_bytes=2**25)
        farm_store.apply(outcome(job.id, replace(result, metrics=metrics)))
    table = farm("report", "--db", str(db), "-f", "csv")
    rows = list(csv.DictReader(io.StringIO(table)))
    assert {r["model"] for r in rows} == set(weights)
    onnx = {r["model"]: float(r["speedup"]) for r in rows if r["label"] == "onnx"}
    # the same ratio at both sizes: each against its own model's hf, not gpt2's
    assert onnx["random:gpt2"] == pytest.approx(SPEED["onnx"] / SPEED["hf"], rel=0.01)
    assert onnx["random:gpt2-medium"] == pytest.approx(onnx["random:gpt2"], rel=0.01)
    shown = farm("report", "--db", str(db))
    assert "random:gpt2: ctx=32" in shown and "random:gpt2-medium: ctx=32" in shown
    output = farm("plot", "--db", str(db), "--out", str(tmp_path / "plots"), stream="stderr")
    size = tmp_path / "plots" / "speed_vs_model_size.png"
    assert size.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", output
    assert int.from_bytes(size.read_bytes()[16:20], "big") <= 1000
