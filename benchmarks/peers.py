"""whistle-stop's paths beside the peers a user might pick instead: CTranslate2 int8 and
llama.cpp q8_0, on the same random GPT-2 small weights and prompt, interleaved.

Every path is loaded once in this process (pinned to the CPUs it is given); then rounds
of one timed greedy generation per path, in turn, so drift hits all paths alike.
Prints decode tokens/s (median over rounds), time to first token, teacher-forced top-1
agreement with transformers float32, and the ratio to transformers eager.

Peers are optional (`pip install -e '.[peers]'`: ctranslate2, llama-cpp-python, which
builds llama.cpp from source, and gguf, see llama_cpp_peer.py); a peer that is not
installed, or cannot load these weights, is skipped with the reason.

    .venv/bin/python benchmarks/peers.py [--rounds 10] [--context 128] [--generation 128]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import in_process_arguments, load_paths, table, timed

from worker.prompts import random_prompt

FUSED = {"fused_attention": True, "kv_cache": "in_place"}
OURS = {
    "transformers eager fp32": ("hf", {}),
    "onnx fp32": ("onnx", FUSED),
    "onnx int8": ("onnx", {**FUSED, "quantize": "int8"}),
    "onnx int8, 7-bit per channel": (
        "onnx",
        {**FUSED, "quantize": "int8", "per_channel": True, "reduce_range": True},
    ),
    "onnx int8 incl. LM head": ("onnx", {**FUSED, "quantize": "int8", "quantize_lm_head": True}),
    "onnx int4": ("onnx", {**FUSED, "quantize": "int4"}),
    "onnx int4 incl. LM head": ("onnx", {**FUSED, "quantize": "int4", "quantize_lm_head": True}),
    "onnx int4 incl. LM head, int8 prefill": (
        "onnx",
        {**FUSED, "quantize": "int4", "quantize_lm_head": True, "prefill_int8": True},
    ),
}


class CTranslate2Int8:
    """CTranslate2's generator with int8 weights, converted from the same checkpoint."""

    def __init__(self, model_dir: Path, threads: int, work: Path) -> None:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        with_vocab = _with_synthetic_vocabulary(model_dir, work / "ct2-source")
        out = work / "ct2-int8"
        TransformersConverter(str(with_vocab)).convert(str(out), quantization="int8", force=True)
        self.generator = ctranslate2.Generator(str(out), device="cpu", compute_type="int8",
                                               intra_threads=threads, inter_threads=1)  # fmt: skip

    def generate(self, prompt: list[int], new_tokens: int) -> tuple[list[int], list[float]]:
        tokens, times = [], []
        # exactly new_tokens: no end token stops it early
        steps = self.generator.generate_tokens([f"t{i}" for i in prompt], max_length=new_tokens,
                                               sampling_topk=1, end_token=[])  # fmt: skip
        for step in steps:
            tokens.append(step.token_id)
            times.append(time.perf_counter())
        return tokens, times

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        sequence = [f"t{i}" for i in prompt + continuation[:-1]]
        logits = np.array(self.generator.forward_batch([sequence]))[0]
        return logits[len(prompt) - 1 :]


def _with_synthetic_vocabulary(model_dir: Path, out: Path) -> Path:
    """The checkpoint plus a word-level tokenizer "t0".."tN": converters read a vocabulary,
    and random weights come with none. Token ids, the only thing timed, are unchanged."""
    import json
    import shutil

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        if file.is_file():
            shutil.copy(file, out / file.name)
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    # named special tokens: the converter writes them into its config as strings (a
    # missing one becomes null, which CTranslate2 refuses); GPT-2's is <|endoftext|>
    end = f"t{vocab_size - 1}"
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="t0", bos_token=end, eos_token=end
    ).save_pretrained(out)
    return out


def load_peers(model_dir: Path, threads: int, work: Path) -> tuple[dict, list[str]]:
    loaded, skipped = {}, []
    try:
        loaded["CTranslate2 int8"] = CTranslate2Int8(model_dir, threads, work)
    except ImportError:
        skipped.append("CTranslate2 int8: not installed (pip install ctranslate2)")
    except Exception as error:  # a peer's own failure is reported, not fatal
        skipped.append(f"CTranslate2 int8: {type(error).__name__}: {error}")
    try:
        from llama_cpp_peer import LlamaCpp, quantize_q8_0, write_gguf

        f32 = write_gguf(model_dir, work / "gpt2-f32.gguf")
        loaded["llama.cpp f32"] = LlamaCpp(f32, threads)
        q8_0 = quantize_q8_0(f32, work / "gpt2-q8_0.gguf")
        loaded["llama.cpp q8_0"] = LlamaCpp(q8_0, threads)
    except ImportError:
        skipped.append("llama.cpp: not installed (pip install llama-cpp-python gguf; "
                       "pip builds llama.cpp from source, a few minutes)")  # fmt: skip
    except Exception as error:
        skipped.append(f"llama.cpp: {type(error).__name__}: {error}")
    return loaded, skipped


def main() -> None:
    args = in_process_arguments(__doc__, rounds=10)
    model_dir, paths = load_paths(OURS, args.threads)
    prompt = random_prompt(0, args.context, 50257)
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    peers, skipped = load_peers(model_dir, args.threads, work)

    reference = paths["transformers eager fp32"]
    ref_tokens = reference.generate(prompt, args.generation).tokens
    ref_logits = reference.teacher_forced_logits(prompt, ref_tokens[:64])
    speeds, ttft = {n: [] for n in [*paths, *peers]}, {n: [] for n in [*paths, *peers]}
    for round_index in range(args.rounds + 1):  # round 0 warms up every path
        for name in speeds:
            run = timed(paths.get(name) or peers[name], prompt, args.generation)
            if round_index:
                speeds[name].append(run.decode_tokens_per_s)
                ttft[name].append(run.prefill_s)
        print(f"round {round_index}/{args.rounds}", file=sys.stderr)
    base = statistics.median(speeds["transformers eager fp32"])
    rows = []
    for name in speeds:
        path = paths.get(name) or peers[name]
        logits = path.teacher_forced_logits(prompt, ref_tokens[:64])
        agreement = float((logits.argmax(-1) == ref_logits.argmax(-1)).mean())
        speed = statistics.median(speeds[name])
        rows.append([name, f"{speed:.1f}", f"{1e3 * statistics.median(ttft[name]):.0f}",
                     f"{agreement:.2f}", f"{speed / base:.2f}x"])  # fmt: skip
    print(
        table(
            ["path", "decode tok/s", "time to first token ms", "top-1 agreement", "vs eager"], rows
        )
    )
    print(f"random:gpt2, context {args.context}, {args.generation} greedy tokens, {args.threads} threads, "
          f"medians of {args.rounds} interleaved rounds")  # fmt: skip
    for line in skipped:
        print("skipped " + line)


if __name__ == "__main__":
    main()
