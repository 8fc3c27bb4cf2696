"""Nothing in a sweep file can run code, and every malformed input is refused in one line,
exit 2, before anything is written (the database and the cache stay as they were)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from whistle_stop.cli import app
from whistle_stop.contract.jobspec import FIELD_TYPES, JobSpec, MalformedJobError
from whistle_stop.contract.queue import task_id_for
from whistle_stop.worker.messages import RejectedMessage, accept

runner = CliRunner()
GOOD = "backends: [hf]\ncontext_sizes: [8]\ngeneration_lengths: [4]\n"
BOMB = (
    'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
        for i in range(8)
    )
    + "backends: [hf]\n"
)

HOSTILE = {
    "module path as backend": (
        "backends: ['os:system']\n",
        "backends are named, never given as module paths",
    ),
    "importable class as backend": (
        "backends: ['whistle_stop_testplugins.payload:Touch']\n",
        "unknown backend",
    ),
    "mapping with a module path": (
        "backends:\n  - name: subprocess:Popen\n    args: [ls]\n",
        "unknown backend 'subprocess:Popen'",
    ),
    "boolean as context": (
        "backends: [hf]\ncontext_sizes: [true]\n",
        "context_sizes.0: Input should be a valid integer",
    ),
    "float as context": ("backends: [hf]\ncontext_sizes: [1.5]\n", "context_sizes.0"),
    "string as a list": (
        "backends: [hf]\ncontext_sizes: '128'\n",
        "context_sizes: Input should be a valid list",
    ),
    "string as a number": ("backends: [hf]\nthreads: ['2']\n", "threads.0"),
    "float as seed": ("backends: [hf]\nseed: 1.5\n", "seed"),
    "zero length": ("backends: [hf]\ngeneration_lengths: [0]\n", "greater than 0"),
    "option of the wrong type": (
        "backends:\n  - name: onnx\n    fused_attention: 'yes'\n",
        "fused_attention",
    ),
    "option that does not exist": (
        "backends:\n  - name: hf\n    exec: 'import os'\n",
        "unknown option 'exec'",
    ),
    "label that is not text": (
        "backends:\n  - name: hf\n    label: {a: 1}\n",
        "label must be a string",
    ),
    "name that is a list": (
        "name: [a, b]\nbackends: [hf]\n",
        "name: Input should be a valid string",
    ),
    "python tag": (
        '!!python/object/apply:os.system ["touch /tmp/owned"]\n',
        "could not determine a constructor",
    ),
    "python tag inside": (
        "backends: [hf]\nseed: !!python/name:os.system\n",
        "could not determine a constructor",
    ),
    "alias bomb": (BOMB, "anchors and aliases expand to more than 100,000 values"),
    "self-referencing anchor": ("backends: &a [*a]\n", "anchors and aliases expand"),
    "empty file": ("", "expected a mapping of keys"),
    "top-level list": ("- hf\n- onnx\n", "expected a mapping of keys"),
    "unknown key": (
        "backends: [hf]\ngeneraton_lengths: [4]\n",
        "did you mean 'generation_lengths'",
    ),
    "model naming a module": ("model: 'os:system'\nbackends: [hf]\n", "unknown model source"),
    "grid of 10,404 jobs": (
        "backends: [hf, nanogpt]\ncontext_sizes: ["
        + ",".join(map(str, range(1, 103)))
        + "]\ngeneration_lengths: ["
        + ",".join(map(str, range(1, 52)))
        + "]\n",
        "expands to 10,404 jobs, more than 10,000",
    ),
}
RAW = {
    "binary file": (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)), "a binary file, not YAML text"),
    "not UTF-8": ("backends: [hf]\nname: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    "over 1 MiB": (b"# " + b"x" * (1 << 20) + b"\nbackends: [hf]\n", "a sweep file is at most"),
}


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return hashlib.sha256(
        b"".join(p.name.encode() + p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())
    ).hexdigest()


@pytest.fixture
def existing(tmp_path):
    """A database and a cache that hold something already: they must not change."""
    db, cache = tmp_path / "farm.db", tmp_path / "cache"
    from whistle_stop.db.session import make_engine

    make_engine(str(db)).dispose()  # closed: the write-ahead log is folded into the file
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "keep").write_text("cached")
    return db, cache


def _refused(tmp_path, existing, grid: Path, expected: str, monkeypatch) -> None:
    db, cache = existing
    marker = tmp_path / "marker"
    monkeypatch.setenv("WHISTLE_STOP_PAYLOAD_MARKER", str(marker))
    before = (_digest(db), _digest(cache))
    result = runner.invoke(
        app, ["submit", "--grid", str(grid), "--db", str(db), "--cache-dir", str(cache)]
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output and result.stdout == ""
    assert (_digest(db), _digest(cache)) == before
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_sweep_is_refused_in_one_line(name, tmp_path, existing, monkeypatch):
    text, expected = HOSTILE[name]
    grid = tmp_path / "sweep.yaml"
    grid.write_text(text)
    _refused(tmp_path, existing, grid, expected, monkeypatch)


@pytest.mark.parametrize("name", sorted(RAW))
def test_a_file_that_is_not_yaml_text_is_refused(name, tmp_path, existing, monkeypatch):
    data, expected = RAW[name]
    grid = tmp_path / "sweep.yaml"
    grid.write_bytes(data)
    _refused(tmp_path, existing, grid, expected, monkeypatch)


def test_a_directory_or_a_missing_file_is_refused(tmp_path, existing, monkeypatch):
    _refused(tmp_path, existing, tmp_path, "is a directory", monkeypatch)
    _refused(tmp_path, existing, tmp_path / "nope.yaml", "no such file", monkeypatch)


def test_the_payload_module_would_be_noticed(tmp_path, monkeypatch):
    """The marker the tests above look for does appear when the module is imported."""
    import importlib
    import sys

    marker = tmp_path / "marker"
    monkeypatch.setenv("WHISTLE_STOP_PAYLOAD_MARKER", str(marker))
    monkeypatch.delitem(sys.modules, "whistle_stop_testplugins.payload", raising=False)
    importlib.import_module("whistle_stop_testplugins.payload")
    assert marker.exists()


def _spec(**changes):
    spec = JobSpec(
        model="random:gpt2",
        backend="hf",
        label="hf",
        options=(("dtype", "float32"),),
        context=8,
        generation=4,
        threads=1,
        warmups=0,
        repeats=1,
        min_duration_s=0.0,
        max_repeats=1,
        noise_threshold=0.05,
        fidelity_tokens=0,
        eval_text=None,
        eval_tokens=2,
        rerun_noisy=False,
        prompt_text=None,
        tokenizer="fast",
        seed=0,
    )
    return spec.to_dict() | changes


def test_every_spec_field_has_a_wire_type():
    from dataclasses import fields

    assert set(FIELD_TYPES) == {f.name for f in fields(JobSpec)}


@pytest.mark.parametrize(
    "changes, problem",
    [
        ({"context": True}, "context must be an integer"),
        ({"threads": 1.0}, "threads must be an integer"),
        ({"rerun_noisy": 1}, "rerun_noisy must be a boolean"),
        ({"backend": ["os", "system"]}, "backend must be a string"),
        ({"options": "dtype=float32"}, "options must be an object"),
        ({"context": -1}, "context must not be negative"),
        ({"eval_text": 3}, "eval_text must be a string or null"),
    ],
)
def test_a_spec_of_the_wrong_types_is_malformed(changes, problem):
    with pytest.raises(MalformedJobError, match=problem):
        JobSpec.from_dict(_spec(**changes))


@pytest.mark.parametrize(
    "args, kwargs, problem",
    [
        (["s", 1, None], {}, "malformed job spec"),
        (["s", 1], {}, "expected 3 arguments"),
        (["s", True, {}], {}, "job id must be a positive integer"),
        ([["s"], 1, {}], {}, "sweep name must be a string"),
        (["s", 1, {}], {"command": "rm -rf /"}, "unexpected keyword arguments"),
        ("not a list", {}, "expected 3 arguments"),
    ],
)
def test_a_malformed_message_is_rejected(args, kwargs, problem):
    with pytest.raises(RejectedMessage, match=problem):
        accept("some-task-id", args, kwargs)


def _task_id(spec: dict) -> str:
    return task_id_for("s", JobSpec.from_dict(spec).key)


def test_a_message_is_bound_to_its_job_and_its_options_are_checked():
    wrong = _spec(options={"dtype": 32})
    with pytest.raises(RejectedMessage, match="options of backend 'hf'"):
        accept(_task_id(wrong), ["s", 1, wrong], {})
    with pytest.raises(RejectedMessage, match="task id is not the one"):
        accept(_task_id(_spec()), ["s", 1, _spec(seed=1)], {})  # another job's task id
    sweep, job_id, spec = accept(_task_id(_spec()), ["s", 1, _spec()], {})
    assert (sweep, job_id, spec.backend) == ("s", 1, "hf")


def test_no_environment_leaks_into_the_tests():
    assert "WHISTLE_STOP_PAYLOAD_MARKER" not in os.environ
