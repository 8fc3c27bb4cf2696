"""How large each input channel of every linear layer gets, recorded by the float32 reference.

A few channels far larger than the rest (LLM.int8's outlier features, GPT-2's "rogue
dimensions") are what quantising activations with one scale per tensor fails on: the
scale that fits the outliers leaves the other channels a handful of levels. Per-block
scales (llama.cpp's q8_0 activations, the native engine's) and weight-only schemes are
far less exposed. The figure per layer is its largest channel maximum over the median
channel maximum, |x| taken over every position the reference scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ChannelMaxima:
    """Forward pre-hooks on every linear layer of a torch model, each keeping the running
    per-channel max |input|; `arrays()` gives them by a short layer name (h3.mlp.c_fc)."""

    def __init__(self, model) -> None:
        import torch
        from transformers.pytorch_utils import Conv1D

        self.layers = {
            _short(name): module
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | Conv1D)
        }
        self.maxima: dict[str, Any] = {}
        self.handles: list = []

    def __enter__(self) -> ChannelMaxima:
        for name, module in self.layers.items():
            self.handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, name: str):
        import torch

        def record(_module, args) -> None:
            x = args[0].detach().float()
            seen = x.abs().amax(dim=tuple(range(x.dim() - 1)))
            before = self.maxima.get(name)
            self.maxima[name] = seen if before is None else torch.maximum(before, seen)

        return record

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"max:{name}": value.numpy() for name, value in self.maxima.items()}


def summarize(recorded: list[dict[str, np.ndarray]]) -> dict[str, Any] | None:
    """Per layer, max over median of the channel maxima pooled over prompts; the worst layer
    and its largest channels (the same indices in layer after layer is the residual stream's
    outlier dimension showing through each LayerNorm)."""
    pooled: dict[str, np.ndarray] = {}
    for arrays in recorded:
        for key, value in arrays.items():
            name = key.removeprefix("max:")
            pooled[name] = value if name not in pooled else np.maximum(pooled[name], value)
    if not pooled:
        return None
    ratios = {name: float(v.max() / max(float(np.median(v)), 1e-12)) for name, v in pooled.items()}
    worst = max(ratios, key=ratios.get)
    return {
        "ratio": {name: round(r, 2) for name, r in ratios.items()},
        "top_channels": {name: np.argsort(v)[::-1][:3].tolist() for name, v in pooled.items()},
        "worst": worst,
        "worst_ratio": round(ratios[worst], 2),
        "median_ratio": round(float(np.median(list(ratios.values()))), 2),
    }


def _short(name: str) -> str:
    return name.removeprefix("transformer.").replace("h.", "h", 1) if name else name
