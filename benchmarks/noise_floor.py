"""The farm's own noise floor: the same job 10 times on one pinned worker.

Each run is a fresh pinned process (as in the farm) that measures the job with its
repeats; the spread of the per-run medians across runs is the noise a comparison
between two results must beat.

    .venv/bin/python benchmarks/noise_floor.py [--runs 10] [--cpus 0-1]
"""

from __future__ import annotations

import argparse
import statistics

from common import jobs_from_yaml, run, table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cpus", default=None, help="CPU set of the worker (default: all)")
    parser.add_argument("--backend", default="hf")
    args = parser.parse_args()
    threads = len(args.cpus.split(",")) if args.cpus and "-" not in args.cpus else None
    [job] = jobs_from_yaml(f"""
model: random:gpt2
backends: [{args.backend}]
context_sizes: [128]
generation_lengths: [32]
{"threads: [" + str(threads) + "]" if threads else ""}
warmups: 1
repeats: 5
fidelity_tokens: 0
""")
    payloads = run([job.to_dict()] * args.runs, args.cpus)
    failed = [p.error for p in payloads if p.status != "done"]
    if failed:
        raise SystemExit(f"a run failed: {failed[0]}")
    e2e = [statistics.median(p.metrics.samples["e2e_s"]) for p in payloads]
    decode = [p.metrics.decode_ms_p50 for p in payloads]
    rows = [[str(i), f"{e * 1e3:.1f}", f"{d:.2f}", f"{p['metrics']['cv']:.1%}"]
            for i, (e, d, p) in enumerate(zip(e2e, decode, payloads, strict=True), 1)]  # fmt: skip
    print(table(["run", "median e2e ms", "decode p50 ms", "cv within run"], rows))
    for name, values in (("median end-to-end", e2e), ("decode step p50", decode)):
        middle = statistics.median(values)
        print(f"{name}: spread of the {len(values)} medians (max-min)/median = "
              f"{(max(values) - min(values)) / middle:.1%}, stdev/mean = "
              f"{statistics.stdev(values) / statistics.fmean(values):.1%}")  # fmt: skip
    print(f"job: {job.label} ctx={job.context} gen={job.generation} threads={job.threads}, "
          f"{job.repeats} repeats per run, cpus={payloads[0].cpus}")  # fmt: skip


if __name__ == "__main__":
    main()
