"""The modules handed to the ONNX exporter, run eagerly in PyTorch: both cache forms
must compute what the plain model computes, step after step, before any export."""

from __future__ import annotations

import torch

from backends.nanogpt_model import GPT, GPTConfig
from backends.onnx_graph import ConcatGraph, InPlaceGraph

CONFIG = GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=16)
PROMPT, STEPS = [3, 14, 15, 9, 2], [6, 5, 35]


def _reference(gpt: GPT) -> list[torch.Tensor]:
    """Logits after the prompt, then after each step, by re-running the whole sequence."""
    sequence, rows = list(PROMPT), []
    for token in [None, *STEPS]:
        if token is not None:
            sequence.append(token)
        rows.append(gpt(torch.tensor([sequence]))[0])
    return rows


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG).eval()


@torch.no_grad()
def test_the_concat_graph_steps_like_the_model():
    gpt = _gpt()
    graph = ConcatGraph(gpt, head="matmul")
    hs = CONFIG.n_embd // CONFIG.n_head
    past = torch.zeros(CONFIG.n_layer, 1, CONFIG.n_head, 0, hs)
    past_k, past_v, rows = past, past.clone(), []
    for ids in [PROMPT, *([t] for t in STEPS)]:
        logits, past_k, past_v = graph(torch.tensor([ids]), past_k, past_v)
        rows.append(logits[0])
    torch.testing.assert_close(torch.stack(rows), torch.stack(_reference(gpt)))


@torch.no_grad()
def test_the_in_place_graph_writes_its_buffers_and_steps_like_the_model():
    gpt = _gpt()
    graph = InPlaceGraph(gpt, head="gemm")
    hs, capacity = CONFIG.n_embd // CONFIG.n_head, 12  # room to spare: it must stay unread
    past = [torch.zeros(1, CONFIG.n_head, capacity, hs) for _ in range(2 * CONFIG.n_layer)]
    written, rows = 0, []
    for ids in [PROMPT, *([t] for t in STEPS)]:
        logits, *past = graph(torch.tensor([ids]), torch.tensor([written]), past)
        written += len(ids)
        rows.append(logits[0])
        for buffer in past:
            assert buffer[:, :, written - 1].any() and not buffer[:, :, written:].any()
    torch.testing.assert_close(torch.stack(rows), torch.stack(_reference(gpt)))
