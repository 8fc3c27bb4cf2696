"""ONNX Runtime's session settings, measured rather than assumed (issue #7): each
variant against the farm's defaults (all graph optimizations, spinning intra-op
threads, the memory arena on), on the float32 and the int8 (LM head int8) paths.

Every variant is its own session on the same model file; rounds interleave them, so
drift hits all alike. Prints decode tokens/s and time to first token (medians).

    farm bench session-options [--rounds 5] [--context 128]
"""

from __future__ import annotations

import statistics
import sys

import onnxruntime as ort

from whistle_stop.backends.onnx import OnnxBackend
from whistle_stop.bench.common import (
    CACHE,
    full_options,
    gpt2_small,
    in_process_arguments,
    table,
    timed,
    variants,
)
from whistle_stop.worker.prompts import random_prompt

DEFAULT = ["onnx-fp32", "onnx-int8-all"]  # labels of examples/engines.yaml
LEVELS = ort.GraphOptimizationLevel


def _set(**fields):
    """A `tune` hook that sets these SessionOptions attributes."""

    def tune(options: ort.SessionOptions) -> None:
        for name, value in fields.items():
            setattr(options, name, value)

    return tune


def _no_spinning(options: ort.SessionOptions) -> None:
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")


VARIANTS = {
    "defaults": None,
    "no spinning": _no_spinning,
    "no memory arena": _set(enable_cpu_mem_arena=False),
    "no memory pattern": _set(enable_mem_pattern=False),
    "basic graph optimizations": _set(graph_optimization_level=LEVELS.ORT_ENABLE_BASIC),
    "extended graph optimizations": _set(graph_optimization_level=LEVELS.ORT_ENABLE_EXTENDED),
    "1 thread": _set(intra_op_num_threads=1),
}


def main(argv: list[str] | None = None) -> None:
    args = in_process_arguments(__doc__, rounds=5, argv=argv, labels=DEFAULT)
    rows = []
    for model, (_, options) in variants(args.labels, DEFAULT, args.grid).items():
        model_dir, full = gpt2_small(), full_options("onnx", options)
        sessions = {
            name: OnnxBackend(model_dir, full, args.threads, CACHE, tune=tune)
            for name, tune in VARIANTS.items()
        }
        prompt = random_prompt(0, args.context, 50257)
        speeds = {name: [] for name in sessions}
        ttft = {name: [] for name in sessions}
        for round_index in range(args.rounds + 1):  # round 0 warms up
            for name, backend in sessions.items():
                run = timed(backend, prompt, args.generation)
                if round_index:
                    speeds[name].append(run.decode_tokens_per_s)
                    ttft[name].append(run.prefill_s)
            print(f"{model}: round {round_index}/{args.rounds}", file=sys.stderr, flush=True)
        base = statistics.median(speeds["defaults"])
        for name in sessions:
            speed = statistics.median(speeds[name])
            rows.append(
                [
                    model,
                    name,
                    f"{speed:.1f}",
                    f"{speed / base:.2f}x",
                    f"{1e3 * statistics.median(ttft[name]):.0f}",
                ]
            )
    print(table(["path", "session settings", "decode tok/s", "vs defaults", "TTFT ms"], rows))
    print(
        f"random:gpt2, context {args.context}, {args.generation} greedy tokens, "
        f"{args.threads} threads, medians of {args.rounds} interleaved rounds"
    )
