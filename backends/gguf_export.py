"""Our GPT-2 checkpoint as a GGUF file for llama.cpp, and llama.cpp's quantizer.

llama.cpp's own converter (convert_hf_to_gguf.py) is not in the wheel and wants a real
BPE tokenizer, which random weights do not come with. So the GGUF is written here with
the `gguf` package, the same way the converter writes GPT-2 (arch "gpt2", Conv1D weights
transposed to (out, in), the LM head tied to token_embd), with a stand-in vocabulary:
the 256 byte symbols GPT-2's BPE starts from, then placeholders, then <|endoftext|>. Only
token ids cross into llama.cpp, so the vocabulary's text never matters, and the compute
(every matmul, the cache, the head over 50257 ids) is the same as for the real GPT-2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# checkpoint name -> GGUF name, per layer and not (gguf's TensorNameMap for GPT-2)
_GLOBAL = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}
_LAYER = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # stored (in, out)


def write_gguf(model_dir: Path, out: Path) -> Path:
    """The checkpoint in model_dir as a float32 GGUF file for llama.cpp's gpt2 graph."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    state = load_file(model_dir / "model.safetensors")
    writer = gguf.GGUFWriter(out, "gpt2")
    writer.add_block_count(config["n_layer"])
    writer.add_context_length(config["n_positions"])
    writer.add_embedding_length(config["n_embd"])
    writer.add_feed_forward_length(4 * config["n_embd"])
    writer.add_head_count(config["n_head"])
    writer.add_layer_norm_eps(config.get("layer_norm_epsilon", 1e-5))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_vocabulary(writer, config["vocab_size"])
    for key, tensor in state.items():
        name = _gguf_name(key.removeprefix("transformer."))
        if name is None:
            continue  # the causal-mask buffers and the tied lm_head
        if key.endswith(".weight") and any(part in key for part in _CONV1D):
            tensor = np.ascontiguousarray(tensor.T)  # Conv1D (in, out) -> (out, in)
        writer.add_tensor(name, tensor.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _gguf_name(key: str) -> str | None:
    module, _, kind = key.rpartition(".")  # kind: weight or bias
    if module in _GLOBAL:
        return f"{_GLOBAL[module]}.{kind}"
    if module.startswith("h."):
        _, layer, rest = module.split(".", 2)
        if rest in _LAYER:
            return f"blk.{layer}.{_LAYER[rest]}.{kind}"
    return None


def _add_vocabulary(writer, vocab_size: int) -> None:
    import gguf

    # GPT-2's byte-to-symbol table: printable bytes stand for themselves, the rest are
    # shifted past 255, so every byte has a symbol (llama.cpp falls back to these).
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]
    placeholders = [f"<t{i}>" for i in range(256, vocab_size - 1)]
    tokens = [*(symbols + placeholders)[: vocab_size - 1], "<|endoftext|>"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * (vocab_size - 1) + [gguf.TokenType.CONTROL])
    writer.add_token_merges([f"{symbols[0]} {symbols[1]}"])  # BPE needs a merge list
    writer.add_bos_token_id(vocab_size - 1)
    writer.add_eos_token_id(vocab_size - 1)


# the quantization types the `llama-cpp` backend offers, as llama.cpp's file types
QUANT_FTYPES = {
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}


def quantize(source: Path, out: Path, quant: str, threads: int = 2) -> Path:
    """`source` (a float32 GGUF) quantized by llama.cpp's own llama_model_quantize."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise RuntimeError(f"llama_model_quantize to {quant} failed for {source}")
    return out
