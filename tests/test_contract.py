"""The typed contract: what crosses a process boundary matches what the database stores
(the package boundaries are checked in test_imports.py)."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from tests.test_imports import modules
from whistle_stop.contract.payload import HostFacts, MalformedPayloadError, Metrics, ResultPayload
from whistle_stop.contract.status import JobStatus
from whistle_stop.db.models import Environment, Result

ROOT = Path(__file__).resolve().parent.parent
RESULT_HEADER = {"id", "job_id", "environment_id", "worker", "cpus", "created_at"}


def test_metrics_fields_are_the_result_columns():
    fields = {f.name for f in dataclasses.fields(Metrics)}
    columns = {c.name for c in Result.__table__.columns} - RESULT_HEADER
    assert fields == columns, (sorted(fields - columns), sorted(columns - fields))


def test_host_facts_are_the_environment_columns():
    fields = {f.name for f in dataclasses.fields(HostFacts)}
    assert fields == {c.name for c in Environment.__table__.columns} - {"id"}


def _metrics(**changes) -> dict:
    figures = {f.name: 1.0 for f in dataclasses.fields(Metrics)}
    figures |= {
        "noisy": False,
        "remeasured": False,
        "repeats": 3,
        "load_extra": {},
        "samples": {},
        "tokens": [1, 2],
        "pinning_violations": [],
    }
    return figures | changes


def _environment() -> dict:
    return {f.name: None for f in dataclasses.fields(HostFacts)} | {"fingerprint": "f"}


def test_a_payload_survives_the_wire():
    sent = ResultPayload.from_dict(
        {"status": "done", "worker": "w", "environment": _environment(), "metrics": _metrics()}
    )
    received = ResultPayload.from_json(sent.to_json())
    assert received == sent
    assert received.status is JobStatus.DONE and isinstance(received.metrics, Metrics)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["metrics"].pop("decode_tokens_per_s"), "missing ['decode_tokens_per_s']"),
        (lambda p: p["metrics"].update(new_figure=1), "unexpected ['new_figure']"),
        (lambda p: p.update(status="finished"), "unknown result status 'finished'"),
        (lambda p: p.update(metrics=None), "carries its metrics"),
        (lambda p: p.pop("worker"), "missing ['worker']"),
        (lambda p: p.update(status="pending"), "done or failed"),
    ],
)
def test_a_malformed_payload_is_refused_naming_the_field(change, message):
    payload = {
        "status": "done",
        "worker": "w",
        "environment": _environment(),
        "metrics": _metrics(),
    }
    change(payload)
    with pytest.raises(
        MalformedPayloadError, match=message.replace("[", r"\[").replace("]", r"\]")
    ):
        ResultPayload.from_json(json.dumps(payload))


def test_statuses_are_spelled_only_by_the_enum():
    statuses = {status.value for status in JobStatus}
    found = []
    for module, path in modules().items():
        if module == "whistle_stop.contract.status":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in statuses:
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert found == []


def test_the_source_hash_covers_the_engines_cpp(tmp_path, monkeypatch):
    from whistle_stop.contract import provenance

    (tmp_path / "native").mkdir()
    engine = tmp_path / "native" / "gpt2.cc"
    engine.write_text("int x = 1;")
    (tmp_path / "native" / "notes.txt").write_text("not source")
    monkeypatch.setattr(provenance, "package_dirs", lambda: {"native": tmp_path / "native"})
    before = provenance.source_hash.__wrapped__()
    (tmp_path / "native" / "notes.txt").write_text("still not source")
    assert provenance.source_hash.__wrapped__() == before
    engine.write_text("int x = 2;")
    assert provenance.source_hash.__wrapped__() != before


def test_cpuinfo_fields_are_looked_up_by_key_not_by_prefix():
    from whistle_stop.contract.cpuinfo import cpuinfo_field

    # 'flags' must not match 'vmx flags' (newer kernels) nor 'bugs' its value; the first
    # processor's line wins, and a missing key (not Linux) is empty, not an error
    text = (
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2\n"
        "vmx flags\t: ept\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpuinfo_field(text, "flags") == "fpu avx2"
    assert cpuinfo_field(text, "vendor_id") == "AuthenticAMD"
    assert cpuinfo_field(text, "model name") == ""
    assert cpuinfo_field("", "flags") == ""
