"""Where a decode step of the native engine goes: its phases, timed inside the engine.

The engine is built with -DWS_PROFILE (native/build.py: a separate build, jobs never use
it), which times each phase of a forward pass on thread 0: the matmuls (thread 0's share,
GB/s from its share of the bytes), attention, the elementwise work (layer norms,
quantizing activations, gelu is inside fc) and the barrier waits (the other thread still
working). Each path decodes `--steps` tokens at a fixed context (the position is reset
before each step, so every step attends over the same `--context` tokens), in rounds
that alternate the paths, with the streaming-read bandwidth measured before and after
each (worker/roofline.py's measurement, the farm's). Printed per path: the step (median),
its roofline share (of the weights; +KV: with the KV cache a step also reads), its
non-weight time (step minus the weights at that bandwidth: issue #17's goal 4), the phases
(means a step), and what the mean step spent outside them (Python and the call into the
engine).

    farm bench native-profile [--context 128] [--steps 200] [--rounds 3] [--model random:gpt2]

`--context 32,512` takes each path at both contexts in the same rounds (a path's two
contexts seconds apart, not the minutes between two farm jobs, while this host's
bandwidth moves within minutes) and prints each path's step at the last context over the
first (issue #17's goal 6), beside the KV cache's bytes a step at each.

`--cflags` twice or more compares builds of the engine in the same rounds (each path in
each build, alternated): a kernel change judged against the noise of this host's
bandwidth, not against a run minutes earlier, e.g. `--cflags= --cflags=-DWS_PREFETCH=0`
(with `=`: a flag's leading dash is not taken for an option).

`--prompt N` times N-token prompts (one call each) instead of decode steps: the prompt's
median and its phases, matmuls in GMAC/s of thread 0's share (issue #17's goal 5).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from pathlib import Path

from whistle_stop.backends.config import ModelConfig
from whistle_stop.backends.native import NativeBackend
from whistle_stop.backends.options import NativeOptions
from whistle_stop.bench.common import CACHE, bench_model, counting, model_source, table, variants
from whistle_stop.worker.roofline import (
    fresh_read_bandwidth,
    kv_bytes_per_token,
    weight_bytes_per_token,
)

DEFAULT = (  # labels of examples/engines.yaml
    "native-q8 native-q8-b128-kv8 native-q8-b128 native-f32 native-q4 native-q4-b128 "
    "native-q4-b128-kv8"
).split()
PHASES = ["elementwise", "qkv", "attention", "proj", "fc+gelu", "out", "head", "waits"]
MATMULS = {"qkv": 3, "proj": 1, "fc+gelu": 4, "out": 4}  # d^2 weights a layer, per matmul


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", default="128", help="one context, or several: 32,512")
    parser.add_argument("--steps", type=counting, default=200, help="decode steps per round")
    parser.add_argument("--rounds", type=counting, default=3)
    parser.add_argument("--threads", type=counting, default=2)
    parser.add_argument(
        "--model", default="random:gpt2", type=model_source, help="a model source [random:gpt2]"
    )
    parser.add_argument("--labels", help=f"native paths of the sweep file [{','.join(DEFAULT)}]")
    parser.add_argument("--grid", type=Path, help="the sweep file [examples/engines.yaml]")
    parser.add_argument("--prompt", type=counting, help="time prompts of this many tokens instead")
    parser.add_argument(
        "--cflags",
        action="append",
        help="more compiler flags for the engine, e.g. '-mno-avx512f -mno-avxvnni' for its "
        "AVX2 kernels; given twice or more, each path runs in each build, alternated in "
        "the same rounds ('' for the build as it is)",
    )
    args = parser.parse_args(argv)
    builds = args.cflags or [""]
    options_of = {
        label: NativeOptions.model_validate(options)
        for label, (_, options) in variants(args.labels, DEFAULT, args.grid).items()
    }
    # each path in each build: a build's flags name it where there are several
    paths, cflags = {}, {}
    for label, options in options_of.items():
        for flags in builds:
            name = label if len(builds) == 1 else f"{label} [{flags or 'as built'}]"
            paths[name], cflags[name] = options, tuple(flags.split())
    contexts = [int(c) for c in args.context.split(",")]
    if args.prompt:
        contexts = contexts[:1]  # a prompt starts at position 0 whatever the context
    model_dir = bench_model(args.model)
    config = ModelConfig.from_dir(model_dir)
    engines = {}
    for name, options in paths.items():
        engine = NativeBackend(
            model_dir, options, args.threads, CACHE, profile=True, cflags=cflags[name]
        )
        engine.reserve(max(max(contexts) + 1, args.prompt or 0))
        engine.prefill(list(range(args.prompt or max(contexts))))
        engines[name] = engine
    # bytes a weight (its bits and scales), and the weights' bytes a decode step reads
    per_weight = {name: options.weight_bytes() for name, options in paths.items()}
    weights = {name: weight_bytes_per_token(config, b, b) for name, b in per_weight.items()}
    prompt = list(range(args.prompt)) if args.prompt else None
    runs = [(name, context) for name in paths for context in contexts]
    steps = {run: [] for run in runs}
    phases = {run: [0.0] * len(PHASES) for run in runs}
    bandwidth = {run: [] for run in runs}
    buffer = (ctypes.c_double * len(PHASES))()
    for round_index in range(args.rounds):
        for name, context in runs if round_index % 2 == 0 else runs[::-1]:
            engine = engines[name]
            before = fresh_read_bandwidth(args.threads)["read_bytes_per_s"]
            engine.lib.ws_profile(buffer)  # zero what the warm-up and others left
            for _ in range(args.steps):
                engine.position = context  # a decode step attends over `context` tokens
                started = time.perf_counter()
                if prompt:
                    engine.prefill(prompt)  # (from position 0)
                else:
                    engine.step(5)
                steps[name, context].append(time.perf_counter() - started)
            engine.lib.ws_profile(buffer)
            run = (name, context)
            phases[run] = [t + b / 1e6 for t, b in zip(phases[run], buffer, strict=True)]
            after = fresh_read_bandwidth(args.threads)["read_bytes_per_s"]
            bandwidth[run] += [before, after]
    rows = []
    d = config.n_embd
    for name, context in runs:
        step_ms = statistics.median(steps[name, context]) * 1e3
        bw = statistics.mean(bandwidth[name, context])
        floor_ms = weights[name] / bw * 1e3
        # the KV cache is read every step too: at context 512 on xl, 18% of 4-bit weights
        cache_ms = kv_bytes(config, paths[name], context) / bw * 1e3
        count = args.steps * args.rounds
        per_step = [ms / count for ms in phases[name, context]]
        label = f"{name} @{context}" if len(contexts) > 1 else name
        cells = [
            label,
            f"{step_ms:.2f}",
            f"{bw / 1e9:.1f}",
            f"{floor_ms / step_ms:.0%}",
            f"{(floor_ms + cache_ms) / step_ms:.0%}",
            f"{step_ms - floor_ms:.2f}",
        ]
        if args.prompt:  # bandwidth is not what bounds a prompt: no share, no floor
            cells = [name, f"{step_ms:.1f}"]
        for phase, ms in zip(PHASES, per_step, strict=True):
            weights_share = None  # thread 0's share of the matrix
            if phase in MATMULS:
                weights_share = config.n_layer * MATMULS[phase] * d * d / args.threads
            elif phase == "head":
                weights_share = config.vocab_size * d / args.threads
            if weights_share and ms and args.prompt:  # GMAC/s (the head: the last token only)
                macs = weights_share * (1 if phase == "head" else args.prompt)
                cells.append(f"{ms:.1f} ({macs / ms / 1e6:.0f})")
            elif weights_share and ms:  # GB/s
                cells.append(f"{ms:.2f} ({weights_share * per_weight[name] / ms / 1e6:.0f})")
            else:
                cells.append(f"{ms:.2f}")
        # the phases are sums over steps: set them against the mean step, not the median
        cells.append(f"{statistics.mean(steps[name, context]) * 1e3 - sum(per_step):.2f}")
        rows.append(cells)
    if args.prompt:
        print(
            f"native engine, {args.model}, {args.prompt}-token prompts, "
            f"{args.threads} threads, {args.rounds} rounds x {args.steps}; ms a prompt, "
            "matmuls as thread 0's ms (its share's GMAC/s):"
        )
        headings = ["path", "prompt p50", *PHASES, "outside"]
        print(table(headings, rows))
        return
    print(
        f"native engine, {args.model}, context {args.context}, "
        f"{args.threads} threads, {args.rounds} rounds x {args.steps} steps; ms a step, "
        "matmuls as thread 0's ms (its share's GB/s):"
    )
    headings = ["path", "step p50", "GB/s", "share", "+KV", "non-weight", *PHASES, "outside"]
    print(table(headings, rows))
    if len(contexts) > 1:
        first, last = contexts[0], contexts[-1]
        print(
            f"\nstep at context {last} over {first} (issue #17's goal 6: <= 1.25), beside "
            "the bytes a step reads (weights, and the KV cache at each context):"
        )
        lines = []
        for name, options in paths.items():
            ratio = statistics.median(steps[name, last]) / statistics.median(steps[name, first])
            cache = [kv_bytes(config, options, c) for c in (first, last)]
            bytes_ratio = (weights[name] + cache[1]) / (weights[name] + cache[0])
            megabytes = (f"{b / 1e6:.1f}" for b in (weights[name], *cache))
            lines.append([name, f"{ratio:.2f}", *megabytes, f"{bytes_ratio:.2f}"])
        headings = ["path", f"{last} / {first}", "weights MB", f"KV MB @{first}"]
        print(table([*headings, f"KV MB @{last}", "bytes ratio"], lines))


def kv_bytes(config: ModelConfig, options: NativeOptions, context: int) -> float:
    """The KV cache a decode step reads at `context` positions (the profile's steps all
    stand there: nothing generated beyond them)."""
    width = options.cache_bytes(config.n_embd // config.n_head)
    return kv_bytes_per_token(config, width, context, generation=0)
