"""`onnx`: our GPT exported with past/present, run by ONNX Runtime in a greedy loop.

The present keys/values a step returns are fed back as the next step's past.
With `io_binding` (the default) they stay ORT values bound from output to input,
never converted to numpy in between; `io_binding: false` is the plain `run()`
loop, kept so the difference can be measured rather than assumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from backends.base import LoadReport, StepwiseBackend
from backends.onnx_export import onnx_artifact
from backends.weights import weights_digest

# bytes per weight: int4 is 4 bits plus one float32 scale per block of 32 weights
WEIGHT_BYTES = {"none": 4.0, "int8": 1.0, "int4": 0.5 + 4 / 32}


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the job's thread budget, like torch's
    options.inter_op_num_threads = 1  # a GPT step is one chain of ops: nothing to overlap
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxBackend(StepwiseBackend):
    def __init__(
        self, model_dir: Path, options: dict[str, Any], threads: int, cache_dir: Path
    ) -> None:
        artifact = onnx_artifact(
            model_dir, options, cache_dir, weights_digest(model_dir, cache_dir)
        )
        matmul_bytes = WEIGHT_BYTES[options.get("quantize", "none")]
        lm_head_bytes = matmul_bytes if options.get("quantize_lm_head") else 4.0
        self.session = ort.InferenceSession(
            str(artifact.path), session_options(threads), providers=["CPUExecutionProvider"]
        )
        extra = {"ort_intra_op_threads": self.session.get_session_options().intra_op_num_threads}
        if artifact.fused_ops is not None:
            extra["fused_ops"] = artifact.fused_ops
        self.load_report = LoadReport(
            artifact_built=artifact.built,
            artifact_build_s=artifact.build_s,
            artifact_bytes=artifact.bytes,
            matmul_bytes=matmul_bytes,
            lm_head_bytes=lm_head_bytes,
            extra=extra,
        )
        config = json.loads((model_dir / "config.json").read_text())
        head_size = config["n_embd"] // config["n_head"]
        self.empty_past = np.zeros(
            (config["n_layer"], 1, config["n_head"], 0, head_size), np.float32
        )
        self.io_binding = options.get("io_binding", True)
        self.past: tuple[Any, Any] | None = None

    def prefill(self, prompt: list[int]) -> np.ndarray:
        empty = ort.OrtValue.ortvalue_from_numpy(self.empty_past)
        return self._run(np.array([prompt], dtype=np.int64), empty, empty)

    def step(self, token: int) -> np.ndarray:
        return self._run(np.array([[token]], dtype=np.int64), *self.past)

    def _run(self, input_ids: np.ndarray, past_k, past_v) -> np.ndarray:
        if not self.io_binding:
            logits, present_k, present_v = self.session.run(
                None, {"input_ids": input_ids, "past_k": _numpy(past_k), "past_v": _numpy(past_v)}
            )
            self.past = (present_k, present_v)
            return logits[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_ortvalue_input("past_k", past_k)
        binding.bind_ortvalue_input("past_v", past_v)
        for name in ("logits", "present_k", "present_v"):
            binding.bind_output(name, "cpu")  # ORT allocates; we keep its values as they are
        self.session.run_with_iobinding(binding)
        logits, present_k, present_v = binding.get_outputs()
        self.past = (present_k, present_v)
        return logits.numpy()[0]


def _numpy(value) -> np.ndarray:
    return value.numpy() if isinstance(value, ort.OrtValue) else value
