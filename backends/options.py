"""Per-backend option schemas, validated at the edge (the sweep file).

These are plain pydantic models with no heavy imports, so the orchestrator can
validate a sweep without importing torch or onnxruntime.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BackendOptions(BaseModel):
    """Base for every backend's options: frozen, and unknown keys are errors."""

    # strict: a sweep file's `true` is not 1 and "4" is not a number
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class HFOptions(BackendOptions):
    """transformers eager `GPT2LMHeadModel.generate`."""

    dtype: Literal["float32", "bfloat16"] = "float32"


class HFCompileOptions(BackendOptions):
    """The same model under `torch.compile` (compiled before the timed region)."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"


class NanoGPTOptions(BackendOptions):
    """Our nanoGPT-style module. `kv_cache: false` re-runs the whole context every step."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    kv_cache: bool = True


BLOCK_SIZE = 32  # MatMulNBits' default here: the first 4-bit artifacts' keys assume it


class OnnxOptions(BackendOptions):
    """ONNX Runtime with past key/values fed back by a greedy loop."""

    fused_attention: bool = False  # export at opset 23: one ONNX Attention op per layer
    optimize: bool = False  # ONNX Runtime's transformer optimizer (fusions for GPT-2)
    quantize: Literal["none", "int8", "int4"] = "none"  # dynamic int8, or 4-bit weight-only
    per_channel: bool = False  # int8: one scale per output channel instead of per tensor
    quantize_lm_head: bool = False  # the 50257-wide LM head is the most sensitive layer
    # int8: 7-bit weights. x86 CPUs without VNNI multiply uint8 x int8 pairs into int16
    # sums that saturate with full-range weights (large errors, worst per channel)
    reduce_range: bool = False
    io_binding: bool = True  # keep the KV cache as ORT values between steps
    # concat: each step returns past + new as a fresh copy; in_place: fixed buffers that
    # ONNX Runtime's GroupQueryAttention updates in place, so decode stays flat in context
    kv_cache: Literal["concat", "in_place"] = "concat"
    # in_place: the cache's stored precision. int8 keeps keys and values as int8 with one
    # float32 scale per channel, calibrated on the float model at export (ONNX Runtime's
    # quantized GroupQueryAttention cache): a quarter of the bytes that each decode step
    # reads back, which at context 512 are 38 MB in float32 (GPT-2 small)
    kv_dtype: Literal["float32", "int8"] = "float32"
    # int4 + in_place: run the prefill on the same graph quantized to int8 (a second
    # session over the same cache buffers). Prefill multiplies matrices, where int8
    # kernels beat 4-bit ones; decode streams weights, where 4 bits read the fewest bytes
    prefill_int8: bool = False
    # int8: "dynamic" quantizes activations in a DynamicQuantizeLinear node ahead of each
    # MatMulInteger (ORT fuses the pair); "nbits" is ONNX Runtime's MatMulNBits with 8-bit
    # weights, activations quantized inside the kernel (one op per matmul, a scale per block)
    int8_kernel: Literal["dynamic", "nbits"] = "dynamic"
    # weights sharing one scale (int4, and int8 with int8_kernel: nbits). Larger blocks
    # read fewer scale bytes and, in MLAS's 4-bit kernel, spend less per block: 5.0 against
    # 3.2 ms a token at 32 and 128, GPT-2 small on a 2-core Xeon (decode_profile.py)
    block_size: Literal[16, 32, 64, 128, 256] = BLOCK_SIZE

    @model_validator(mode="after")
    def _in_place_needs(self) -> OnnxOptions:
        if self.kv_cache == "in_place" and not self.fused_attention:
            raise ValueError(
                "kv_cache: in_place runs attention as ONNX Runtime's fused "
                "GroupQueryAttention; add fused_attention: true"
            )
        if self.prefill_int8 and (self.quantize != "int4" or self.kv_cache != "in_place"):
            raise ValueError(
                "prefill_int8 hands the prompt to an int8 copy of an int4 model through "
                "the shared cache; it needs quantize: int4 and kv_cache: in_place"
            )
        if self.kv_cache == "in_place" and not self.io_binding:
            raise ValueError(
                "kv_cache: in_place updates the cache through bound buffers; "
                "it needs io_binding: true (the default)"
            )
        if self.kv_dtype != "float32" and self.kv_cache != "in_place":
            raise ValueError(
                "kv_dtype is the precision of the in-place cache; add "
                "kv_cache: in_place and fused_attention: true"
            )
        if self.int8_kernel == "nbits" and self.quantize != "int8":
            raise ValueError("int8_kernel says how int8 weights are multiplied; add quantize: int8")
        blocks = self.quantize == "int4" or self.int8_kernel == "nbits"
        if self.block_size != BLOCK_SIZE and not blocks:
            raise ValueError(
                "block_size is the scale block of MatMulNBits weights: it needs quantize: int4 "
                "or quantize: int8 with int8_kernel: nbits"
            )
        return self

    def weight_bytes(self) -> float:
        """Bytes a quantized matmul reads per weight: its bits plus, for MatMulNBits, one
        float32 scale per block (symmetric: no zero points)."""
        if self.quantize == "int4":
            return 0.5 + 4 / self.block_size
        if self.quantize == "int8":
            return 1.0 + 4 / self.block_size if self.int8_kernel == "nbits" else 1.0
        return 4.0


class NativeOptions(BackendOptions):
    """whistle-stop's own engine (native/gpt2.cc): every weight matrix, the LM head
    included, block-quantized to `bits`; activations quantized to int8 per block on the
    fly (`bits: 32`: float32 weights and activations); one call per token runs the whole
    forward pass."""

    bits: Literal[4, 8, 32] = 8  # 32: float32 weights and activations, nothing quantized
    # weights (and activations) sharing one scale; larger blocks read fewer scale bytes
    # and spend less per block, smaller ones keep more fidelity
    block_size: Literal[32, 64, 128, 256] = 32
    # the KV cache: float16, or int8 with a float32 scale per head and position (half
    # the bytes a decode step reads back, a quarter of 4-bit weights' at context 512)
    kv_dtype: Literal["float16", "int8"] = "float16"
    # the tied LM head's bits (default: `bits`). On a model trained here the 4-bit head
    # was most of a 4-bit path's KL (examples/fidelity.yaml: onnx-int4 with a float32 head
    # 1.1e-4, with a 4-bit one 1.3e-3); llama.cpp's q4_0 and q4_K_M keep it at 6 bits
    head_bits: Literal[4, 8] | None = None
    # the bits of attn.c_attn (q, k and v: llama.cpp's attn_qkv, which its q4_K_M keeps at
    # 5 bits) and of mlp.c_proj (ffn_down, 6 bits in half of q4_K_M's layers); default `bits`
    qkv_bits: Literal[4, 8] | None = None
    down_bits: Literal[4, 8] | None = None
    # how long a waiting thread spins before it sleeps (microseconds): long enough to
    # cross a barrier or the gap between two decode steps without a wake-up, short
    # enough that a thread whose CPU a neighbour shares gives its time slice back
    spin_us: Annotated[int, Field(ge=0, le=10_000_000)] = 200

    @model_validator(mode="after")
    def _blocks_need_quantized_weights(self) -> NativeOptions:
        if self.bits == 32 and (
            self.block_size != 32 or self.head_bits or self.qkv_bits or self.down_bits
        ):
            raise ValueError(
                "block_size and head_bits, qkv_bits, down_bits shape quantized weights; "
                "bits: 32 keeps float32 weights, which have none"
            )
        return self

    @property
    def head(self) -> int:
        """The LM head's bits."""
        return self.head_bits or self.bits

    def matrix_bits(self, name: str) -> int:
        """The bits of a layer's matrix (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)."""
        chosen = {"attn.c_attn": self.qkv_bits, "mlp.c_proj": self.down_bits}.get(name)
        return chosen or self.bits

    def layer_bytes(self) -> float:
        """Bytes a decode step reads per weight of a layer's matrices, on average: c_attn
        holds 3 of a layer's 12 d^2 weights, c_proj 1, c_fc and mlp.c_proj 4 each."""
        shares = {"attn.c_attn": 3, "attn.c_proj": 1, "mlp.c_fc": 4, "mlp.c_proj": 4}
        total = sum(n * self.weight_bytes(self.matrix_bits(m)) for m, n in shares.items())
        return total / 12

    def cache_bytes(self, head_width: int) -> float:
        """Bytes a cached key or value takes: half precision, or int8 with a float32 scale
        per head and position (`head_width` values share it)."""
        return 2.0 if self.kv_dtype == "float16" else 1 + 4 / head_width

    def weight_bytes(self, bits: int | None = None) -> float:
        """Bytes a decode step reads per weight of `bits` (default: the layers'): its bits
        and a float32 scale per block (none for float32 weights)."""
        bits = bits or self.bits
        return 4.0 if bits == 32 else bits / 8 + 4 / self.block_size


class TorchInt8Options(BackendOptions):
    """PyTorch dynamic int8 on the nn.Linear layers of our nanoGPT module."""

    per_channel: bool = False
    quantize_lm_head: bool = False
    kv_cache: bool = True


class CTranslate2Options(BackendOptions):
    """`compute_type`: float32, int8 (int8 weights and GEMMs, activations quantized on
    the fly), int8_float32 (the same, float32 elsewhere), bfloat16 (CPUs with AVX-512
    bf16 or AMX)."""

    compute_type: Literal["float32", "int8", "int8_float32", "bfloat16"] = "int8"


class LlamaCppOptions(BackendOptions):
    """`quant`: the GGUF's weights (f32, f16, q8_0, q4_0, q4_K_M); `flash_attn`: llama.cpp's
    fused attention kernel."""

    quant: Literal["f32", "f16", "q8_0", "q4_0", "q4_K_M"] = "q8_0"
    flash_attn: bool = False


class OpenVINOOptions(BackendOptions):
    """`weights`: NNCF weight compression of the converted model (f32: none; int8 per
    channel; int4 in groups of `group_size`, -1 for per channel, with the embedding and head
    kept in int8 unless `all_layers`); `precision`: the CPU plugin's inference precision;
    `runner`: OpenVINO GenAI's C++ LLMPipeline, or our Python greedy loop over the compiled
    model; `kv_cache`: the precision of the stored keys and values (`default`: the CPU
    plugin's, u8 on x86 since 2024, which changes the logits a little even in f32)."""

    weights: Literal["f32", "int8", "int4"] = "int8"
    precision: Literal["f32", "bf16"] = "f32"
    kv_cache: Literal["default", "u8", "f16", "bf16", "f32"] = "default"
    group_size: int = 128
    all_layers: bool = False
    runner: Literal["genai", "python"] = "genai"

    @model_validator(mode="after")
    def _int4_only(self) -> OpenVINOOptions:
        if self.weights != "int4" and (self.group_size != 128 or self.all_layers):
            raise ValueError(
                "group_size and all_layers shape 4-bit weights; they need weights: int4"
            )
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError("group_size is a positive number of weights, or -1 (per channel)")
        return self


class CalibrationOptions(BackendOptions):
    """A step of known cost: read `megabytes` from memory, `slowdown` more of it for a twin
    that is that much slower for real (farm bench calibration)."""

    megabytes: float = Field(64.0, gt=0, le=4096)
    slowdown: float = Field(0.0, ge=0, le=10)
