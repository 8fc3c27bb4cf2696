"""ONNX Runtime's session settings, measured rather than assumed (issue #7): each
variant against the farm's defaults (all graph optimizations, spinning intra-op
threads, the memory arena on), on the float32 and the int8 (LM head int8) paths.

Every variant is its own session on the same model file; rounds interleave them, so
drift hits all alike. Prints decode tokens/s and time to first token (medians).

    farm bench session-options [--rounds 5] [--context 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import onnxruntime as ort

from whistle_stop.backends.onnx import OnnxBackend
from whistle_stop.backends.options import OnnxOptions
from whistle_stop.bench.common import CACHE, bench_model, counting, table, timed, variants
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=counting, default=5, help="timed rounds, after a warm-up")
    parser.add_argument("--context", type=counting, default=128, help="prompt tokens")
    parser.add_argument("--generation", type=counting, default=128, help="greedy tokens per run")
    parser.add_argument("--threads", type=counting, default=2, help="intra-op threads")
    parser.add_argument("--labels", help=f"ONNX paths of the sweep file [{','.join(DEFAULT)}]")
    parser.add_argument("--grid", type=Path, help="the sweep file [examples/engines.yaml]")
    args = parser.parse_args(argv)
    rows = []
    for model, (_, options) in variants(args.labels, DEFAULT, args.grid).items():
        model_dir, full = bench_model(), OnnxOptions.model_validate(options)
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
