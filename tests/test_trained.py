"""A GPT-2 trained here on real text (the tiny recipe: seconds), and fidelity measured on its
held-out works: real positions, perplexities, outlier channels, a real tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from whistle_stop.backends import corpus
from whistle_stop.cli import app
from whistle_stop.db.models import Job, Result

TINY = "trained:tiny-shakespeare"
runner = CliRunner()


def farm(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the cache it was built in, the model directory)."""
    cache = tmp_path_factory.mktemp("trained-cache")
    built = farm("model", TINY, "--cache-dir", str(cache))
    assert built.exit_code == 0, built.output
    directory = Path(built.stdout.splitlines()[0])
    assert "held-out perplexity" in built.output
    return cache, directory


def test_it_is_gpt2_with_a_tokenizer_trained_on_its_corpus(trained):
    from transformers import AutoTokenizer

    cache, directory = trained
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["activation_function"] == "gelu_new"
    assert config.get("tie_word_embeddings", True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    line = "Fair is foul, and foul is fair: hover through the fog and filthy air."
    ids = tokenizer(line)["input_ids"]
    assert tokenizer.decode(ids) == line
    assert len(ids) < 0.6 * len(line)  # merges learnt from the plays, not byte by byte
    facts = json.loads((directory / "training.json").read_text())
    assert facts["corpus_sha256"] == corpus.SHA256
    # learnt something: far below a uniform guess over its 512 tokens
    assert facts["held_out_perplexity"] < 512 / 2


def test_whole_works_are_held_out_of_training(trained):
    cache, directory = trained
    works = corpus.load(cache)
    assert len(works.held_out) == len(corpus.HELD_OUT)
    assert any(text.lstrip().startswith("MACBETH") for text in works.held_out)
    assert not any(text.lstrip().startswith("MACBETH") for text in works.train)
    assert "Fair is foul, and foul is fair" in (directory / "heldout.txt").read_text()


def test_the_same_recipe_and_seed_reuse_the_model(trained):
    cache, directory = trained
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    again = farm("model", TINY, "--cache-dir", str(cache))
    assert again.exit_code == 0 and again.stdout.splitlines()[0] == str(directory)
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_planted_outlier_channel_is_named_with_its_size():
    """The statistics the report shows: one input channel 50x the rest is found in the
    layer it enters, by index, at 50x; a layer without one is at 1x."""
    import torch

    from whistle_stop.worker.activations import ChannelMaxima, summarize

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    torch.nn.init.zeros_(model[0].weight)
    torch.nn.init.ones_(model[0].bias)  # the second layer sees 1 in every channel
    x = torch.ones(3, 5, 8)
    x[..., 3] = 50.0
    with ChannelMaxima(model) as seen, torch.no_grad():
        model(x)
    found = summarize([seen.arrays()])
    assert found["worst"] == "0" and found["worst_ratio"] == pytest.approx(50)
    assert found["top_channels"]["0"][0] == 3
    assert found["ratio"]["1"] == pytest.approx(1)


def test_an_unknown_recipe_is_one_line():
    found = farm("model", "trained:gpt5-shakespeare")
    assert found.exit_code == 2
    assert "unknown trained model 'gpt5-shakespeare'" in found.output
    assert "Traceback" not in found.output


@pytest.mark.slow
def test_fidelity_on_held_out_text_through_the_farm(trained, tmp_path):
    cache, directory = trained
    grid = tmp_path / "fidelity.yaml"
    grid.write_text(
        f"""
name: held-out
model: {TINY}
backends:
  - hf
  - {{name: hf, dtype: bfloat16, label: hf-bf16}}
  - name: torch-int8
    kv_cache: true
context_sizes: [32]
generation_lengths: [8]
threads: [1]
warmups: 0
repeats: 2
fidelity_tokens: 16
fidelity_prompts: 3
"""
    )
    db = tmp_path / "farm.db"
    done = farm("submit", "--grid", str(grid), "--db", str(db), "--cache-dir", str(cache), "-q")
    assert done.exit_code == 0, done.output
    with Session(create_engine(f"sqlite:///{db}")) as session:
        found = {
            job.label: figures for job, figures in session.execute(select(Job, Result).join(Result))
        }
    assert set(found) == {"hf", "hf-bf16", "torch-int8"}
    reference = found["hf"]
    assert reference.perplexity_delta == 0.0 and 1 < reference.perplexity < 512
    for label, figures in found.items():
        assert figures.fidelity_data == "held-out text", label
        assert figures.fidelity_positions == 3 * 16
        outliers = figures.activation_outliers
        assert len(outliers["ratio"]) == 2 * 4 + 1  # four linear layers a block, and the head
        assert outliers["worst_ratio"] >= outliers["median_ratio"] >= 1
    for label in ("hf-bf16", "torch-int8"):
        figures = found[label]
        assert figures.top1_low <= figures.top1_agreement <= figures.top1_high
        assert figures.kl_p50 <= figures.kl_p90 <= figures.kl_p99 <= figures.kl_max
        assert figures.mean_kl > 0  # quantised: not the reference's logits
        # the same positions scored by both: the path's perplexity less the reference's
        assert math.isfinite(figures.perplexity)
        assert figures.perplexity - figures.perplexity_delta == pytest.approx(
            reference.perplexity, rel=1e-6
        )
    report = farm("report", "--sweep", "held-out", "--db", str(db), "--view", "fidelity")
    assert report.exit_code == 0, report.output
    assert "held-out text" in report.output and "outlier" in report.output


def test_a_saved_model_directory_runs_from_a_text_prompt(trained, tmp_path):
    """The trained model as any user's `save_pretrained` directory, prompted with text."""
    from whistle_stop.orchestrator.sweep import parse_sweep
    from whistle_stop.worker.runner import run_job

    cache, directory = trained
    (tmp_path / "prompt.txt").write_text("ROMEO. But soft, what light through yonder window")
    plan = parse_sweep(
        f"model: {directory}\nbackends: [hf]\ncontext_sizes: [16]\ngeneration_lengths: [6]\n"
        f"threads: [1]\nrepeats: 1\nwarmups: 0\nfidelity_tokens: 0\nprompt: text\n"
        f"prompt_text: {tmp_path / 'prompt.txt'}",
        origin="s.yaml",
        default_name="s",
    )
    payload = run_job(plan.jobs[0].to_dict(), cache_dir=cache, worker_name="t")
    assert payload.status == "done", payload.error
    assert payload.metrics.tokenize_ms > 0 and payload.metrics.detokenize_ms > 0
    assert len(payload.metrics.tokens) == 6
