"""The store, the only writer, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text

from tests.test_report import payload
from whistle_stop.bench.harness import ENVIRONMENT
from whistle_stop.contract.events import Failed, Finished, Queued, Started
from whistle_stop.contract.status import JobStatus
from whistle_stop.db.models import Environment, Job, Result
from whistle_stop.db.session import make_engine, make_session_factory, upgrade_schema
from whistle_stop.orchestrator.store import Store
from whistle_stop.orchestrator.sweep import parse_sweep
from whistle_stop.reports.query import find_sweep, status_counts

ROOT = Path(__file__).resolve().parent.parent  # the checkout: examples/ and cwd

SWEEP = "backends: [hf, nanogpt]\ncontext_sizes: [32]\ngeneration_lengths: [16]\n"


def _store(url: str) -> Store:
    return Store(make_session_factory(url))


def test_events_move_jobs_and_a_second_result_is_refused(any_db):
    store = _store(any_db)
    plan = parse_sweep(SWEEP, origin="s", default_name="s")
    hf, nano = store.record_sweep(plan).to_run
    assert store.apply(Queued(hf.id)).status is JobStatus.QUEUED
    assert store.apply(Started(hf.id, "w1", attempt=1)).status is JobStatus.RUNNING
    done = store.apply(Finished(hf.id, payload("hf", 32, 16)))
    assert done.status is JobStatus.DONE and done.decode_tokens_per_s == pytest.approx(25.0)
    assert store.apply(Finished(hf.id, payload("hf", 32, 16))).status is None  # a duplicate
    assert store.apply(Started(hf.id, "late", attempt=2)).status is None  # a late start
    store.apply(Started(nano.id, "w2"))
    failed = payload("hf", 32, 16, failed=True)
    assert store.apply(Failed(nano.id, failed)).status is JobStatus.FAILED
    with store.sessions() as session:
        sweep = find_sweep(session, "s")
        assert status_counts(session, sweep) == {"done": 1, "failed": 1}
        assert session.scalar(select(Job.error).where(Job.id == nano.id)).endswith("boom")
    again = store.record_sweep(plan)
    assert [job.id for job in again.to_run] == [nano.id] and again.to_run[0].restart
    assert again.already_done == 1


def test_interrupted_jobs_go_back_to_pending(any_db):
    store = _store(any_db)
    [job] = store.record_sweep(parse_sweep("backends: [hf]", origin="s", default_name="s")).to_run
    store.apply(Started(job.id, "w"))
    assert [pending.id for pending in store.unfinished("s")] == [job.id]
    store.release_running([job.id])
    with store.sessions() as session:
        assert session.get(Job, job.id).status is JobStatus.PENDING


def test_byte_counts_past_32_bits_and_missing_figures(any_db):
    """25 GB of memory and a 6 GB artifact (GPT-2 XL) fit; a NaN figure (a one-token
    generation has no decode step) is stored as NULL, in its column and inside JSON."""
    from dataclasses import replace

    store = _store(any_db)
    [job] = store.record_sweep(parse_sweep("backends: [hf]", origin="s", default_name="s")).to_run
    result = payload("hf", 128, 16)
    metrics = replace(
        result.metrics,
        artifact_bytes=6_000_000_000,
        rss_peak_bytes=25 * 2**30,
        decode_ms_p99=math.nan,
        load_extra={"nan": math.nan},
    )
    environment = replace(result.environment, memory_bytes=25 * 2**30)
    store.apply(Finished(job.id, replace(result, metrics=metrics, environment=environment)))
    with store.sessions() as session:
        stored = session.scalar(select(Result))
        assert stored.artifact_bytes == 6_000_000_000 and stored.rss_peak_bytes == 25 * 2**30
        assert stored.decode_ms_p99 is None and stored.load_extra == {"nan": None}
        assert session.scalar(select(Environment.memory_bytes)) == 25 * 2**30


def test_an_older_database_is_upgraded_in_place(any_db):
    """A database written before `remeasured` existed gains it, with its default."""
    engine = make_engine(any_db)
    store = _store(any_db)
    [job] = store.record_sweep(parse_sweep("backends: [hf]", origin="s", default_name="s")).to_run
    store.apply(Finished(job.id, payload("hf", 32, 16)))
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE results DROP COLUMN remeasured"))
    with make_engine(any_db, create=False).begin() as connection:
        assert upgrade_schema(connection) == ["results.remeasured"]
    with store.sessions() as session:
        assert session.scalar(select(Result.remeasured)) is False
    assert "remeasured" in {
        c["name"] for c in inspect(create_engine(make_engine(any_db).url)).get_columns("results")
    }


def test_an_older_database_is_read_as_it_is(any_db):
    """A report on a database written before a figure existed reads it as NULL (or its
    default) and writes nothing: the database keeps lacking the columns."""
    from whistle_stop.db.session import open_readonly

    store = _store(any_db)
    [job] = store.record_sweep(parse_sweep("backends: [hf]", origin="s", default_name="s")).to_run
    store.apply(Finished(job.id, payload("hf", 32, 16)))
    with make_engine(any_db).begin() as connection:
        for column in ("remeasured", "roofline_kv_fraction"):
            connection.execute(text(f"ALTER TABLE results DROP COLUMN {column}"))
    for _ in range(2):  # a second session: a new connection reads through the views too
        with open_readonly(any_db)() as session:
            stored = session.scalar(select(Result))
            assert stored.roofline_kv_fraction is None and stored.remeasured is False
            assert stored.decode_tokens_per_s > 0
    engine = make_engine(any_db, create=False)  # create=True would add them
    columns = {c["name"] for c in inspect(engine).get_columns("results")}
    assert not {"remeasured", "roofline_kv_fraction"} & columns


def test_environment_fixture_matches_the_contract():
    from whistle_stop.contract.payload import HostFacts

    assert HostFacts.from_dict(ENVIRONMENT).hostname == "box"


@pytest.mark.slow
def test_two_submits_and_a_report_at_once_on_postgresql(pg_url, tmp_path, tiny_model):
    """Two `farm submit` processes write different sweeps to one database while
    `farm report` reads it, again and again: all succeed, and every job has its result."""
    from whistle_stop.bench.harness import FARM, farm_env

    procs, logs = [], {}
    for name in ("left", "right"):
        grid = tmp_path / f"{name}.yaml"
        grid.write_text(
            f"name: {name}\nmodel: {tiny_model}\nbackends:\n  - name: fault\n"
            "    step_s: 0.01\ncontext_sizes: [8, 16]\ngeneration_lengths: [4]\n"
            "threads: [1]\nwarmups: 0\nrepeats: 1\nfidelity_tokens: 0\n"
        )
        cpus = "0" if name == "left" else "1"
        # output to a file, not a pipe nobody reads until the end: a pipe that fills
        # would stop the submit and look like a hang
        logs[name] = tmp_path / f"{name}.log"
        with logs[name].open("w") as output:  # the child keeps its own copy of the file
            procs.append(
                subprocess.Popen(
                    [
                        FARM,
                        "submit",
                        "--grid",
                        str(grid),
                        "--db",
                        pg_url,
                        "--cpus",
                        cpus,
                        "--cache-dir",
                        str(tmp_path / f"cache-{name}"),
                    ],
                    env=farm_env(),
                    cwd=ROOT,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
    # a job is a fresh process (imports torch): ~10 s here, a few times that on a slow host
    reads, deadline = 0, time.monotonic() + 420
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            for process in procs:
                process.kill()
            pytest.fail(
                "a submit did not finish:\n"
                + "\n".join(f"--- {name}:\n{log.read_text()}" for name, log in logs.items())
            )
        report = subprocess.run(
            [FARM, "report", "--all", "-f", "csv", "--db", pg_url],
            env=farm_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert report.returncode in (0, 2), report.stderr  # 2: no sweep recorded yet
        reads += report.returncode == 0
        time.sleep(0.5)  # leave the submits some CPU: two of them share two CPUs with this
    for process, log in zip(procs, logs.values(), strict=True):
        assert process.wait() == 0, log.read_text()
    assert reads >= 1
    for name in ("left", "right"):
        report = subprocess.run(
            [FARM, "report", "--db", pg_url, "--sweep", name, "-f", "csv"],
            env=farm_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert report.returncode == 0, report.stderr
        assert report.stdout.count(",done,") == 2, report.stdout
