"""`onnx`: our GPT exported with past/present, run by ONNX Runtime in a greedy loop.

`kv_cache: concat`: the present keys/values a step returns are fed back as the next
step's past. With `io_binding` (the default) they stay ORT values bound from output to
input, never converted to numpy in between; `io_binding: false` is the plain `run()`
loop, kept so the difference can be measured rather than assumed.

`kv_cache: in_place`: one buffer per layer for keys and one for values, sized to the
sequence, each bound as both the past input and the present output, so ONNX Runtime
writes each new token into it and nothing is copied (see backends/onnx_graph.py).

`kv_dtype: int8` (in_place): the buffers hold int8 keys and values, one scale per channel
calibrated at export; each decode step reads a quarter of a float32 cache's bytes. The
prompt runs on a float32-cache session, and the loop quantizes what it wrote.

`prefill_int8` (int4 + in_place): the prompt runs on an int8 copy of the graph, whose
kernels multiply matrices faster than the 4-bit ones, and decode on the int4 graph,
which reads the fewest bytes a token; both sessions bind the same cache buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from whistle_stop.backends.base import LoadReport, StepwiseBackend
from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.onnx_export import onnx_artifact
from whistle_stop.backends.options import BLOCK_SIZE, OnnxOptions
from whistle_stop.backends.weights import weights_digest


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # the job's thread budget, like torch's
    options.inter_op_num_threads = 1  # a GPT step is one chain of ops: nothing to overlap
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxBackend(StepwiseBackend):
    def __init__(
        self,
        model_dir: Path,
        options: OnnxOptions,
        threads: int,
        cache_dir: Path,
        tune: Callable[[ort.SessionOptions], None] | None = None,
    ) -> None:
        """`tune` edits the session options before the session is made (benchmarks of
        ONNX Runtime's settings use it; jobs never do)."""
        digest = weights_digest(model_dir, cache_dir)
        artifact = onnx_artifact(model_dir, options, cache_dir, digest)
        self.model_path = artifact.path
        matmul_bytes = options.weight_bytes()
        lm_head_bytes = matmul_bytes if options.quantize_lm_head else 4.0
        # A second session for the prompt, over the same cache: `prefill_int8` (int8 weights
        # multiply matrices faster), and an int8 cache (ONNX Runtime's kernel over it is slow
        # when many queries attend at once: 3-4x its float32 time over one layer's 512-token
        # prompt, farm bench gqa-cache), whose prompt runs with a float32 cache that the
        # loop then quantizes
        prefill_options, prefill_update = None, {}
        if options.prefill_int8:
            prefill_update |= {"quantize": "int8", "block_size": BLOCK_SIZE}
        if options.kv_dtype == "int8":
            prefill_update |= {"kv_dtype": "float32"}
        if prefill_update:
            prefill_options = options.model_copy(update=prefill_update)
        settings = session_options(threads)
        if prefill_options is not None:
            # two sessions, two pools of threads on the same cores: threads left spinning
            # after one session's run would fight the other's (time to first token 78 ms
            # against 40 ms with this; decode 2-3% slower)
            settings.add_session_config_entry("session.force_spinning_stop", "1")
        if tune is not None:
            tune(settings)
        self.session = ort.InferenceSession(
            str(artifact.path), settings, providers=["CPUExecutionProvider"]
        )
        extra = {"ort_intra_op_threads": self.session.get_session_options().intra_op_num_threads}
        if artifact.fused_ops is not None:
            extra["fused_ops"] = artifact.fused_ops
        if artifact.weight_ops is not None:
            extra["weight_ops"] = artifact.weight_ops  # e.g. MatMulNBits accuracy_level
        prefill_session, prefill_bytes = None, 0
        if prefill_options is not None:
            prefill_artifact = onnx_artifact(model_dir, prefill_options, cache_dir, digest)
            prefill_session = ort.InferenceSession(
                str(prefill_artifact.path), settings, providers=["CPUExecutionProvider"]
            )
            prefill_bytes = prefill_artifact.bytes
            extra["prefill_model"] = prefill_options.quantize
            extra["prefill_cache"] = prefill_options.kv_dtype
        self.load_report = LoadReport(
            artifact_built=artifact.built,
            artifact_build_s=artifact.build_s,
            artifact_bytes=artifact.bytes + prefill_bytes,
            matmul_bytes=matmul_bytes,
            lm_head_bytes=lm_head_bytes,
            kv_bytes=1.0 if options.kv_dtype == "int8" else 4.0,  # scales: per channel
            # the prompt's session has its own pool (threads - 1 workers beside the caller)
            extra_threads=threads - 1 if prefill_session is not None else 0,
            extra=extra,
        )
        config = ModelConfig.from_dir(model_dir)
        self.empty_past = np.zeros(
            (config.n_layer, 1, config.n_head, 0, config.head_size), np.float32
        )
        self.io_binding = options.io_binding
        self.past: tuple[Any, Any] | None = None
        in_place = options.kv_cache == "in_place"
        steps = np.load(artifact.kv_scales) if artifact.kv_scales is not None else None
        self.in_place = None
        if in_place:
            self.in_place = InPlaceCache(self.session, config, prefill_session, steps)

    def reserve(self, total_tokens: int) -> None:
        if self.in_place is not None:
            self.in_place.reserve(total_tokens)

    def prefill(self, prompt: list[int]) -> np.ndarray:
        if self.in_place is not None:
            return self.in_place.run(np.array([prompt], dtype=np.int64), start=True)
        empty = ort.OrtValue.ortvalue_from_numpy(self.empty_past)
        return self._run(np.array([prompt], dtype=np.int64), empty, empty)

    def step(self, token: int) -> np.ndarray:
        if self.in_place is not None:
            return self.in_place.run(np.array([[token]], dtype=np.int64))
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


class InPlaceCache:
    """The per-layer key/value buffers of an in-place graph, bound once as both past input
    and present output; each run binds only the new ids and where to write them.

    A second session of the same graph (other weights' precision) may run the prefill:
    its binding shares the buffers, so decode reads what the prefill wrote. When decode's
    cache is int8 and the prefill's float32 (`steps`: the int8 cache's calibrated steps),
    the prefill writes float buffers of its own, quantized into decode's after it runs."""

    def __init__(
        self,
        session: ort.InferenceSession,
        config: ModelConfig,
        prefill_session: ort.InferenceSession | None = None,
        steps: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        # without a prefill session both phases run `session`, through one binding
        self.sessions = {"decode": session, "prefill": prefill_session or session}
        self.block_size = config.n_positions
        self.heads, self.head_size = config.n_head, config.head_size
        cache_inputs = session.get_inputs()[2:]
        self.names = [i.name.removeprefix("past_") for i in cache_inputs]
        # float32, or int8 for a quantized cache (`kv_dtype`): the graph says which
        self.dtype = np.int8 if cache_inputs[0].type == "tensor(int8)" else np.float32
        prefill_input = self.sessions["prefill"].get_inputs()[2]
        self.float_prefill = self.dtype == np.int8 and prefill_input.type == "tensor(float)"
        if self.float_prefill:  # a step per channel, shaped to divide a (1, nh, T, hs) buffer
            shape = (1, self.heads, 1, self.head_size)
            self.steps = [steps[name[0]][int(name[2:])].reshape(shape) for name in self.names]
        self.capacity, self.length = 0, 0
        self.bindings: dict[str, ort.IOBinding] = {}

    def reserve(self, total_tokens: int) -> None:
        """Buffers of exactly this capacity: attention reads only the tokens written, so a
        larger buffer would cost memory, not time (a smaller one is grown, with one copy,
        if a run needs more)."""
        total_tokens = min(max(total_tokens, 2), self.block_size)
        if total_tokens != self.capacity:
            self._allocate(total_tokens, keep=0)

    def run(self, input_ids: np.ndarray, start: bool = False) -> np.ndarray:
        if start:
            self.length = 0
        needed = self.length + input_ids.shape[1]
        if needed > self.capacity:  # nobody reserved enough: grow, keeping what is written
            self._allocate(min(max(needed, 2 * self.capacity), self.block_size), self.length)
        phase = "prefill" if start else "decode"
        binding = self.bindings[phase]
        self.ids, self.write_index = input_ids, np.array([self.length], dtype=np.int64)
        binding.bind_cpu_input("input_ids", self.ids)  # ORT reads these arrays in place:
        binding.bind_cpu_input("write_index", self.write_index)  # keep them alive
        self.sessions[phase].run_with_iobinding(binding)
        if start and self.float_prefill:
            for cache, written, step in zip(
                self.buffers, self.float_buffers, self.steps, strict=True
            ):
                quantized = np.rint(written[:, :, :needed] / step)
                cache[:, :, :needed] = np.clip(quantized, -128, 127)
        self.length = needed
        # a copy: the binding reuses its logits buffer, and callers keep earlier rows
        return binding.get_outputs()[0].numpy()[0].copy()

    def _allocate(self, capacity: int, keep: int) -> None:
        old = self.buffers if self.bindings else None
        shape = (1, self.heads, capacity, self.head_size)
        self.buffers = [np.zeros(shape, self.dtype) for _ in self.names]
        if old is not None and keep:
            for new, previous in zip(self.buffers, old, strict=True):
                new[:, :, :keep] = previous[:, :, :keep]
        self.values = [ort.OrtValue.ortvalue_from_numpy(b) for b in self.buffers]  # shared memory
        decode, prefill = self.sessions["decode"], self.sessions["prefill"]
        decode_binding = self._bind(decode, self.values)
        prefill_binding = decode_binding
        if self.float_prefill:
            self.float_buffers = [np.zeros(shape, np.float32) for _ in self.names]
            self.float_values = [ort.OrtValue.ortvalue_from_numpy(b) for b in self.float_buffers]
            prefill_binding = self._bind(prefill, self.float_values)
        elif prefill is not decode:
            prefill_binding = self._bind(prefill, self.values)
        self.bindings = {"decode": decode_binding, "prefill": prefill_binding}
        self.capacity = capacity

    def _bind(self, session: ort.InferenceSession, values: list[ort.OrtValue]) -> ort.IOBinding:
        binding = session.io_binding()
        binding.bind_output("logits", "cpu")  # first: outputs come back in binding order
        for name, value in zip(self.names, values, strict=True):
            binding.bind_ortvalue_input(f"past_{name}", value)
            binding.bind_ortvalue_output(f"present_{name}", value)  # the same memory
        return binding
