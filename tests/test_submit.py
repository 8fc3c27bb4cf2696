"""End to end on the embedded default: `farm submit` -> pinned worker processes -> SQLite -> `farm report`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from whistle_stop.cli import app
from whistle_stop.db.models import Environment, Job, Result, Sweep

ROOT = Path(__file__).resolve().parent.parent  # the checkout: examples/ and cwd

runner = CliRunner()
FAULT = "fault"  # tests/plugin, installed as an entry point


def write_sweep(path, text: str):
    path.write_text(text)
    return path


def farm(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def sweep_text(model, *, extra_backends: str = "") -> str:
    return f"""
name: tiny
model: {model}
backends:
  - hf
  - name: hf
    dtype: bfloat16
{extra_backends}
context_sizes: [8, 16]
generation_lengths: [4]
threads: [1]
warmups: 1
repeats: 2
"""


def rows(db_path):
    with Session(create_engine(f"sqlite:///{db_path}")) as session:
        found = session.execute(select(Job, Result).outerjoin(Result)).all()
        for _, figures in found:
            if figures is not None:
                _ = figures.environment  # load it while the session is open
        return found


@pytest.mark.slow
def test_tiny_sweep_end_to_end_with_failures(tmp_path, tiny_model, db_path, cache_dir):
    failing = f"  - name: {FAULT}\n    mode: raise\n  - name: {FAULT}\n    mode: crash\n"
    grid = write_sweep(tmp_path / "tiny.yaml", sweep_text(tiny_model, extra_backends=failing))
    result = farm(
        "submit", "--grid", str(grid), "--db", str(db_path), "--cache-dir", str(cache_dir)
    )
    assert result.exit_code == 3, result.output  # some jobs failed: the documented code
    assert "4 done, 4 failed" in result.output
    assert "4 job(s) failed; see why with: farm report --sweep tiny" in result.output
    # no terminal here: one plain line per finished job, not a cut-off progress bar
    assert "[1/8] hf ctx=8 gen=4 threads=1: " in result.stderr and "━" not in result.output
    assert (
        "[8/8] " in result.stderr and "failed: RuntimeError: fault backend asked" in result.stderr
    )

    stored = rows(db_path)
    assert len(stored) == 8
    for job, figures in stored:
        assert job.attempts == 1
        if job.backend == "hf":
            assert job.status == "done"
            assert figures.prefill_ms > 0 and figures.decode_tokens_per_s > 0
            assert figures.repeats == 2 and len(figures.samples["e2e_s"]) == 2
            assert len(figures.tokens) == 4
            assert figures.torch_threads == 1 and figures.cpus
            assert figures.environment.hostname and figures.environment.versions["torch"]
        else:
            assert job.status == "failed" and figures is None
            expected = (
                "fault backend asked to raise" if "raise" in job.label else "died during the job"
            )
            assert expected in job.error
    assert any("Traceback" in job.error for job, _ in stored if job.status == "failed")

    report = farm("report", "--db", str(db_path), "--format", "markdown")
    assert report.exit_code == 0
    assert report.output.count("| done |") == 4 and report.output.count("| failed |") == 4
    assert "failed: " in report.output


@pytest.mark.slow
def test_a_job_that_hangs_is_killed_at_the_hard_limit_and_the_sweep_goes_on(
    tmp_path, tiny_model, db_path, cache_dir, monkeypatch
):
    """The embedded pool applies the farm's hard time limit too: a job deaf to everything
    (a stuck C call, a frozen process) is failed with the reason, never waited on forever."""
    monkeypatch.setenv("FARM_JOB_TIME_LIMIT", "15")  # room for the tiny hf jobs, loaded or not
    monkeypatch.setenv("FARM_JOB_GRACE", "5")
    hang = f"  - name: {FAULT}\n    mode: hang\n    sleep_s: 600\n"
    text = sweep_text(tiny_model, extra_backends=hang).replace("[8, 16]", "[8]")
    grid = write_sweep(tmp_path / "tiny.yaml", text.replace("repeats: 2", "repeats: 1"))
    args = ["submit", "--grid", str(grid), "--db", str(db_path), "--cache-dir", str(cache_dir)]
    result = farm(*args)
    assert result.exit_code == 3, result.output
    statuses = {(job.label, job.status) for job, _ in rows(db_path)}
    hang = "fault[mode=hang,sleep_s=600.0]"
    assert statuses == {("hf", "done"), ("hf[dtype=bfloat16]", "done"), (hang, "failed")}
    [error] = [job.error for job, _ in rows(db_path) if job.status == "failed"]
    assert "hard time limit of 20 s" in error


@pytest.mark.slow
def test_resubmit_skips_done_jobs_and_rerun_runs_them(tmp_path, tiny_model, db_path, cache_dir):
    grid = write_sweep(tmp_path / "tiny.yaml", sweep_text(tiny_model))
    args = ("submit", "--grid", str(grid), "--db", str(db_path), "--cache-dir", str(cache_dir))
    assert farm(*args).exit_code == 0
    first = {job.key: figures.id for job, figures in rows(db_path)}

    again = farm(*args)
    assert "4 job(s) of sweep 'tiny' already done: skipped" in again.output
    assert {job.key: figures.id for job, figures in rows(db_path)} == first

    rerun = farm(*args, "--rerun")
    assert "4 done" in rerun.output
    after = rows(db_path)
    assert len(after) == 4 and all(job.attempts == 2 for job, _ in after)
    with Session(create_engine(f"sqlite:///{db_path}")) as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 4
        assert session.scalar(select(func.count()).select_from(Sweep)) == 1


@pytest.mark.slow
def test_two_workers_run_on_disjoint_cpus(tmp_path, tiny_model, db_path, cache_dir):
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    grid = write_sweep(tmp_path / "tiny.yaml", sweep_text(tiny_model))
    result = farm(
        "submit",
        "--grid",
        str(grid),
        "--db",
        str(db_path),
        "--cache-dir",
        str(cache_dir),
        "--workers",
        "2",
    )
    assert result.exit_code == 0, result.output
    by_worker = {}
    for _job, figures in rows(db_path):
        by_worker.setdefault(figures.worker, set()).add(figures.cpus)
    assert all(len(cpus) == 1 for cpus in by_worker.values())
    cpu_sets = [next(iter(cpus)) for cpus in by_worker.values()]
    assert len(set(cpu_sets)) == len(cpu_sets)


@pytest.mark.slow
def test_report_formats_parse_back(tmp_path, tiny_model, db_path, cache_dir):
    grid = write_sweep(tmp_path / "tiny.yaml", sweep_text(tiny_model))
    farm("submit", "--grid", str(grid), "--db", str(db_path), "--cache-dir", str(cache_dir))
    as_json = json.loads(farm("report", "--db", str(db_path), "-f", "json").output)
    assert len(as_json) == 4 and {row["label"] for row in as_json} == {"hf", "hf[dtype=bfloat16]"}
    assert all(row["speedup"] == 1.0 for row in as_json if row["label"] == "hf")
    as_csv = list(
        csv.DictReader(io.StringIO(farm("report", "--db", str(db_path), "-f", "csv").output))
    )
    assert len(as_csv) == 4 and float(as_csv[0]["decode_tokens_per_s"]) > 0
    table = farm("report", "--db", str(db_path))
    assert "hf[dtype=bfloat16]" in table.output and "tok/s" in table.output
    out = tmp_path / "report.md"
    farm("report", "--db", str(db_path), "-f", "markdown", "--out", str(out))
    assert out.read_text().splitlines()[0].startswith("| backend | ctx | gen |")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backends: [hf]\ngeneraton_lengths: [4]", "did you mean 'generation_lengths'"),
        ("backends: [nope]", "unknown backend 'nope'"),
        ("backends: [hf\n", "invalid YAML"),
    ],
)
def test_a_bad_sweep_writes_nothing(tmp_path, db_path, text, message):
    grid = write_sweep(tmp_path / "bad.yaml", text)
    result = runner.invoke(app, ["submit", "--grid", str(grid), "--db", str(db_path)])
    assert result.exit_code == 2
    assert message in result.output and "bad.yaml" in result.output
    assert not db_path.exists()


def test_missing_sweep_file_and_bad_cpus(tmp_path, db_path):
    result = runner.invoke(
        app, ["submit", "--grid", str(tmp_path / "none.yaml"), "--db", str(db_path)]
    )
    assert result.exit_code == 2 and "no such file" in result.output
    grid = write_sweep(tmp_path / "ok.yaml", "backends: [hf]")
    result = runner.invoke(
        app, ["submit", "--grid", str(grid), "--db", str(db_path), "--cpus", "4096"]
    )
    assert result.exit_code == 2 and "valid CPUs" in result.output
    assert not db_path.exists()


def test_report_without_a_database_says_what_to_do(db_path):
    result = runner.invoke(app, ["report", "--db", str(db_path)])
    assert result.exit_code == 2 and "farm submit" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigterm-in-background"])
def test_ctrl_c_or_sigterm_stops_at_once_and_keeps_what_finished(
    how, tmp_path, tiny_model, db_path, cache_dir
):
    import os
    import signal
    import subprocess
    import time

    from whistle_stop.bench.harness import FARM, farm_env, wait_for

    backends = f"  - name: {FAULT}\n    mode: ok\n    step_s: 0.4\n"
    grid = write_sweep(
        tmp_path / "slow.yaml",
        sweep_text(tiny_model, extra_backends=backends).replace(
            "  - hf\n  - name: hf\n    dtype: bfloat16\n", ""
        ),
    )
    args = [
        FARM,
        "submit",
        "--grid",
        str(grid),
        "--db",
        str(db_path),
        "--cache-dir",
        str(cache_dir),
    ]
    # a script's `farm submit ... &` starts with SIGINT ignored (a non-interactive shell's
    # background job): SIGTERM must stop it all the same
    background = how == "sigterm-in-background"
    process = subprocess.Popen(
        args,
        env=farm_env(),
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None,
    )

    def statuses():
        try:
            return [job.status for job, _ in rows(db_path)]
        except Exception:  # the tables may not exist yet
            return []

    wait_for(lambda: "done" in statuses(), 120, "a first result")
    started = time.monotonic()
    worker = _worker_pids(process.pid)
    assert worker, "no embedded worker process under farm submit"
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the group
    else:
        process.terminate()  # what `kill` or a supervisor sends: farm submit alone
    output, _ = process.communicate(timeout=30)
    assert process.returncode == (130 if how == "ctrl-c" else 143), output
    assert time.monotonic() - started < 15
    assert "finished results are kept" in output and "Traceback" not in output
    assert statuses().count("done") >= 1 and "running" not in statuses()
    wait_for(
        lambda: not any(os.path.exists(f"/proc/{pid}") for pid in worker),
        10,
        "the worker process to stop",
    )
    resumed = subprocess.run(
        args, env=farm_env(), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0 and "already done: skipped" in resumed.stderr  # status line
    assert statuses() == ["done", "done"]


@pytest.mark.slow
def test_done_jobs_of_other_software_are_neither_skipped_nor_rerun_silently(
    tmp_path, tiny_model, db_path, cache_dir
):
    grid = write_sweep(
        tmp_path / "tiny.yaml",
        f"model: {tiny_model}\nbackends: [{FAULT}]\n"
        "context_sizes: [8]\ngeneration_lengths: [4]\nthreads: [1]\n"
        "fidelity_tokens: 0\nbandwidth: host\n",
    )
    args = ("submit", "--grid", str(grid), "--db", str(db_path), "--cache-dir", str(cache_dir))
    assert farm(*args).exit_code == 0
    with Session(create_engine(f"sqlite:///{db_path}")) as session:  # as if measured earlier
        result = session.scalars(select(Result)).one()
        now = result.environment
        result.environment = Environment(
            **{
                c.name: getattr(now, c.name)
                for c in Environment.__table__.columns
                if c.name != "id"
            }
            | {
                "fingerprint": "older",
                "versions": {**now.versions, "torch": "2.0.0"},
                "source_hash": "0123456789abcdef",
            }
        )
        session.commit()
    before = db_path.read_bytes()
    refused = farm(*args)
    assert refused.exit_code == 2
    line = refused.output.strip()
    assert "\n" not in line and "1 done job(s) ran under other software" in line
    assert "torch 2.0.0 ->" in line and "source changed" in line and "--keep" in line
    assert db_path.read_bytes() == before  # nothing written
    kept = farm(*args, "--keep")
    assert kept.exit_code == 0 and "already done: skipped" in kept.output
    assert farm(*args, "--rerun").exit_code == 0
    assert farm(*args).exit_code == 0  # measured again under this software: nothing to ask


@pytest.mark.slow
def test_rounds_on_the_embedded_pool_pool_into_one_row(tmp_path, tiny_model, db_path, cache_dir):
    grid = write_sweep(
        tmp_path / "r.yaml",
        f"name: r\nmodel: {tiny_model}\nbackends: [hf, nanogpt]\n"
        "context_sizes: [8]\ngeneration_lengths: [4]\nthreads: [1]\nrounds: 2\n"
        "control: true\nfidelity_tokens: 2\nrepeats: 2\nbandwidth: host\n",
    )
    args = ("submit", "--grid", str(grid), "--db", str(db_path), "--cache-dir", str(cache_dir))
    result = farm(*args)
    assert result.exit_code == 0, result.output
    assert "round 2 of 2: 3 job(s)" in result.output
    found = rows(db_path)
    assert sorted((job.round, job.position) for job, _ in found) == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
        (2, 3),
    ]
    report = farm("report", "--db", str(db_path), "--format", "json")
    pooled = json.loads(report.output)
    assert len(pooled) == 3 and all(r["rounds"] == 2 for r in pooled)
    nano = next(r for r in pooled if r["label"] == "nanogpt")
    assert len(nano["round_speedups"]) == 2 and nano["top1_agreement"] is not None
    assert "noise floor" in farm("report", "--db", str(db_path)).output


def _worker_pids(parent: int) -> list[int]:
    """The embedded worker processes `farm submit` started (its children)."""
    from pathlib import Path

    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:  # the parent's pid follows the state
            children.append(int(stat.parent.name))
    return children


@pytest.mark.slow
def test_a_folder_named_like_a_package_in_the_working_directory_shadows_nothing(
    tmp_path, tiny_model, db_path, cache_dir, monkeypatch
):
    """transformers imports `kernels` (a PyPI package) when it finds one: run from a
    directory holding a folder of that name (this repository once did), or `torch/`, a
    worker that put the directory on its path died at import. Workers start with -P."""
    project = tmp_path / "project"
    for name in ("kernels", "transformers"):
        (project / name).mkdir(parents=True)
        (project / name / "__init__.py").write_text(f"raise ImportError('shadowed {name}')\n")
    grid = write_sweep(
        project / "s.yaml",
        f"name: s\nmodel: {tiny_model}\nbackends: [hf]\ncontext_sizes: [8]\n"
        "generation_lengths: [4]\nthreads: [1]\nrepeats: 1\nfidelity_tokens: 0\n",
    )
    monkeypatch.chdir(project)
    result = farm(
        "submit", "--grid", str(grid), "--db", str(db_path), "--cache-dir", str(cache_dir)
    )
    assert result.exit_code == 0, result.output
    assert [job.status for job, _ in rows(db_path)] == ["done"]


def test_a_job_line_names_its_model_where_the_sweep_has_several():
    from rich.console import Console

    from whistle_stop.contract.status import JobStatus
    from whistle_stop.orchestrator.progress import SweepProgress
    from whistle_stop.orchestrator.store import Applied

    job = Applied("native", 128, 64, 2, JobStatus.DONE, "w", None, 93.9, "random:gpt2-large")
    for models, expected in (
        (True, "[1/2] native random:gpt2-large ctx=128 gen=64 threads=2: 93.9 tok/s"),
        (False, "[1/2] native ctx=128 gen=64 threads=2: 93.9 tok/s"),
    ):
        out = io.StringIO()
        SweepProgress(Console(file=out, width=80), "s", 2, models=models).update(job)
        assert out.getvalue().strip() == expected


def test_a_killed_fork_server_is_reaped_before_its_loop_closes(tmp_path, monkeypatch):
    """Ctrl-C kills each embedded worker's fork server; one left to the garbage collector
    after asyncio.run closed the loop printed "Event loop is closed" and a traceback."""
    import asyncio
    import gc
    import sys

    from whistle_stop.executors.local import LocalWorker

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    async def killed_then_stopped():
        worker = LocalWorker("t", [0], tmp_path, tmp_path / "logs")
        await worker.start()
        process = worker.process
        worker.kill()  # what the executor does on Ctrl-C
        await worker.stop()  # what aclose() does in the command's finally
        return process

    process = asyncio.run(killed_then_stopped())
    del killed_then_stopped
    gc.collect()
    assert process.returncode is not None
    assert [str(u.exc_value) for u in unraisable] == []
