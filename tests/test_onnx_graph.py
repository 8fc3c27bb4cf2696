"""The modules handed to the ONNX exporter, run eagerly in PyTorch: both cache forms
must compute what the plain model computes, step after step, before any export."""

from __future__ import annotations

import torch

from whistle_stop.backends.nanogpt_model import GPT, GPTConfig
from whistle_stop.backends.onnx_graph import ConcatGraph, InPlaceGraph, kv_scales

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


@torch.no_grad()
def test_an_int8_cache_stores_each_channel_in_calibrated_steps():
    """Keys and values go into int8 buffers as round(x / step), with one step per layer
    and channel taken from the float model's largest |x| on calibration prompts; the
    logits stay close to the float model's and pick the same tokens."""
    gpt = _gpt()
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randint(CONFIG.vocab_size, (2, CONFIG.block_size), generator=generator)
    k_step, v_step = kv_scales(gpt, calibration.tolist())
    assert k_step.shape == v_step.shape == (CONFIG.n_layer, CONFIG.n_embd)
    graph = InPlaceGraph(gpt, head="gemm", kv_scales=(k_step, v_step))
    hs, capacity = CONFIG.n_embd // CONFIG.n_head, 12
    shape = (1, CONFIG.n_head, capacity, hs)
    past = [torch.zeros(shape, dtype=torch.int8) for _ in range(2 * CONFIG.n_layer)]
    written, rows = 0, []
    for ids in [PROMPT, *([t] for t in STEPS)]:
        logits, *past = graph(torch.tensor([ids]), torch.tensor([written]), past)
        written += len(ids)
        rows.append(logits[0])
    assert all(buffer.dtype == torch.int8 for buffer in past)
    # the first layer's keys, recomputed in float and divided by the steps, are what it holds
    x = gpt.transformer.wte(torch.tensor([PROMPT])) + gpt.transformer.wpe(torch.arange(5))
    keys = gpt.transformer.h[0].attn.c_attn(gpt.transformer.h[0].ln_1(x))[0, :, CONFIG.n_embd :]
    expected = torch.round(keys[:, : CONFIG.n_embd] / k_step[0]).clamp(-128, 127)
    stored = past[0][0].transpose(0, 1)[: len(PROMPT)].reshape(len(PROMPT), -1)
    torch.testing.assert_close(stored.float(), expected, rtol=0, atol=1)
    assert stored.abs().max() > 32  # the steps use the range, not a sliver of it
    reference = torch.stack(_reference(gpt))
    rows = torch.stack(rows)
    assert (rows.argmax(-1) == reference.argmax(-1)).all()
    error = (rows - reference).abs().max() / reference.abs().max()
    assert 0 < error < 0.05, error
