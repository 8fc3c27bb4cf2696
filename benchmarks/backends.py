"""Every backend on GPT-2 small (random weights), side by side: the issue's benchmark.

Context 128, 128 generated tokens, 2 threads by default; each backend in a fresh
pinned process. Prints prefill, decode, tokens/s, speedup over `hf`, roofline share,
artifact size and agreement with transformers float32.

    .venv/bin/python benchmarks/backends.py [--context 128] [--generation 128] [--threads 2]
"""

from __future__ import annotations

import argparse

from common import jobs_from_yaml, run, table

BACKENDS = """
  - hf
  - {name: hf, dtype: bfloat16, label: hf-bf16}
  - {name: hf-compile, label: hf-compile}
  - {name: nanogpt, label: nanogpt-kv}
  - {name: nanogpt, kv_cache: false, label: nanogpt-nokv}
  - {name: torch-int8, label: torch-int8}
  - {name: onnx, label: onnx}
  - {name: onnx, optimize: true, label: onnx-opt}
  - {name: onnx, quantize: int8, label: onnx-int8}
  - {name: onnx, optimize: true, quantize: int8, label: onnx-opt-int8}
  - {name: onnx, quantize: int8, per_channel: true, label: onnx-int8-pc}
  - {name: onnx, quantize: int4, label: onnx-int4}
  - {name: onnx, fused_attention: true, label: onnx-fused}
  - {name: onnx, fused_attention: true, kv_cache: in_place, label: onnx-fused-inplace}
  - {name: onnx, fused_attention: true, quantize: int8, label: onnx-int8-fused}
  - {name: onnx, fused_attention: true, kv_cache: in_place, quantize: int8,
     label: onnx-int8-inplace}
  - {name: onnx, fused_attention: true, kv_cache: in_place, quantize: int8,
     quantize_lm_head: true, label: onnx-int8-all-inplace}
  - {name: onnx, fused_attention: true, kv_cache: in_place, quantize: int8, per_channel: true,
     reduce_range: true, label: onnx-int8-pc7-inplace}
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--generation", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default=None, help="comma-separated labels to run")
    args = parser.parse_args()
    jobs = jobs_from_yaml(f"""
model: random:gpt2
backends: {BACKENDS}
context_sizes: [{args.context}]
generation_lengths: [{args.generation}]
threads: [{args.threads}]
warmups: 1
repeats: {args.repeats}
fidelity_tokens: 64
""")
    if args.only:
        jobs = [job for job in jobs if job.label in args.only.split(",")]
    payloads = run([job.to_dict() for job in jobs])
    base = next(
        (
            p.metrics.decode_tokens_per_s
            for j, p in zip(jobs, payloads, strict=True)
            if j.label == "hf" and p.status == "done"
        ),
        None,
    )
    rows = []
    for job, payload in zip(jobs, payloads, strict=True):
        if payload.status != "done":
            rows.append(
                [job.label, "failed: " + payload.error.strip().splitlines()[-1][:60]] + [""] * 8
            )
            continue
        m = payload.metrics
        size = f"{m.artifact_bytes / 1e6:.0f} MB" if m.artifact_bytes else "-"
        nan = float("nan")
        rows.append(
            [
                job.label,
                f"{m.prefill_ms_p50:.1f}",
                f"{m.decode_ms_p50:.2f}",
                f"{m.decode_tokens_per_s:.1f}",
                f"{m.decode_tokens_per_s / base:.2f}x" if base else "-",
                f"{m.roofline_fraction:.0%}",
                size,
                f"{m.top1_agreement if m.top1_agreement is not None else nan:.3f}",
                f"{m.mean_kl if m.mean_kl is not None else nan:.2e}",
                f"{m.cv:.1%}",
            ]
        )
    print(
        table(
            [
                "backend",
                "prefill ms",
                "decode ms/tok p50",
                "tok/s",
                "vs hf",
                "roofline",
                "artifact",
                "top-1 agree",
                "mean KL",
                "cv",
            ],
            rows,
        )
    )
    bandwidth = next(p.metrics.bandwidth_bytes_per_s for p in payloads if p.status == "done")
    print(
        f"random:gpt2, context {args.context}, {args.generation} new tokens, {args.threads} threads, "
        f"{args.repeats} repeats; memory read bandwidth {bandwidth / 1e9:.1f} GB/s"
    )


if __name__ == "__main__":
    main()
