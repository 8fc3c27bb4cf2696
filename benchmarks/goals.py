"""Our paths against the memory-bandwidth limit and the engines, goal by goal (issue #17).

Reads sweeps of `examples/engines.yaml` (every figure measured by the farm: each job a
fresh pinned process, rounds interleaved, bandwidth measured before and after each job)
and prints each goal beside its target, met or not:

  1. best int8 path (top-1 >= 0.95): >= 75% of its roofline, >= 1.2x the fastest int8 engine
  2. best 4-bit path: >= 70% of its roofline, >= 1.5x the fastest 4-bit engine
  3. float32: >= 85% of its roofline, each float32 path of ours
  4. robust speed: decode medians across sweeps within 15%, p90/p50 decode step < 1.2,
     non-weight time per decode step <= 1 ms (step p50 minus the weights' bytes at the
     bandwidth measured beside the job)
  5. time to first token at context 512 <= 0.5x transformers eager's
  6. decode at context 512 within 1.25x of context 32, every quantized path of ours (two
     farm jobs minutes apart: where the host's bandwidth moves, `long_context.py --labels`
     times a path's two contexts alternately in one process)

Context 128 unless said. Engines whose extra is missing, or that failed, are left out of
"fastest engine" and said so.

    .venv/bin/python benchmarks/goals.py --db engines.db            # every sweep in it
    .venv/bin/python benchmarks/goals.py --run 3 --db engines.db    # run engines.yaml 3x first
    .venv/bin/python benchmarks/goals.py --run 3 --db speed.db --contexts 128 \
        --labels onnx-int8-all,onnx-int4-b128-p8    # goal 4's spread only: minutes, not hours
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT, edited_grid, submit, table

from whistle_stop.db.session import open_readonly
from whistle_stop.reports.query import find_sweeps, result_rows

OURS = {
    "int8": [
        "onnx-int8-all",
        "onnx-int8-nbits",
        "onnx-int8-all-kv8",
        # native's int8 path is 128 weights a scale: 8% fewer bytes a token than 32 (llama.cpp
        # q8_0's block, kept in engines.yaml as native-q8 to compare) and a 1.6x faster
        # prompt, for top-1 0.992 against 0.996 (this file's sweep on a Zen 4 VM)
        "native-q8-b128",
        "native-q8-b128-kv8",
    ],
    "4-bit": [
        "onnx-int4-all",
        "onnx-int4-b128-p8",
        "onnx-int4-b128-p8-kv8",
        "native-q4",
        "native-q4-b128",
        "native-q4-b128-kv8",
    ],
    "fp32": ["onnx-fp32", "native-f32"],
}
ENGINES = {
    "int8": ["ct2-int8", "ct2-int8-f32", "llama-q8_0", "ov-int8", "ov-int8-py"],
    "4-bit": ["llama-q4_0", "llama-q4_K_M", "ov-int4", "ov-int4-all"],
}
BASELINE = "hf"


def run_sweeps(
    count: int,
    db: Path,
    labels: list[str] | None,
    contexts: list[int] | None,
    rounds: int | None = None,
):
    """engines.yaml `count` times, as separate sweeps; only `labels` (and the baseline and
    its control) and `contexts` when given, and `rounds` instead of the file's."""
    directory = Path(tempfile.mkdtemp(prefix="goals-"))
    for index in range(1, count + 1):
        more = {"rounds": rounds} if rounds else {}
        data = edited_grid(
            ROOT / "examples/engines.yaml", labels, contexts, name=f"engines-{index}", **more
        )
        print(f"sweep {index}/{count}: {data['name']} in {directory}", flush=True)
        submit(data, directory, db)


def cells(rows: list[dict]) -> dict[tuple[str, str, int], dict]:
    """(sweep, label, context) -> the pooled row, done rows only."""
    return {(r["sweep"], r["label"], r["context"]): r for r in rows if r["status"] == "done"}


def verdict(value: float | None, target: float, at_least: bool) -> str:
    if value is None:
        return "n/a"
    return "met" if (value >= target if at_least else value <= target) else "NOT met"


def read_bandwidth(row: dict) -> float | None:
    """The mean of the read bandwidths measured before and after the job, bytes/s."""
    before, after = row["bandwidth_before_bytes_per_s"], row["bandwidth_after_bytes_per_s"]
    return (before + after) / 2 if before and after else None


def non_weight_ms(row: dict) -> float | None:
    """Decode step p50 minus the time its weights take to stream at the bandwidth
    measured beside the job."""
    bandwidth = read_bandwidth(row)
    if not (row["decode_ms_p50"] and row["weight_bytes_per_token"] and bandwidth):
        return None
    return row["decode_ms_p50"] - row["weight_bytes_per_token"] / bandwidth * 1e3


def best(found: dict, sweep: str, labels: list[str], context: int = 128, fidelity=0.95):
    """The fastest of `labels` in this sweep at this context with top-1 >= fidelity."""
    candidates = [
        found[(sweep, label, context)] for label in labels if (sweep, label, context) in found
    ]
    good = [r for r in candidates if (r["top1_agreement"] or 0) >= fidelity]
    return max(good, key=lambda r: r["decode_tokens_per_s"], default=None)


def goal_lines(found: dict, sweep: str) -> list[list[str]]:
    lines = []

    def add(goal, path, what, value, target, at_least=True, fmt="{:.2f}"):
        shown = "-" if value is None else fmt.format(value)
        lines.append(
            [
                goal,
                path,
                what,
                shown,
                ("≥ " if at_least else "≤ ") + fmt.format(target),
                verdict(value, target, at_least),
            ]
        )

    for goal, kind, share, lead in (("1", "int8", 0.75, 1.2), ("2", "4-bit", 0.70, 1.5)):
        ours = best(found, sweep, OURS[kind], fidelity=0.95 if kind == "int8" else 0.0)
        engines = [found[(sweep, e, 128)] for e in ENGINES[kind] if (sweep, e, 128) in found]
        fastest = max(engines, key=lambda r: r["decode_tokens_per_s"], default=None)
        name = ours["label"] if ours else f"(no {kind} path done)"
        add(goal, name, "roofline share", ours and ours["roofline_fraction"], share, fmt="{:.0%}")
        ratio = ours and fastest and ours["decode_tokens_per_s"] / fastest["decode_tokens_per_s"]
        versus = (
            f"/ {fastest['label']} ({fastest['decode_tokens_per_s']:.0f} tok/s)" if fastest else ""
        )
        add(goal, name, f"speed {versus}", ratio, lead, fmt="{:.2f}x")
    for label in OURS["fp32"]:  # each: the fastest at 128 is a coin toss among equals
        if fp32 := found.get((sweep, label, 128)):
            add("3", label, "roofline share", fp32["roofline_fraction"], 0.85, fmt="{:.0%}")
    for kind in ("int8", "4-bit"):
        ours = best(found, sweep, OURS[kind], fidelity=0.0)
        if ours is None:
            continue
        tail = ours["decode_ms_p90"] / ours["decode_ms_p50"] if ours["decode_ms_p50"] else None
        add("4", ours["label"], "decode p90/p50", tail, 1.2, at_least=False)
        add("4", ours["label"], "non-weight ms/step", non_weight_ms(ours), 1.0, at_least=False)
        eager = found.get((sweep, BASELINE, 512))
        long = found.get((sweep, ours["label"], 512))
        ttft = long and eager and long["prefill_ms_p50"] / eager["prefill_ms_p50"]
        add("5", ours["label"], "TTFT ctx 512 / eager's", ttft, 0.5, at_least=False)
    for label in OURS["int8"] + OURS["4-bit"]:  # goal 6 holds for every quantized path
        short, long = found.get((sweep, label, 32)), found.get((sweep, label, 512))
        if short and long and short["decode_ms_p50"]:
            flat = long["decode_ms_p50"] / short["decode_ms_p50"]
            add("6", label, "decode ctx 512 / ctx 32", flat, 1.25, at_least=False)
    return sorted(lines, key=lambda line: line[0])  # by goal; stable: int8 before 4-bit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", type=Path, required=True, help="the sweeps' database")
    parser.add_argument("--run", type=int, default=0, help="first run engines.yaml N times")
    parser.add_argument("--labels", help="with --run: only these backends (comma-separated)")
    parser.add_argument("--contexts", help="with --run: only these contexts (comma-separated)")
    parser.add_argument("--rounds", type=int, help="with --run: rounds (engines.yaml's: 3)")
    args = parser.parse_args()
    if args.run:
        labels = args.labels.split(",") if args.labels else None
        contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else None
        run_sweeps(args.run, args.db, labels, contexts, args.rounds)
    with open_readonly(str(args.db))() as session:
        sweeps = find_sweeps(session, None, every=True)
        rows = result_rows(session, sweeps, BASELINE)
    found = cells(rows)
    names = [s.name for s in sweeps]
    for name in names:
        failed = sorted(
            {r["label"] for r in rows if r["sweep"] == name and r["status"] == "failed"}
        )
        print(f"\nsweep {name}" + (f" (failed: {', '.join(failed)})" if failed else ""))
        print(table(["goal", "path", "figure", "value", "target", ""], goal_lines(found, name)))
    if len(names) > 1:  # goal 4's first part: the same path's decode speed, sweep to sweep
        # beside it, what the speed follows on a shared host: the bandwidth read before and
        # after each job, and the share of it the path reached (steadier where it is the limit)
        print(
            "\ngoal 4: decode tok/s at context 128 across sweeps (target: spread < 15%),"
            " then roofline share and GB/s read beside the job"
        )
        lines = []
        for kind in ("int8", "4-bit"):
            for label in OURS[kind]:
                runs = [found[(n, label, 128)] for n in names if (n, label, 128) in found]
                if len(runs) < 2:
                    continue
                speeds = [r["decode_tokens_per_s"] for r in runs]
                spread = (max(speeds) - min(speeds)) / statistics.median(speeds)
                shares = "/".join(f"{r['roofline_fraction'] or 0:.0%}" for r in runs)
                read = "/".join(f"{(read_bandwidth(r) or 0) / 1e9:.0f}" for r in runs)
                lines.append(
                    [
                        label,
                        "/".join(f"{s:.1f}" for s in speeds),
                        f"{spread:.1%}",
                        verdict(spread, 0.15, at_least=False),
                        shares,
                        read,
                    ]
                )
        print(table(["path", "tok/s", "spread", "", "share", "GB/s"], lines))


if __name__ == "__main__":
    main()
