"""`llama-cpp`: llama.cpp (through llama-cpp-python) on a GGUF file of the same weights.

    pip install -e '.[llama-cpp]'     # pip builds llama.cpp from source: a few minutes

The float32 GGUF is written from the checkpoint by backends/gguf_export.py and quantized
by llama.cpp's own quantizer (`quant`: f32, f16, q8_0, q4_0, q4_K_M); both are cached
artifacts (lock, write, rename). Greedy decoding is ours: one llama_decode per token,
argmax over its logits, a stamp per token. Teacher-forced logits come from one batched
evaluation of prompt + continuation in a second context that keeps every position's.
llama.cpp's system-info line (which SIMD paths its kernels were built with) is recorded.
"""

from __future__ import annotations

import ctypes
import time
from importlib import metadata
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import Llama

from whistle_stop.artifacts import cached_artifact, source_digest
from whistle_stop.backends.base import Generation, LoadReport
from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.gguf_export import quantize, write_gguf
from whistle_stop.backends.llamacpp_build import refuse_amx_under_hypervisor
from whistle_stop.backends.options import LlamaCppOptions
from whistle_stop.backends.weights import weights_digest
from whistle_stop.contract.cpuinfo import read_cpuinfo

# bytes per weight of each quantization (blocks of 32: q8_0 = 32 int8 + an fp16 scale;
# q4_0 = 32 nibbles + a scale; q4_K_M mixes 4.5-bit q4_K with 6.56-bit q6_K for some
# tensors, the output among them)
MATMUL_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_K_M": 4.5 / 8}
HEAD_BYTES = MATMUL_BYTES | {"q4_K_M": 6.5625 / 8}


class LlamaCppBackend:
    Options = LlamaCppOptions

    def __init__(
        self, model_dir: Path, options: LlamaCppOptions, threads: int, cache_dir: Path
    ) -> None:
        system_info = llama_cpp.llama_print_system_info().decode().strip()
        refuse_amx_under_hypervisor(system_info, read_cpuinfo())
        version = metadata.version("llama_cpp_python")
        parts = [
            weights_digest(model_dir, cache_dir),
            version,
            source_digest("whistle_stop.backends.gguf_export"),
        ]
        f32 = cached_artifact(
            cache_dir, "gguf-f32", parts, lambda out: write_gguf(model_dir, out / "model.gguf")
        )
        built, build_s, path = f32.built, f32.build_s or 0.0, f32.path / "model.gguf"
        if options.quant != "f32":
            quantized = cached_artifact(
                cache_dir,
                f"gguf-{options.quant}",
                [*parts, options.quant],
                lambda out: quantize(path, out / "model.gguf", options.quant, threads),
            )
            built, build_s = built or quantized.built, build_s + (quantized.build_s or 0.0)
            path = quantized.path / "model.gguf"
        self.path, self.threads = path, threads
        self.positions = ModelConfig.from_dir(model_dir).n_positions
        self.flash_attn = options.flash_attn
        self.llm = self._context(logits_all=False)
        self.vocab = self.llm.n_vocab()
        self.forced: Llama | None = None  # keeps every position's logits, made on demand
        self._logits_ith = llama_cpp.llama_get_logits_ith  # looked up once, not per token
        self.load_report = LoadReport(
            artifact_built=built,
            artifact_build_s=build_s if built else None,
            artifact_bytes=path.stat().st_size,
            matmul_bytes=MATMUL_BYTES[options.quant],
            lm_head_bytes=HEAD_BYTES[options.quant],
            kv_bytes=2.0,  # llama.cpp's default cache type: f16 keys and values
            extra={
                "engine": f"llama.cpp (llama-cpp-python {version})",
                "quant": options.quant,
                "flash_attn": options.flash_attn,
                "n_threads": threads,
                "system_info": system_info,
            },
        )

    def _context(self, *, logits_all: bool) -> Llama:
        return Llama(
            str(self.path),
            n_ctx=self.positions,
            n_batch=self.positions,
            n_threads=self.threads,
            n_threads_batch=self.threads,
            flash_attn=self.flash_attn,
            logits_all=logits_all,
            verbose=False,
        )

    def _last_logits(self) -> np.ndarray:
        row = self._logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(
            ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), shape=(self.vocab,)
        )

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        self.llm.reset()
        self.llm.eval(prompt)
        tokens, times = [], []
        for _ in range(new_tokens):
            token = int(np.argmax(self._last_logits()))
            tokens.append(token)
            times.append(time.perf_counter())
            if len(tokens) < new_tokens:
                self.llm.eval([token])
        return Generation(tokens=tokens, token_times=times)

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        if self.forced is None:
            self.forced = self._context(logits_all=True)
        self.forced.reset()
        self.forced.eval(prompt + continuation[:-1])
        rows = self.forced.scores[len(prompt) - 1 : len(prompt) + len(continuation) - 1]
        return np.array(rows, dtype=np.float32)
