"""Where one decode step's time goes in ONNX Runtime (issue #17, goal 4), from ORT's own
profile of real decode steps, with the bandwidth measured right before and after.

For each path, per decode step (medians over steps):
  - the step's wall time without the profiler (our greedy loop's own stamps, a second
    session: the profiler's per-node records cost ~1-2 ms a step of their own), and
    non-weight time = that step minus the weights' bytes at the measured bandwidth
    (goal: <= 1 ms);
  - under the profiler: nodes run, the step's wall time (ORT's `model_run`);
  - time in the weight-streaming ops (MatMul, Gemm, MatMulInteger, MatMulNBits, ...)
    against what their weights cost at the measured bandwidth (the floor);
  - time in every other op, and the gaps between ops (thread-pool hand-offs, the
    executor's own work): with two threads every op is a barrier;
  - the top op types by time.

    farm bench decode-profile [--context 128] [--steps 64] [--threads 2]
        [--paths onnx-int8-all,onnx-int4-all-b128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.onnx import OnnxBackend
from whistle_stop.backends.options import OnnxOptions
from whistle_stop.bench.common import CACHE, bench_model, counting, table, variants
from whistle_stop.worker.prompts import random_prompt
from whistle_stop.worker.roofline import fresh_read_bandwidth, weight_bytes_per_token

# the ONNX paths of examples/engines.yaml profiled by default (--labels, --grid: others)
DEFAULT = ["onnx-fp32", "onnx-int8-all", "onnx-int4-all", "onnx-int4-b128-p8", "onnx-int8-nbits"]
WEIGHT_OPS = set(
    "MatMul Gemm MatMulInteger MatMulNBits FusedMatMul MatMulIntegerToFloat "
    "DynamicQuantizeMatMul FusedGemm".split()
)
HEADINGS = (  # without the profiler, then under it
    "path, step, weights at bw, non-weight, roofline, GB/s, "
    "nodes, profiled step, weight ops, other ops, gaps"
).split(", ")


def profile(options: dict, context: int, steps: int, threads: int, directory: Path):
    """One prefill and `steps` decode steps timed by the greedy loop, then the same under
    ORT's profiler (its own session); the loop's median step (ms), the profile's events,
    the weights' bytes per token and the bandwidth measured before and after."""

    def tune(settings) -> None:
        settings.enable_profiling = True
        settings.profile_file_prefix = str(directory / "ort")

    model_dir = bench_model()
    config = ModelConfig.from_dir(model_dir)
    prompt = random_prompt(0, context, config.vocab_size)
    before = fresh_read_bandwidth(threads)["read_bytes_per_s"]
    plain = OnnxBackend(model_dir, OnnxOptions(**options), threads, CACHE)
    intervals = []
    for _ in range(3):  # the first is a warm-up
        times = plain.generate(prompt, steps + 1).token_times
        intervals.append([b - a for a, b in zip(times, times[1:], strict=False)])
    step_ms = statistics.median(i for run in intervals[1:] for i in run) * 1e3
    report = plain.load_report
    del plain  # its idle pool must not share the cores with the profiled session
    backend = OnnxBackend(model_dir, OnnxOptions(**options), threads, CACHE, tune=tune)
    backend.generate(prompt, steps + 1)  # warm: the profile keeps this run too (skipped)
    backend.generate(prompt, steps + 1)
    after = fresh_read_bandwidth(threads)["read_bytes_per_s"]
    events = json.loads(Path(backend.session.end_profiling()).read_text())
    weights = weight_bytes_per_token(config, report.matmul_bytes, report.lm_head_bytes)
    return step_ms, events, weights, (before + after) / 2


def per_step(events: list[dict], steps: int) -> list[dict]:
    """The last generation's decode runs: each with its nodes' kernel times by op type."""
    runs = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    decode = runs[-steps:]  # the last generation: prefill, then `steps` single-token runs
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    out = []
    for run in decode:
        start, end = run["ts"], run["ts"] + run["dur"]
        mine = [n for n in nodes if start <= n["ts"] <= end]
        by_op: dict[str, float] = defaultdict(float)
        for node in mine:
            by_op[node["args"].get("op_name", "?")] += node["dur"] / 1e3
        out.append({"ms": run["dur"] / 1e3, "nodes": len(mine), "by_op": by_op})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=counting, default=128)
    parser.add_argument("--steps", type=counting, default=64)
    parser.add_argument("--threads", type=counting, default=2)
    parser.add_argument("--labels", help=f"ONNX paths of the sweep file [{','.join(DEFAULT)}]")
    parser.add_argument("--grid", type=Path, help="the sweep file [examples/engines.yaml]")
    args = parser.parse_args(argv)
    paths = variants(args.labels, DEFAULT, args.grid)
    directory = Path(tempfile.mkdtemp(prefix="decode-profile-"))
    lines, tops = [], []
    for label, (_, options) in paths.items():
        unprofiled, events, weights, bandwidth = profile(
            options, args.context, args.steps, args.threads, directory
        )
        steps = per_step(events, args.steps)
        step = statistics.median(s["ms"] for s in steps)
        weight_ops = statistics.median(
            sum(ms for op, ms in s["by_op"].items() if op in WEIGHT_OPS) for s in steps
        )
        other = statistics.median(
            sum(ms for op, ms in s["by_op"].items() if op not in WEIGHT_OPS) for s in steps
        )
        kernels = statistics.median(sum(s["by_op"].values()) for s in steps)
        floor = weights / bandwidth * 1e3
        nodes = statistics.median(s["nodes"] for s in steps)
        figures = [unprofiled, floor, unprofiled - floor]
        lines.append(
            [label, *(f"{ms:.2f}" for ms in figures), f"{floor / unprofiled:.0%}"]
            + [f"{bandwidth / 1e9:.1f}", f"{nodes:.0f}"]
            + [f"{ms:.2f}" for ms in (step, weight_ops, other, step - kernels)]
        )
        totals: dict[str, float] = defaultdict(float)
        for s in steps:
            for op, ms in s["by_op"].items():
                totals[op] += ms / len(steps)
        top = sorted(totals.items(), key=lambda item: -item[1])[:6]
        tops.append([label, ", ".join(f"{op} {ms:.2f}" for op, ms in top)])
    print(
        f"decode steps at context {args.context}, {args.threads} threads, ms per step "
        f"(medians over {args.steps} steps; profile files in {directory}):"
    )
    print("(step, weights at bw, non-weight, roofline: without the profiler; the rest: under it)")
    print(table(HEADINGS, lines))
    print("\nop types by time, ms per step:")
    print(table(["path", "ops"], tops))
