"""`native`: whistle-stop's own GPT-2 engine (native/gpt2.cc), compiled for this CPU.

Weights are block-quantized once per model, bits and block (an artifact of .npy files, read
into memory at load: anonymous memory gets huge pages, a mapped file's page cache does not;
mapped, a 4-bit step took 9.0 ms against 7.7 in one comparison here). The KV cache lives in
the engine, and each prefill or decode step is one call into it: no graph of hundreds of
ops, no Python between layers. A prompt runs its own kernel, several tokens per weight
vector loaded (`group_tile` in native/gpt2.cc).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from whistle_stop.artifacts import cached_artifact, dir_bytes, source_digest
from whistle_stop.backends.base import LoadReport, StepwiseBackend
from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.options import NativeOptions
from whistle_stop.backends.weights import weights_digest

LAYER_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_FLOAT = ctypes.POINTER(ctypes.c_float)


def _state(model_dir: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by name, without the `transformer.` prefix a
    GPT2LMHeadModel saves (the hub's own gpt2 files have none)."""
    from safetensors.numpy import load_file

    state = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        for name, tensor in load_file(shard).items():
            state[name.removeprefix("transformer.")] = tensor
    return state


def _check_config(config: ModelConfig) -> None:
    raw = config.raw
    activation = raw.get("activation_function", "gelu_new")
    if activation != "gelu_new" or raw.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise ValueError(
            "the native engine runs GPT-2's gelu_new and layer norm epsilon 1e-5; this "
            f"model has {activation} and {raw.get('layer_norm_epsilon')}"
        )
    if config.n_embd % 64 or config.n_embd % config.n_head:
        raise ValueError(f"the native engine needs n_embd a multiple of 64, not {config.n_embd}")


def fitted_block(options: NativeOptions, width: int) -> NativeOptions:
    """The options with the largest scale block, up to the one asked for, that divides
    the model's width: GPT-2 XL's 1600 inputs (25 chunks of 64) take blocks of 64 where
    `block_size: 128` is asked. A block splits no chunk, so every size runs every path
    (the load report names the block used)."""
    block = options.block_size
    while options.bits != 32 and width % block:
        block //= 2
    return (
        options if block == options.block_size else options.model_copy(update={"block_size": block})
    )


def _quantize_model(model_dir: Path, options: NativeOptions, out: Path) -> None:
    from whistle_stop.native.quantize import grouped, quantize_rows

    state = _state(model_dir)
    config = ModelConfig.from_dir(model_dir)
    plain = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    for layer in range(config.n_layer):
        prefix = f"h.{layer}."
        plain += [prefix + n for n in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias")]
        for name in LAYER_WEIGHTS:
            # Conv1D keeps (in, out); the engine reads output rows over inputs
            matrix = np.ascontiguousarray(state[f"{prefix}{name}.weight"].T)
            bits = options.matrix_bits(name)
            data, scales = grouped(*quantize_rows(matrix, bits, options.block_size))
            np.save(out / f"{prefix}{name}.data.npy", data)
            np.save(out / f"{prefix}{name}.scales.npy", scales)
            plain.append(f"{prefix}{name}.bias")
    data, scales = grouped(*quantize_rows(state["wte.weight"], options.head, options.block_size))
    np.save(out / "head.data.npy", data)
    np.save(out / "head.scales.npy", scales)
    for name in plain:
        np.save(out / f"{name}.npy", np.ascontiguousarray(state[name], dtype=np.float32))


class NativeBackend(StepwiseBackend):
    def __init__(
        self,
        model_dir: Path,
        options: NativeOptions,
        threads: int,
        cache_dir: Path,
        profile: bool = False,
        cflags: tuple[str, ...] = (),
    ) -> None:
        """`profile`: the engine built to time its phases, `cflags`: with more compiler
        flags (benchmarks; jobs never do either)."""
        from whistle_stop.native.build import load

        self.config = config = ModelConfig.from_dir(model_dir)
        _check_config(config)
        options = fitted_block(options, config.n_embd)
        self.lib, built = load(cache_dir, profile, cflags)
        parts = [
            "native",
            weights_digest(model_dir, cache_dir),
            # what shapes the weights
            {"bits": options.bits, "block_size": options.block_size, "head": options.head_bits}
            | {
                f"{m}_bits": options.matrix_bits(m)
                for m in LAYER_WEIGHTS
                if options.matrix_bits(m) != options.bits
            },
            source_digest("whistle_stop.backends.native", "whistle_stop.native.quantize"),
        ]
        artifact = cached_artifact(
            cache_dir, "native", parts, lambda out: _quantize_model(model_dir, options, out)
        )
        # every array stays referenced here: the engine reads them in place
        self.arrays = {p.name[: -len(".npy")]: np.load(p) for p in artifact.path.glob("*.npy")}
        pointers = [self._ptr(n) for n in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")]
        pointers += [self._ptr("head.data"), self._ptr("head.scales")]
        for layer in range(config.n_layer):
            p = f"h.{layer}."
            pointers += [self._ptr(p + "ln_1.weight"), self._ptr(p + "ln_1.bias")]
            for name in LAYER_WEIGHTS:
                if name == "mlp.c_fc":
                    pointers += [self._ptr(p + "ln_2.weight"), self._ptr(p + "ln_2.bias")]
                pointers += [self._ptr(f"{p}{name}.{part}") for part in ("data", "scales")]
                pointers.append(self._ptr(f"{p}{name}.bias"))
        dims = (ctypes.c_int32 * 13)(
            config.n_layer,
            config.n_embd,
            config.n_head,
            config.vocab_size,
            config.n_positions,
            options.bits,
            options.block_size,
            options.kv_dtype == "int8",
            options.head,
            *(options.matrix_bits(name) for name in LAYER_WEIGHTS),
        )
        self.pool = self.lib.ws_pool_create(threads, options.spin_us)
        self.model = self.lib.ws_model_create(
            self.pool, dims, (ctypes.c_void_p * len(pointers))(*pointers)
        )
        self.logits = np.zeros(config.vocab_size, dtype=np.float32)
        self.logits_ptr = self.logits.ctypes.data_as(_FLOAT)
        self.token = (ctypes.c_int32 * 1)()
        self.position = self.capacity = 0
        self.load_report = LoadReport(
            artifact_built=artifact.built,
            artifact_build_s=artifact.build_s,
            artifact_bytes=dir_bytes(artifact.path),
            compile_s=built["build_s"],
            matmul_bytes=options.layer_bytes(),
            lm_head_bytes=options.weight_bytes(options.head),
            kv_bytes=options.cache_bytes(config.n_embd // config.n_head),
            extra={"kernels_built": built["built"], "block_size": options.block_size},
        )

    def _ptr(self, name: str) -> int:
        array = self.arrays[name]
        assert array.flags.c_contiguous, name
        return array.ctypes.data

    def reserve(self, total_tokens: int) -> None:
        if total_tokens > self.config.n_positions:
            raise ValueError(
                f"{total_tokens} tokens exceed the model's {self.config.n_positions} positions"
            )
        if total_tokens > self.capacity:
            if self.lib.ws_model_reserve(self.model, total_tokens) != 0:
                raise RuntimeError(f"could not reserve a cache of {total_tokens} positions")
            self.capacity = total_tokens

    def _forward(self, ids, count: int) -> np.ndarray:
        self.reserve(self.position + count)
        status = self.lib.ws_model_forward(self.model, ids, count, self.position, self.logits_ptr)
        if status != 0:
            raise ValueError(f"native engine refused tokens (status {status})")
        self.position += count
        return self.logits

    def prefill(self, prompt: list[int]) -> np.ndarray:
        self.position = 0  # positions are overwritten from the start
        return self._forward((ctypes.c_int32 * len(prompt))(*prompt), len(prompt))

    def step(self, token: int) -> np.ndarray:
        # a decode step is 1-15 ms: the Python around the call is kept to one array write
        # (building ctypes arguments afresh cost ~0.2 ms a step)
        self.token[0] = token
        return self._forward(self.token, 1)

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        # every call returns the engine's one logits buffer: copy each row before the next
        self.reserve(len(prompt) + len(continuation) - 1)
        rows = [self.prefill(prompt).copy()]
        rows += [self.step(token).copy() for token in continuation[:-1]]
        return np.stack(rows)

    def __del__(self) -> None:
        lib = getattr(self, "lib", None)
        if lib is not None and getattr(self, "model", None):
            lib.ws_model_destroy(self.model)
            lib.ws_pool_destroy(self.pool)
