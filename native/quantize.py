"""Block quantization of weight rows into the layout native/gpt2.cc reads.

A [N, K] matrix is N output rows over K inputs; every `block` consecutive inputs of a row
share one float32 scale. 8 bits: q = round(w / s) in [-127, 127], s = max|w| / 127.
32 bits: the float32 weights as they are, 8 to a 32-byte chunk, no scales.
4 bits: q = clamp(round(w / s), -8, 7) + 8 stored unsigned, s the block's scale with the
least squared error among candidates around llama.cpp q4_0's (the block's largest-
magnitude weight / -8), each refined by least squares for its q (as llama.cpp's newer
quants search): never more error than q4_0's rule in a block, and less overall (tests/
test_native.py holds Gaussian blocks of 128 under 95% of it). For each 64
inputs, byte j holds input j in its low nibble and input j + 32 in its high one, so one
32-byte load and two masks give the kernel 64 weights in input order.

`grouped` then lays rows out in fours, chunk by chunk, as the engine reads them: its
kernel computes four outputs at once from one sequential stream.
"""

from __future__ import annotations

import numpy as np

BITS = (4, 8, 32)


def quantize_rows(weight: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(data, scales): uint8 [N, K/2] (4 bits) or int8 [N, K] (8 bits), float32 [N, K/block];
    32 bits: the float32 weights as bytes [N, 4K], and no scales [N, 0]."""
    rows, cols = weight.shape
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")
    if cols % 64 or cols % block or block % 32:
        raise ValueError(f"{cols} inputs do not split into blocks of {block} and chunks of 64")
    if bits == 32:
        floats = np.ascontiguousarray(weight, dtype=np.float32)
        return floats.view(np.uint8), np.zeros((rows, 0), np.float32)
    blocks = weight.astype(np.float32).reshape(rows, cols // block, block)
    if bits == 8:
        scales = np.abs(blocks).max(axis=2) / 127.0
        q = np.clip(np.rint(blocks / _nonzero(scales)[..., None]), -127, 127).astype(np.int8)
        return q.reshape(rows, cols), scales.astype(np.float32)
    q, scales = _searched_q4(blocks)
    q = (q + 8).astype(np.uint8)
    q = q.reshape(rows, cols // 64, 2, 32)  # inputs j and j + 32 of each 64 share a byte
    packed = q[:, :, 0, :] | (q[:, :, 1, :] << 4)
    return np.ascontiguousarray(packed.reshape(rows, cols // 2)), scales.astype(np.float32)


SEARCH = np.linspace(0.75, 1.1, 15)  # multiples of q4_0's scale tried


CHUNK_WEIGHTS = 1 << 18  # weights searched at once: the temporaries stay in the caches


def _searched_q4(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q in [-8, 7], scales) for [rows, blocks, block] weights, block by block the
    candidate with the least squared error (q4_0's own rule among them), a few rows at a
    time: sixteen candidates over a whole matrix at once stream it from memory ~50 times
    (38 s for GPT-2 small on a 2-core EPYC; in chunks, a few seconds)."""
    rows = blocks.shape[0]
    step = max(1, CHUNK_WEIGHTS // (blocks.shape[1] * blocks.shape[2]))
    q = np.empty(blocks.shape, np.float32)
    scales = np.empty(blocks.shape[:2], np.float32)
    for start in range(0, rows, step):
        q[start : start + step], scales[start : start + step] = _search(
            blocks[start : start + step]
        )
    return q, scales


def _search(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    index = np.abs(blocks).argmax(axis=2)[..., None]
    base = np.take_along_axis(blocks, index, axis=2)[..., 0] / -8.0
    best_error = np.full(base.shape, np.inf, np.float32)
    best_scale = base.copy()
    for factor in [1.0, *SEARCH]:
        scale = base * factor
        q = np.clip(np.rint(blocks / _nonzero(scale)[..., None]), -8, 7)
        if factor != 1.0:  # the least-squares scale for these q, then q for that scale
            scale = (q * blocks).sum(axis=2) / np.maximum((q * q).sum(axis=2), 1e-30)
            q = np.clip(np.rint(blocks / _nonzero(scale)[..., None]), -8, 7)
        error = ((q * scale[..., None] - blocks) ** 2).sum(axis=2)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale = np.where(better, scale, best_scale)
    q = np.clip(np.rint(blocks / _nonzero(best_scale)[..., None]), -8, 7)
    return q, best_scale.astype(np.float32)


def _nonzero(scale: np.ndarray) -> np.ndarray:
    return np.where(scale != 0, scale, 1.0)


def dequantize_rows(data: np.ndarray, scales: np.ndarray, bits: int, block: int) -> np.ndarray:
    """The float32 [N, K] matrix the quantized rows stand for (tests, fidelity checks)."""
    rows = data.shape[0]
    if bits == 32:
        return np.ascontiguousarray(data).view(np.float32).copy()
    if bits == 8:
        q = data.astype(np.float32)
    else:
        chunks = data.reshape(rows, -1, 32)
        q = np.stack([chunks & 0x0F, chunks >> 4], axis=2).reshape(rows, -1).astype(np.float32) - 8
    cols = q.shape[1]
    return (q.reshape(rows, cols // block, block) * scales[..., None]).reshape(rows, cols)


GROUP = 4


def grouped(data: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`quantize_rows`' output in the engine's order: rows padded with zeros to a multiple
    of four, then [N/4][chunk][4 rows][32 bytes] and scales [N/4][block][4]."""
    rows = data.shape[0]
    pad = -rows % GROUP
    if pad:
        data = np.concatenate([data, np.zeros((pad, data.shape[1]), data.dtype)])
        scales = np.concatenate([scales, np.zeros((pad, scales.shape[1]), scales.dtype)])
    groups = data.shape[0] // GROUP
    data = data.reshape(groups, GROUP, -1, 32).transpose(0, 2, 1, 3)
    scales = scales.reshape(groups, GROUP, scales.shape[1]).transpose(0, 2, 1)
    return np.ascontiguousarray(data).reshape(groups * GROUP, -1), np.ascontiguousarray(scales)
