"""Perplexity on an evaluation text, with a tiny tokenizer trained on the fly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from whistle_stop.backends import registry
from whistle_stop.bench.harness import save_tiny_gpt2
from whistle_stop.worker.perplexity import perplexity, token_ids

TEXT = (
    "The farm measures how fast a small GPT runs on a CPU and what each faster path costs. "
    "Greedy decoding picks the most likely token; perplexity says how surprised the model is "
    "by a text it reads. A quantized model that reads the same text with the same surprise "
    "has lost little; one whose perplexity rises has paid for its speed. "
) * 3


@pytest.fixture(scope="module")
def model_with_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-with-tokenizer")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator([TEXT], trainer)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(directory)
    tokenizer.model.save(str(directory))  # vocab.json + merges.txt, for the slow tokenizer
    save_tiny_gpt2(directory, vocab_size=300, n_positions=64)
    (directory / "eval.txt").write_text(TEXT)
    return directory


def direct_nll(model_dir, ids: list[int], window: int) -> float:
    """The same windows, scored with transformers' full-sequence forward."""
    from whistle_stop.backends.weights import load_hf_model

    model = load_hf_model(model_dir)
    nll, scored, begin = 0.0, 0, 0
    while scored < len(ids) - 1:
        end = min(begin + window, len(ids))
        with torch.no_grad():
            logits = model(torch.tensor([ids[begin:end]])).logits[0, :-1].double()
        logp = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(ids[begin + 1 : end])
        new = scored - begin
        nll -= logp[torch.arange(len(targets))[new:], targets[new:]].sum().item()
        scored, begin = end - 1, begin + window // 2
    return nll / scored


@pytest.mark.parametrize("window", [64, 16])
def test_sliding_window_perplexity_matches_a_direct_computation(
    model_with_tokenizer, tmp_path, window
):
    ids = token_ids(model_with_tokenizer, TEXT, limit=60)
    assert len(ids) == 60
    backend = registry.create("hf", model_with_tokenizer, {"dtype": "float32"}, 1, tmp_path)
    measured = perplexity(backend, ids, window)
    assert measured == pytest.approx(
        math.exp(direct_nll(model_with_tokenizer, ids, window)), rel=1e-5
    )
    assert 1 < measured < 300 * 2  # near uniform over the vocabulary for random weights


@pytest.mark.slow
def test_each_backend_reports_its_perplexity_against_hf(model_with_tokenizer, tmp_path):
    from whistle_stop.contract.jobspec import JobSpec
    from whistle_stop.worker.runner import run_job

    deltas = {}
    for backend, options in [
        ("hf", {"dtype": "float32"}),
        ("nanogpt", {"dtype": "float32", "kv_cache": True}),
        ("torch-int8", {"per_channel": False, "quantize_lm_head": True, "kv_cache": True}),
    ]:
        spec = JobSpec(
            model=str(model_with_tokenizer),
            backend=backend,
            label=backend,
            options=tuple(sorted(options.items())),
            context=8,
            generation=4,
            threads=1,
            warmups=0,
            repeats=1,
            min_duration_s=0,
            max_repeats=1,
            noise_threshold=0.05,
            fidelity_tokens=4,
            eval_text=str(model_with_tokenizer / "eval.txt"),
            eval_tokens=50,
            rerun_noisy=False,
            prompt_text=None,
            tokenizer="fast",
            seed=0,
        )
        payload = run_job(spec.to_dict(), cache_dir=tmp_path, worker_name="t")
        assert payload.status == "done", payload.error
        assert np.isfinite(payload.metrics.perplexity)
        deltas[backend] = payload.metrics.perplexity_delta
    assert deltas["hf"] == 0.0
    assert abs(deltas["nanogpt"]) < 1e-3
    assert deltas["torch-int8"] != 0.0


def test_eval_text_needs_a_tokenizer(tmp_path, model_with_tokenizer):
    from whistle_stop.orchestrator.sweep import SweepError, parse_sweep

    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(SweepError, match="perplexity needs a tokenizer"):
        parse_sweep(
            f"backends: [hf]\neval_text: {tmp_path / 't.txt'}", origin="s.yaml", default_name="s"
        )
    with pytest.raises(SweepError, match="no such file"):
        parse_sweep(
            f"backends: [hf]\nmodel: {model_with_tokenizer}\neval_text: nope.txt",
            origin="s.yaml",
            default_name="s",
        )


def test_a_text_prompt_times_tokenization_and_detokenization(model_with_tokenizer, tmp_path):
    from whistle_stop.orchestrator.sweep import parse_sweep
    from whistle_stop.worker.runner import run_job

    (tmp_path / "prompt.txt").write_text("the farm measures fast inference")
    sweep = parse_sweep(
        f"model: {model_with_tokenizer}\nbackends: [hf]\ncontext_sizes: [12]\ngeneration_lengths: [4]\n"
        f"threads: [1]\nrepeats: 2\nwarmups: 0\nfidelity_tokens: 0\nprompt: text\nprompt_text: {tmp_path / 'prompt.txt'}",
        origin="s.yaml",
        default_name="s",
    )
    [job] = sweep.jobs
    assert job.prompt_text == "the farm measures fast inference" and job.tokenizer == "fast"
    payload = run_job(job.to_dict(), cache_dir=tmp_path, worker_name="t")
    assert payload.status == "done", payload.error
    assert payload.metrics.tokenize_ms > 0 and payload.metrics.detokenize_ms > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("prompt: text", "prompt: text needs prompt_text"),
        ("prompt_text: hi", "prompt_text is set but prompt is 'ids'"),
    ],
)
def test_bad_text_prompts(model_with_tokenizer, extra, message):
    from whistle_stop.orchestrator.sweep import SweepError, parse_sweep

    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_sweep(
            f"model: {model_with_tokenizer}\nbackends: [hf]\n{extra}",
            origin="s.yaml",
            default_name="s",
        )


def test_a_text_prompt_needs_a_model_with_a_tokenizer():
    from whistle_stop.orchestrator.sweep import SweepError, parse_sweep

    with pytest.raises(SweepError, match="needs a tokenizer"):
        parse_sweep(
            "backends: [hf]\nprompt: text\nprompt_text: hi", origin="s.yaml", default_name="s"
        )


def test_the_slow_tokenizer_gives_the_fast_ones_ids(model_with_tokenizer):
    from transformers import AutoTokenizer

    from whistle_stop.worker.slow_tokenizer import SlowBPETokenizer

    fast = AutoTokenizer.from_pretrained(model_with_tokenizer)
    slow = SlowBPETokenizer(model_with_tokenizer)
    for text in (TEXT[:300], "Greedy  decoding, 42 times: isn't it?\n\nYes!", "unseen wörds ✓"):
        assert slow(text)["input_ids"] == fast(text)["input_ids"]
        assert slow.decode(slow(text)["input_ids"]) == text


def test_the_tokenizer_axis_runs_fast_and_slow(model_with_tokenizer, tmp_path):
    from whistle_stop.orchestrator.sweep import parse_sweep
    from whistle_stop.worker.runner import run_job

    sweep = parse_sweep(
        f"model: {model_with_tokenizer}\nbackends: [hf]\ncontext_sizes: [12]\ngeneration_lengths: [4]\n"
        "threads: [1]\nrepeats: 2\nwarmups: 0\nfidelity_tokens: 0\nprompt: text\n"
        "prompt_text: the farm measures fast inference\ntokenizers: [fast, slow]",
        origin="s.yaml",
        default_name="s",
    )
    assert sorted(job.tokenizer for job in sweep.jobs) == ["fast", "slow"]
    payloads = {
        job.tokenizer: run_job(job.to_dict(), cache_dir=tmp_path, worker_name="t")
        for job in sweep.jobs
    }
    assert all(p.status == "done" for p in payloads.values()), payloads
    assert payloads["fast"].metrics.tokens == payloads["slow"].metrics.tokens  # the same prompt ids
    assert all(p.metrics.tokenize_ms > 0 for p in payloads.values())
