"""Share of the memory-bandwidth roofline, with the bandwidth measured beside each run.

The farm measures a host's bandwidth once, when a worker starts. On a shared VM the
bandwidth moves with the neighbours' load (this benchmark was written on one whose
streaming reads ran anywhere from 30 to 55 GB/s within an hour), so a share computed
against a figure from another minute can be off by a third either way. Here every
round measures the bandwidth right before and right after one timed generation per path
and divides by their mean, then reports the median share over rounds.

    .venv/bin/python benchmarks/roofline_share.py [--rounds 8] [--context 128]
"""

from __future__ import annotations

import json
import statistics
import sys

from common import in_process_arguments, load_paths, table, timed

from whistle_stop.worker.prompts import random_prompt
from whistle_stop.worker.roofline import measure_bandwidth, weight_bytes_per_token

FUSED = {"fused_attention": True, "kv_cache": "in_place"}
PATHS = {
    "transformers eager fp32": ("hf", {}),
    "onnx fp32": ("onnx", FUSED),
    "onnx int8": ("onnx", {**FUSED, "quantize": "int8"}),
    "onnx int8 incl. LM head": ("onnx", {**FUSED, "quantize": "int8", "quantize_lm_head": True}),
}


def main() -> None:
    args = in_process_arguments(__doc__, rounds=8)
    model_dir, paths = load_paths(PATHS, args.threads)
    config = json.loads((model_dir / "config.json").read_text())
    prompt = random_prompt(0, args.context, config["vocab_size"])
    bytes_per_token = {
        name: weight_bytes_per_token(
            config, path.load_report.matmul_bytes, path.load_report.lm_head_bytes
        )
        for name, path in paths.items()
    }
    shares: dict[str, list[float]] = {name: [] for name in paths}
    speeds: dict[str, list[float]] = {name: [] for name in paths}
    bandwidths = []
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for name, path in paths.items():
            before = measure_bandwidth(args.threads, 256 * 2**20)["read_bytes_per_s"]
            run = timed(path, prompt, args.generation)
            after = measure_bandwidth(args.threads, 256 * 2**20)["read_bytes_per_s"]
            if round_index:
                speed = run.decode_tokens_per_s
                bandwidth = (before + after) / 2
                speeds[name].append(speed)
                shares[name].append(speed * bytes_per_token[name] / bandwidth)
                bandwidths.append(bandwidth)
        print(f"round {round_index}/{args.rounds}", file=sys.stderr, flush=True)
    rows = [
        [
            name,
            f"{bytes_per_token[name] / 1e6:.0f}",
            f"{statistics.median(speeds[name]):.1f}",
            f"{statistics.median(shares[name]):.0%}",
            f"{min(shares[name]):.0%}-{max(shares[name]):.0%}",
        ]
        for name in paths
    ]
    print(table(["path", "MB read/token", "decode tok/s", "roofline share", "range"], rows))
    print(
        f"bandwidth beside the runs: median {statistics.median(bandwidths) / 1e9:.1f} GB/s, "
        f"{min(bandwidths) / 1e9:.1f}-{max(bandwidths) / 1e9:.1f}; random:gpt2, context "
        f"{args.context}, {args.generation} greedy tokens, {args.threads} threads, "
        f"{args.rounds} rounds"
    )


if __name__ == "__main__":
    main()
