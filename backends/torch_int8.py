"""`torch-int8`: PyTorch dynamic int8 quantization of the model's linear layers.

transformers' GPT-2 uses `Conv1D`, not `nn.Linear`, so `quantize_dynamic` would
find nothing to quantize there and silently measure float32. We quantize our
nanoGPT module instead, whose projections are `nn.Linear`, and check that every
one of them was replaced.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from whistle_stop.backends.base import LoadReport
from whistle_stop.backends.nanogpt import NanoGPTBackend
from whistle_stop.backends.options import NanoGPTOptions, TorchInt8Options


def quantize_linears(model: torch.nn.Module, *, per_channel: bool, lm_head: bool):
    """Replace nn.Linear modules by dynamically quantized int8 ones; return the count."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    names = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and (lm_head or name != "lm_head")
    }
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {name: qconfig for name in names}, dtype=torch.qint8, inplace=True)
    quantized = sum(
        "quantized.dynamic" in type(module).__module__  # torch.ao.nn.quantized.dynamic.Linear
        for name, module in model.named_modules()
        if name in names
    )
    if quantized != len(names):
        raise RuntimeError(f"only {quantized} of {len(names)} linear layers were quantized")
    return quantized


class TorchInt8Backend(NanoGPTBackend):
    def __init__(
        self, model_dir: Path, options: TorchInt8Options, threads: int, cache_dir: Path
    ) -> None:
        float_options = NanoGPTOptions(kv_cache=options.kv_cache)
        super().__init__(model_dir, float_options, threads, cache_dir)
        count = quantize_linears(
            self.model, per_channel=options.per_channel, lm_head=options.quantize_lm_head
        )
        self.load_report = LoadReport(
            matmul_bytes=1.0,
            lm_head_bytes=1.0 if options.quantize_lm_head else 4.0,
            extra={"quantized_linears": count},
        )
