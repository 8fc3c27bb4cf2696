"""Sweep files: grid expansion, stable keys, and every kind of bad input."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from whistle_stop.contract.jobspec import JobSpec, MalformedJobError
from whistle_stop.orchestrator.sweep import SweepError, load_sweep, parse_sweep

GOOD = """
name: demo
model: random:gpt2
backends:
  - hf
  - name: hf
    dtype: bfloat16
context_sizes: [32, 128]
generation_lengths: [16, 64, 128]
threads: [1, 2]
"""


def parse(text: str):
    return parse_sweep(textwrap.dedent(text), origin="sweep.yaml", default_name="sweep")


def test_grid_is_the_product_of_the_axes():
    sweep = parse(GOOD)
    assert len(sweep.jobs) == 2 * 2 * 3 * 2
    cells = {(j.label, j.context, j.generation, j.threads) for j in sweep.jobs}
    assert len(cells) == len(sweep.jobs)
    assert {j.label for j in sweep.jobs} == {"hf", "hf[dtype=bfloat16]"}


def test_models_are_a_grid_axis_and_each_round_pairs_a_path_with_its_own_models_baseline():
    sweep = parse(
        "models: [random:gpt2, random:gpt2-medium]\nbackends: [hf, {name: native, bits: 8}]\n"
        "context_sizes: [32]\ngeneration_lengths: [16]\nthreads: [1]\nrounds: 2\n"
    )
    assert len(sweep.jobs) == 2 * 2 * 2
    assert {j.model for j in sweep.jobs} == {"random:gpt2", "random:gpt2-medium"}
    for job in sweep.jobs:  # a round's cell: both backends of one model, one after another
        same_place = [j for j in sweep.jobs if j.round == job.round and j.model == job.model]
        assert len(same_place) == 2
    first = [j for j in sweep.jobs if j.round == 1]
    order = [j.model for j in first]
    assert order[0] == order[1] and order[2] == order[3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model: random:gpt2\nmodels: [random:gpt2-xl]", "model: and models: both given"),
        ("models: [random:gpt2, random:gpt2]", "models: random:gpt2 appears twice"),
        ("models: [random:gpt2, random:gpt3]", "models: unknown random model 'gpt3'"),
        ("models: []", "models: List should have at least 1 item"),
    ],
)
def test_a_bad_models_axis_is_refused_in_one_line(text, message):
    with pytest.raises(SweepError) as error:
        parse(text + "\nbackends: [hf]\n")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_keys_are_stable_and_ignore_the_sweep_name():
    first = [job.key for job in parse(GOOD).jobs]
    again = [job.key for job in parse(GOOD.replace("name: demo", "name: other")).jobs]
    assert first == again
    assert len(set(first)) == len(first)


def test_keys_change_when_the_spec_changes():
    a = parse(GOOD).jobs[0]
    b = parse(GOOD.replace("seed", "x") + "seed: 7\n").jobs[0]
    assert a.key != b.key


@pytest.mark.parametrize(
    "text, message",
    [
        ("backends: [hf]\ncontext_sizes: [8, 8]", "context_sizes: 8 appears twice"),
        ("backends: [hf]\ngeneration_lengths: [4, 16, 4]", "generation_lengths: 4 appears"),
        ("backends: [hf]\nthreads: [1, 1]", "threads: 1 appears twice"),
        ("backends: [hf, hf]", "backends: 'hf' appears twice"),
        ("backends: [hf, {name: hf, dtype: float32}]", "'hf' appears twice"),
        ("backends: [hf, nanogpt]\nbaseline: onnx", "baseline: 'onnx' is not among"),
    ],
)
def test_a_value_given_twice_or_a_missing_baseline_is_refused(text, message):
    """Duplicates were merged (backends) or counted (axes): both are typos, refused alike;
    a baseline the sweep lacks would make every speedup '-' in every report."""
    with pytest.raises(SweepError, match=re.escape(message)):
        parse(text)


def test_the_default_baseline_may_be_absent():
    assert parse("backends: [nanogpt]").baseline == "hf"  # speedups '-', nothing refused


def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my-sweep.yaml"
    path.write_text("backends: [hf]\n")
    assert load_sweep(path).name == "my-sweep"


def test_job_spec_round_trips_through_json_dict():
    job = parse(GOOD).jobs[3]
    assert JobSpec.from_dict(job.to_dict()) == job
    assert JobSpec.from_dict(job.to_dict()).key == job.key


@pytest.mark.parametrize(
    "bad",
    [None, [], {"model": "x"}, {**parse(GOOD).jobs[0].to_dict(), "context": "many"}],
)
def test_malformed_job_spec_is_rejected(bad):
    with pytest.raises(MalformedJobError):
        JobSpec.from_dict(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "backends: [hf]\ngeneraton_lengths: [4]",
            "unknown key 'generaton_lengths' (did you mean 'generation_lengths'?)",
        ),
        ("backends: [hf]\ncontext_sizes: lots", "context_sizes: Input should be a valid list"),
        ("backends: [hf]\ncontext_sizes: []", "context_sizes: List should have at least 1 item"),
        (
            "backends: [hf]\ngeneration_lengths: [0]",
            "generation_lengths.0: Input should be greater than 0",
        ),
        ("backends: [hf]\nthreads: [-2]", "threads.0: Input should be greater than 0"),
        ("backends: []", "backends: List should have at least 1 item"),
        (
            "backends: [gpt5-turbo]",
            "unknown backend 'gpt5-turbo'; known backends: calibration, ctranslate2, fault, hf, ",
        ),
        (
            "backends: [{name: hf, precision: int8}]",
            "unknown option 'precision' for backend 'hf'; valid options: dtype",
        ),
        ("backends: [{name: hf, dtype: float64}]", "Input should be 'float32' or 'bfloat16'"),
        (
            "backends: [hf]\ncontext_sizes: [1000]\ngeneration_lengths: [64]",
            "reach 1064 tokens, beyond random:gpt2's 1024 positions",
        ),
        ("backends: [hf]\nmodel: random:gpt3", "unknown random model 'gpt3'"),
        ("backends: [hf]\nmodel: s3://bucket/model", "unknown model source 's3://bucket/model'"),
        ("backends: [hf]\nmodel: ./no/such/dir", "has no config.json"),
        ("backends: [hf\n", "invalid YAML"),
        ("- just\n- a list", "expected a mapping"),
    ],
)
def test_bad_sweeps_name_the_file_the_field_and_the_fix(text, expected):
    with pytest.raises(SweepError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith("sweep.yaml")
    assert expected in message


def test_missing_file(tmp_path):
    with pytest.raises(SweepError, match="no such file"):
        load_sweep(tmp_path / "nope.yaml")


def test_local_model_positions_come_from_its_config(tiny_model):
    with pytest.raises(SweepError, match="'s 128 positions"):
        parse(
            f"model: {tiny_model}\nbackends: [hf]\ncontext_sizes: [100]\ngeneration_lengths: [29]"
        )
    assert (
        len(
            parse(
                f"model: {tiny_model}\nbackends: [hf]\ncontext_sizes: [100]\ngeneration_lengths: [28]"
            ).jobs
        )
        == 1
    )


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parent.parent.glob("examples/*.yaml")), ids=lambda path: path.name
)
def test_every_example_sweep_validates(path):
    """A typo in a shipped example would otherwise surface only when someone runs it."""
    sweep = load_sweep(path)
    assert sweep.jobs and len({job.key for job in sweep.jobs}) == len(sweep.jobs)
