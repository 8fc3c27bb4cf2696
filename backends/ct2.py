"""`ctranslate2`: CTranslate2's Generator on the same weights, converted once and cached.

    pip install -e '.[ctranslate2]'

The checkpoint is converted with CTranslate2's own TransformersConverter at the precision
of `compute_type` (under the artifact lock, written then renamed). Random weights come
without a tokenizer, and the converter wants one, so a word-level vocabulary "t0".."tN"
stands in: only token ids are timed, and the compute is GPT-2's. Greedy decoding streams
token by token through `generate_tokens` (one stamp per token, as it arrives); the
teacher-forced logits come from one `forward_batch` over prompt + continuation.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from importlib import metadata
from pathlib import Path

import ctranslate2
import numpy as np

from whistle_stop.artifacts import cached_artifact, dir_bytes, source_digest
from whistle_stop.backends.base import Generation, LoadReport
from whistle_stop.backends.options import CTranslate2Options
from whistle_stop.backends.weights import weights_digest

# bytes per projection weight, and per LM-head weight (CTranslate2 quantizes the output
# projection with the rest)
WEIGHT_BYTES = {"float32": 4.0, "bfloat16": 2.0, "int8": 1.0, "int8_float32": 1.0}


class CTranslate2Backend:
    Options = CTranslate2Options

    def __init__(
        self, model_dir: Path, options: CTranslate2Options, threads: int, cache_dir: Path
    ) -> None:
        supported = ctranslate2.get_supported_compute_types("cpu")
        if options.compute_type not in supported:
            raise RuntimeError(
                f"this CPU runs CTranslate2 compute types {sorted(supported)}, "
                f"not {options.compute_type}"
            )
        version = metadata.version("ctranslate2")
        parts = [
            weights_digest(model_dir, cache_dir),
            version,
            options.compute_type,
            source_digest("whistle_stop.backends.ct2"),
        ]
        convert = functools.partial(_convert, model_dir, compute_type=options.compute_type)
        artifact = cached_artifact(cache_dir, f"ct2-{options.compute_type}", parts, convert)
        self.generator = ctranslate2.Generator(
            str(artifact.path),
            device="cpu",
            compute_type=options.compute_type,
            intra_threads=threads,
            inter_threads=1,
        )
        width = WEIGHT_BYTES[options.compute_type]
        self.load_report = LoadReport(
            artifact_built=artifact.built,
            artifact_build_s=artifact.build_s,
            artifact_bytes=dir_bytes(artifact.path),
            matmul_bytes=width,
            lm_head_bytes=width,
            extra={
                "engine": f"ctranslate2 {version}",
                "compute_type": options.compute_type,
                "cpu_compute_types": sorted(supported),
                "intra_threads": threads,
            },
        )

    def generate(self, prompt: list[int], new_tokens: int) -> Generation:
        tokens, times = [], []
        # exactly new_tokens: no end token stops it early
        steps = self.generator.generate_tokens(
            [f"t{i}" for i in prompt], max_length=new_tokens, sampling_topk=1, end_token=[]
        )
        for step in steps:
            tokens.append(step.token_id)
            times.append(time.perf_counter())
        return Generation(tokens=tokens, token_times=times)

    def teacher_forced_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        sequence = [f"t{i}" for i in prompt + continuation[:-1]]
        logits = np.asarray(self.generator.forward_batch([sequence]), dtype=np.float32)[0]
        return logits[len(prompt) - 1 :]


def _convert(model_dir: Path, out: Path, compute_type: str) -> None:
    from ctranslate2.converters import TransformersConverter

    source = out.parent / f".{out.name}.source"
    with_vocabulary(model_dir, source)
    try:
        TransformersConverter(str(source)).convert(str(out), quantization=compute_type, force=True)
    finally:
        shutil.rmtree(source, ignore_errors=True)


def with_vocabulary(model_dir: Path, out: Path) -> Path:
    """The checkpoint plus a word-level tokenizer "t0".."tN": converters read a vocabulary,
    and random weights come with none. Token ids, the only thing timed, are unchanged."""
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
