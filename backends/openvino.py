"""`openvino`: OpenVINO on our GPT converted to a stateful model, weights compressed by NNCF.

    pip install -e '.[openvino]'

The model is converted once per weight format and cached (backends/openvino_export.py:
why not optimum-intel, and what GenAI needs of the graph). Two ways to drive it:

- `runner: genai` (default): OpenVINO GenAI's C++ `LLMPipeline`, the way OpenVINO tells
  users to run an LLM. Its stateful SDPA backend is forced (the default paged-attention
  backend caches prompt prefixes, so a repeated prompt would skip its prefill); token ids
  go in, no tokenizer. A streamer callback stamps each token as the C++ loop hands it over.
- `runner: python`: our greedy loop over the compiled model, one `infer` per token.

Both compile with the same properties. Teacher-forced logits always come from the compiled
model fed one token at a time (GenAI returns no logits); for `genai` that model is
compiled after the timed region, on demand. The CPU plugin's inference precision is
forced (`f32` or `bf16`: left alone it picks bf16 on CPUs that have it) and recorded with
the KV cache's precision (u8 unless asked: the plugin's default) and what the compiled
graph contains (no Concat left: the fused KV-cache attention ran).
"""

from __future__ import annotations

import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_genai

from whistle_stop.artifacts import cached_artifact, dir_bytes, source_digest
from whistle_stop.backends.base import Generation, LoadReport, StepwiseBackend
from whistle_stop.backends.options import OpenVINOOptions
from whistle_stop.backends.weights import weights_digest

MODEL_FILE = "openvino_model.xml"  # what GenAI's LLMPipeline looks for in a directory


def _convert(*args) -> None:
    from whistle_stop.backends.openvino_export import convert  # torch: imported only to build

    convert(*args)


def weight_bytes(options: OpenVINOOptions) -> tuple[float, float]:
    """Bytes per weight a decode step reads (projections, head): NNCF's int8 has a scale and
    a zero point per output channel (negligible); int4 adds an fp16 scale per group, and
    keeps the embedding/head in int8 unless all_layers. Float weights are converted to the
    inference precision when compiled."""
    if options.weights == "int8":
        return 1.0, 1.0
    if options.weights == "int4":
        group = options.group_size if options.group_size > 0 else 768  # per channel: one row
        int4 = 0.5 + 2 / group
        return int4, int4 if options.all_layers else 1.0
    width = 4.0 if options.precision == "f32" else 2.0
    return width, width


class OpenVINOBackend(StepwiseBackend):
    Options = OpenVINOOptions

    def __init__(
        self, model_dir: Path, options: OpenVINOOptions, threads: int, cache_dir: Path
    ) -> None:
        self.core = ov.Core()
        capabilities = self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if options.precision == "bf16" and "BF16" not in capabilities:
            # the plugin would quietly run f32 instead: the label would lie
            raise RuntimeError(
                f"this CPU has no bf16 path in OpenVINO (it has {', '.join(capabilities)})"
            )
        version = ov.get_version()
        parts = [
            weights_digest(model_dir, cache_dir),
            version,
            metadata.version("nncf"),
            options.weights,
            options.group_size,
            options.all_layers,
            source_digest(
                "whistle_stop.backends.openvino_export", "whistle_stop.backends.nanogpt_model"
            ),
        ]
        artifact = cached_artifact(
            cache_dir,
            f"openvino-{options.weights}",
            parts,
            lambda out: _convert(
                model_dir, out / MODEL_FILE, options.weights, options.group_size, options.all_layers
            ),
        )
        self.path = artifact.path
        # latency: one stream, all `threads` on one request (the plugin's own default on
        # CPU, stated so a changed default cannot change the figures)
        self.properties = {
            "INFERENCE_PRECISION_HINT": options.precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if options.kv_cache != "default":
            self.properties["KV_CACHE_PRECISION"] = options.kv_cache
        self.request = None
        self.pipeline = None
        extra = {
            "engine": f"openvino {version}",
            "runner": options.runner,
            "weights": options.weights,
            "properties": self.properties,
            "kv_cache_precision": self.properties.get("KV_CACHE_PRECISION")
            or self.core.get_property("CPU", "KV_CACHE_PRECISION").to_string(),
            "cpu_capabilities": capabilities,
        }
        clock = time.perf_counter()
        if options.runner == "genai":
            self.pipeline = openvino_genai.LLMPipeline(
                str(self.path), "CPU", ATTENTION_BACKEND="SDPA", **self.properties
            )
            extra["engine"] += f", openvino_genai {openvino_genai.__version__}"
            extra["attention_backend"] = "SDPA (stateful; no prefix cache)"
        else:
            extra.update(self._compile())
        matmul, head = weight_bytes(options)
        self.load_report = LoadReport(
            artifact_built=artifact.built,
            artifact_build_s=artifact.build_s,
            artifact_bytes=dir_bytes(artifact.path),
            compile_s=time.perf_counter() - clock,
            matmul_bytes=matmul,
            lm_head_bytes=head,
            extra=extra,
        )

    def _compile(self) -> dict:
        """Compile for the Python loop; what the plugin made of the graph, for the record."""
        compiled = self.core.compile_model(self.path / MODEL_FILE, "CPU", self.properties)
        self.request = compiled.create_infer_request()
        kinds = Counter(
            op.get_rt_info()["layerType"].astype(str)
            for op in compiled.get_runtime_model().get_ops()
        )
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        return {
            "inference_precision": precision.to_string(),
            "runtime_ops": dict(kinds.most_common(12)),
        }

    # -- the Python loop (and teacher forcing for both runners) --------------------------

    def prefill(self, prompt: list[int]):
        if self.request is None:
            self._compile()
        self.request.reset_state()
        self.total = len(prompt)
        return self._infer(np.asarray([prompt], dtype=np.int64))

    def step(self, token: int):
        self.total += 1
        return self._infer(np.asarray([[token]], dtype=np.int64))

    def _infer(self, ids: np.ndarray):
        new = ids.shape[1]
        self.request.infer(
            {
                "input_ids": ids,
                "attention_mask": np.ones((1, self.total), dtype=np.int64),
                "position_ids": np.arange(self.total - new, self.total, dtype=np.int64)[None],
                "beam_idx": np.zeros(1, dtype=np.int32),
            }
        )
        # a copy: the output tensor is overwritten by the next infer (200 KB, ~20 us)
        return self.request.get_tensor("logits").data[0, -1].copy()

    # -- GenAI ---------------------------------------------------------------------------

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        if self.pipeline is None:
            return super().generate(prompt, new_tokens)
        config = self.pipeline.get_generation_config()
        config.max_new_tokens = config.min_new_tokens = new_tokens
        config.ignore_eos, config.do_sample = True, False
        stamps = _Stamps()
        self.pipeline.generate(ov.Tensor(np.asarray([prompt], dtype=np.int64)), config, stamps)
        if stamps.failed:
            raise RuntimeError(f"GenAI's streamer saw {stamps.failed}")
        return Generation(tokens=stamps.tokens, token_times=stamps.times)


class _Stamps(openvino_genai.StreamerBase):
    """Called by GenAI's C++ loop with each new token id: stamped on arrival."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[int] = []
        self.times: list[float] = []
        self.failed: str | None = None

    def write(self, token):
        now = time.perf_counter()
        ids = token if isinstance(token, list) else [token]
        if len(ids) != 1:  # several at once would share one stamp: refuse to time them
            self.failed = f"{len(ids)} tokens in one callback"
        self.tokens += ids
        self.times += [now] * len(ids)
        return openvino_genai.StreamingStatus.RUNNING

    def end(self) -> None:
        pass
