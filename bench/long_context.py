"""Decode cost at long context against short (issue #7, goal 5), per ONNX path, in one process.

For each path: warm up, then the median over rounds of the decode step time (ms/token,
128 greedy tokens) after a 32-token and after a 512-token prompt, and their ratio.
Contexts alternate within each round, so drift hits both alike. The concatenated cache
copies past + new every step; the in-place one writes each token into its buffer.
`--labels` takes paths of examples/engines.yaml instead, any backend (issue #17's goal 6:
every quantized path within 1.25x, measured here seconds apart where two farm jobs run
minutes apart).

    farm bench long-context [--rounds 4] [--threads 2] [--only LABELS]
    farm bench long-context --labels onnx-int8-all-kv8,native-q4-b128
"""

from __future__ import annotations

import argparse
import statistics
import sys

from whistle_stop.backends import registry
from whistle_stop.bench.common import CACHE, bench_model, counting, example, table, timed
from whistle_stop.orchestrator.sweep import load_sweep
from whistle_stop.worker.prompts import random_prompt

FUSED = {"fused_attention": True}
IN_PLACE = {**FUSED, "kv_cache": "in_place"}
INT8, INT8_ALL = {"quantize": "int8"}, {"quantize": "int8", "quantize_lm_head": True}
INT4_ALL = {"quantize": "int4", "quantize_lm_head": True}
PATHS = {
    "fp32 concat": FUSED,
    "fp32 in place": IN_PLACE,
    "int8 concat": {**FUSED, **INT8},
    "int8 in place": {**IN_PLACE, **INT8},
    "int8+head concat": {**FUSED, **INT8_ALL},
    "int8+head in place": {**IN_PLACE, **INT8_ALL},
    "int4+head concat": {**FUSED, **INT4_ALL},
    "int4+head in place": {**IN_PLACE, **INT4_ALL},
}
CONTEXTS = (32, 512)


def decode_ms(backend, prompt: list[int], tokens: int) -> float:
    return 1e3 / timed(backend, prompt, tokens).decode_tokens_per_s


def engine_paths(labels: list[str]) -> dict[str, tuple[str, dict]]:
    """These labels of examples/engines.yaml, as the farm reads it: label -> (backend, options)."""
    plan = load_sweep(example("engines.yaml"), max_jobs=None)
    known = {job.label: (job.backend, dict(job.options)) for job in plan.jobs}
    unknown = sorted(set(labels) - set(known))
    if unknown:
        sys.exit(f"error: not labels of examples/engines.yaml: {', '.join(unknown)}")
    return {label: known[label] for label in labels}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=counting, default=4)
    parser.add_argument("--threads", type=counting, default=2)
    parser.add_argument("--generation", type=counting, default=128)
    parser.add_argument("--only", default=None, help="comma-separated path names")
    parser.add_argument("--labels", default=None, help="paths of examples/engines.yaml")
    args = parser.parse_args(argv)

    paths = {name: ("onnx", options) for name, options in PATHS.items()}
    if args.labels:
        paths = engine_paths(args.labels.split(","))
    model_dir = bench_model()
    prompts = {ctx: random_prompt(0, ctx, 50257) for ctx in CONTEXTS}
    rows = []
    for name, (kind, options) in paths.items():
        if args.only and name not in args.only.split(","):
            continue
        backend = registry.create(kind, model_dir, options, args.threads, CACHE)
        samples: dict[int, list[float]] = {ctx: [] for ctx in CONTEXTS}
        for round_index in range(args.rounds + 1):  # round 0 warms up
            for ctx in CONTEXTS:
                ms = decode_ms(backend, prompts[ctx], args.generation)
                if round_index:
                    samples[ctx].append(ms)
        short, long = (statistics.median(samples[ctx]) for ctx in CONTEXTS)
        rows.append([name, f"{short:.2f}", f"{long:.2f}", f"{long / short:.2f}x"])
        print("  " + " | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(table(["path", "ms/token at 32", "ms/token at 512", "512 / 32"], rows))
    print(
        f"random:gpt2, {args.generation} greedy tokens, {args.threads} threads, "
        f"medians of {args.rounds} rounds"
    )
