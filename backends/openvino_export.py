"""Our GPT as a stateful OpenVINO model, the form OpenVINO GenAI's LLMPipeline runs.

Why our own module through `openvino.convert_model` and not optimum-intel's exporter:
optimum-intel pins transformers below 5.6 while the rest of the farm runs 5.x's newest,
so installing it would silently change the reference every backend is measured against.
The module below is the nanoGPT one (backends/nanogpt_model.py) with its cache made
explicit per layer, exported with torch.export (dynamic token and past axes), then given
what GenAI expects of a stateful LLM (src/docs/HOW_IT_WORKS.md in openvino.genai):

- inputs `input_ids`, `attention_mask`, `position_ids`, `beam_idx`; output `logits`;
- per layer, the past keys and values as states: `beam_idx` gathers them (axis 0), the new
  ones are concatenated on axis 2 and the result is both attended over and stored
  (`apply_make_stateful_transformation`); the CPU plugin fuses that pattern with
  ScaledDotProductAttention into one kernel that appends to the state in place.

Logits are the last position's only, (B, 1, vocab): GenAI takes the last row, and a
prefill of 512 tokens would otherwise run the 154 MB head 512 times.
NNCF compresses the weights of the converted model (int8 per channel; int4 in groups),
which is what optimum-intel's `--weight-format` does too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from whistle_stop.backends.nanogpt_model import GPT


class _LayerCache:
    """Past keys/values per layer in, past + new out; the causal mask from positions.

    The mask is built from tensors (query positions, the attention mask's length), never
    from Python ints, so one exported graph serves every prompt and past length."""

    exporting = True  # CausalSelfAttention: always use the explicit mask

    def __init__(self, past, attention_mask, position_ids):
        self.past_k, self.past_v = past[0::2], past[1::2]  # k.0, v.0, k.1, ...
        self.length = 0  # unused on the exporting path
        keys = torch.arange(attention_mask.shape[1]).unsqueeze(0)  # (1, total)
        causal = keys <= position_ids[0].unsqueeze(1)  # (T, total)
        self._mask = causal & attention_mask[0].bool().unsqueeze(0)
        self.present: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        k = torch.cat([self.past_k[layer], k], dim=2)
        v = torch.cat([self.past_v[layer], v], dim=2)
        self.present += [k, v]
        return k, v

    def mask(self, new: int, total: int) -> torch.Tensor:
        return self._mask

    def advance(self, tokens: int) -> None:
        pass


class StatefulGraph(torch.nn.Module):
    """(input_ids, attention_mask, position_ids, [k.0, v.0, k.1, ...]) ->
    (logits (B, 1, vocab), present k.0, v.0, ...)."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids, attention_mask, position_ids, past):
        transformer = self.gpt.transformer
        cache = _LayerCache(past, attention_mask, position_ids)
        x = transformer.wte(input_ids) + transformer.wpe(position_ids)
        for layer, block in enumerate(transformer.h):
            x = block(x, layer, cache)
        hidden = transformer.ln_f(x[:, -1:, :])
        return F.linear(hidden, transformer.wte.weight), *cache.present


def convert(
    model_dir: Path, model_file: Path, weights: str, group_size: int, all_layers: bool
) -> None:
    """Write `model_file` (an .xml, + .bin) and, beside it, config.json and
    generation_config.json."""
    out = model_file.parent
    import openvino as ov

    from whistle_stop.backends.nanogpt import load_gpt

    gpt = load_gpt(model_dir)
    config = gpt.config
    hs, layers = config.n_embd // config.n_head, config.n_layer
    # DYNAMIC, not named ranges: export specializes 0 and 1, yet GenAI starts from an empty
    # state (past length 0) and decodes one token at a time; the converted model keeps
    # every such axis dynamic (checked by running it at both)
    new = past_len = total = torch.export.Dim.DYNAMIC
    ids = torch.zeros(1, 4, dtype=torch.long)
    past = [torch.zeros(1, config.n_head, 3, hs) for _ in range(2 * layers)]
    args = (ids, torch.ones(1, 7, dtype=torch.long), torch.arange(3, 7).unsqueeze(0), past)
    shapes = ({1: new}, {1: total}, {1: new}, [{2: past_len}] * len(past))
    with torch.no_grad():
        program = torch.export.export(StatefulGraph(gpt).eval(), args, dynamic_shapes=shapes)
    model = ov.convert_model(program)
    _name_ports(model, layers)
    _make_stateful(model, layers)
    if weights != "f32":
        model = _compress(model, weights, group_size, all_layers)
    ov.save_model(model, model_file, compress_to_fp16=False)
    (out / "config.json").write_text((model_dir / "config.json").read_text())
    # no end token: the farm asks for exactly N tokens (GenAI would also read eos from here)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": -1}))


def cache_names(layers: int) -> list[tuple[str, str]]:
    """(past input, present output) per layer and kind, in the graph's port order."""
    return [
        (f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}")
        for layer in range(layers)
        for kind in ("key", "value")
    ]


def _name_ports(model, layers: int) -> None:
    names = cache_names(layers)
    inputs = ["input_ids", "attention_mask", "position_ids", *(p for p, _ in names)]
    outputs = ["logits", *(p for _, p in names)]
    for port, name in zip(model.inputs, inputs, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, outputs, strict=True):
        port.get_tensor().set_names({name})


def _make_stateful(model, layers: int) -> None:
    """Add `beam_idx` and gather every past tensor by it (what GenAI feeds and what the CPU
    plugin's fused attention pattern expects), then turn past/present pairs into states."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam_idx = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam_idx])
    axis = ops.constant(0, ov.Type.i64)
    for past, _ in cache_names(layers):
        port = model.input(past)
        consumers = port.get_target_inputs()
        gathered = ops.gather(port, beam_idx, axis)
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, dict(cache_names(layers)))
    # every state starts empty, (1, heads, 0, head size): the CPU plugin will not compile a
    # ReadValue without an initial value (the export fixed the batch at 1, as the farm runs)
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            shape = [
                0 if dim.is_dynamic else dim.get_length() for dim in op.get_output_partial_shape(0)
            ]
            op.set_arguments([ops.constant(np.zeros(shape, np.float32))])
    model.validate_nodes_and_infer_types()


def _compress(model, weights: str, group_size: int, all_layers: bool):
    import nncf

    if weights == "int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return nncf.compress_weights(
        model,
        mode=nncf.CompressWeightsMode.INT4_SYM,
        ratio=1.0,
        group_size=group_size,
        all_layers=all_layers,
    )
