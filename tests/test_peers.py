"""The llama.cpp peer's GGUF writer (benchmarks/llama_cpp_peer.py), when the optional
peers are installed (`pip install -e '.[peers]'`): a GGUF that llama.cpp loads and that
computes what transformers computes is what makes the peer benchmark a fair comparison."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp", reason="optional peer: pip install -e '.[peers]'")
pytest.importorskip("gguf", reason="optional peer: pip install -e '.[peers]'")

from backends import registry  # noqa: E402

# by path: benchmarks/ is scripts, not a package (and its backends.py would shadow ours)
_spec = importlib.util.spec_from_file_location(
    "llama_cpp_peer", Path(__file__).parents[1] / "benchmarks" / "llama_cpp_peer.py"
)
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)


@pytest.mark.slow
def test_llama_cpp_runs_our_checkpoint_as_transformers_does(tiny_model, tmp_path):
    hf = registry.create("hf", tiny_model, {"dtype": "float32"}, 1, tmp_path / "cache")
    prompt = [5, 9, 1, 3, 7, 11]
    ref_tokens = hf.generate(prompt, 12).tokens
    ref_logits = hf.teacher_forced_logits(prompt, ref_tokens)
    scale = np.abs(ref_logits).max()

    f32 = peer.LlamaCpp(peer.write_gguf(tiny_model, tmp_path / "f32.gguf"), threads=1, context=128)
    tokens, times = f32.generate(prompt, 12)
    assert tokens == ref_tokens and len(times) == 12
    logits = f32.teacher_forced_logits(prompt, ref_tokens)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=1e-4 * scale)

    q8_0 = peer.quantize_q8_0(tmp_path / "f32.gguf", tmp_path / "q8_0.gguf")
    assert q8_0.stat().st_size < (tmp_path / "f32.gguf").stat().st_size / 2
    quantized = peer.LlamaCpp(q8_0, threads=1, context=128).teacher_forced_logits(
        prompt, ref_tokens
    )
    error = np.abs(quantized - ref_logits).max() / scale
    assert 0 < error < 0.05  # quantized: close, and not bit-identical
