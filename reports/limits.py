"""`farm report --view limits`: issue #31's goals for the native engine, each beside its
target, from sweeps of examples/sizes.yaml (a `models:` axis) and the neighbour
benchmark's `<tag>-quiet` / `<tag>-busy` pairs:

  1. native int8 and 4-bit >= 85% of the roofline measured beside the job, judged only
     where the weights a token reads are >= 10x the last-level cache (else partly cache),
     or the size from which reads streamed at DRAM speed where that is smaller;
     the roofline of the bytes a step reads: its weights and its KV cache (worker/
     roofline.py), the weights' share alone beside it;
  2. >= 1.3x llama.cpp q8_0 (int8) and >= 1.6x q4_0 (4-bit), every model and context;
  3. 4-bit: the fastest native 4-bit path at a mean KL at or below q4_K_M's runs
     >= 1.5x q4_K_M's tok/s;
  4. beside a busy loop on one of the job's CPUs: median step <= 2.3x the quiet median,
     mean step <= 1.3x the median.

Ratios of two paths are the median of their within-round ratios, with the 95% interval
of those (contract/figures.py) where the rounds pair up; a roofline share the median of
its rounds' shares, with the 95% interval of those. A verdict is `met` or `NOT met`
only where the whole interval is on one side of the target, else `unknown`.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from typing import Any

from whistle_stop.contract.figures import ratio_interval
from whistle_stop.contract.status import JobStatus
from whistle_stop.reports.render import to_markdown, wrap_prose

Rows = list[dict[str, Any]]
SHARE, LLC_MULTIPLE = 0.85, 10
RIVAL = {8: ("q8_0", 1.3), 4: ("q4_0", 1.6)}  # bits -> llama.cpp's quant, the lead asked
K_QUANT, K_LEAD = "q4_K_M", 1.5
STEP_MEDIAN, STEP_TAIL = 2.3, 1.3
VERDICTS = ["met", "NOT met", "unknown", "not judged: cache", "n/a"]


TITLES = {
    "1": f"Goal 1: native int8 and 4-bit ≥ {SHARE:.0%} of the roofline measured beside the job\n"
    f"(judged where a token's weights are ≥ {LLC_MULTIPLE}x the cache: the LLC, or the size\n"
    "from which reads ran at DRAM speed where smaller; on the bytes a step reads:\n"
    "+KV, its weights and KV cache; weights: theirs alone)",
    "2": "Goal 2: ≥ 1.30x llama.cpp q8_0 (int8) and ≥ 1.60x q4_0 (4-bit), tok/s",
    "3": f"Goal 3: 4-bit at a mean KL at or below q4_K_M's, ≥ {K_LEAD:.2f}x q4_K_M's tok/s",
    "4": f"Goal 4: beside a busy loop on one of the job's CPUs: median step ≤ {STEP_MEDIAN}x\n"
    f"the quiet median, mean step ≤ {STEP_TAIL}x the median",
}
HEADINGS = {  # the targets are in the titles: a column of them would not fit 80 columns
    "1": ["cell", "path (weights/LLC)", "weights", "+KV", "95%", ""],
    "2": ["cell", "path / llama.cpp", "tok/s", "95%", ""],
    "3": ["cell", "path / q4_K_M", "tok/s", "95%", ""],
    "4": ["run: path ctx", "figure", "value", ""],
}


def limits(rows: Rows, names: list[str], baseline: str) -> str:
    """One table per goal (each fits 80 columns); the KL behind goal 3 under its table."""
    done = [r for r in rows if r["status"] == JobStatus.DONE]
    tables: dict[str, list[list[str]]] = defaultdict(list)
    places: dict[tuple, list[dict]] = defaultdict(list)
    notes: list[str] = []  # the KL behind goal 3's picks
    for row in done:
        if not row["sweep"].endswith(("-quiet", "-busy")):
            places[(row["sweep"], row["model"], row["context"])].append(row)
    judged = _faithful_where_real(done)
    for (_, model, context), here in sorted(places.items(), key=_order):
        where = f"{model.split(':')[-1]} ctx {context}"
        # a model trained here is for fidelity: at 9M parameters its speed is not the
        # engine at the limit, so its lines are shown in brackets and not counted
        lines: dict[str, list[list[str]]] = defaultdict(list)
        for bits in (8, 4):
            ours = _fastest([r for r in here if _native_bits(r) == bits])
            if ours is None:
                continue
            lines["1"] += _roofline(where, ours)
            quant, lead = RIVAL[bits]
            rival = next((r for r in here if _llama(r) == quant), None)
            if rival:
                ratio, interval = paired(ours, rival)
                what = f"{ours['label']} / {quant}"
                lines["2"].append([where, *_figure(what, ratio, lead, interval)])
        lines["3"], kl = _at_equal_fidelity(where, here, judged)
        notes += kl
        for goal, kept in lines.items():
            tables[goal] += (
                [_bracketed(line) for line in kept] if model.startswith("trained:") else kept
            )
    tables["4"] += _neighbour(done)
    parts = [_machine(done)]
    for goal, title in TITLES.items():
        if tables[goal]:
            table = to_markdown(HEADINGS[goal], tables[goal])
            parts.append(f"{title}\n\n{table}\n{_tally(tables[goal])}\n")
    told = sorted({f"- {label}: {kl}" for label, kl in judged.items() if kl}) + notes
    if told and tables["3"]:
        parts.append("Goal 3's mean KL against float32:\n" + "\n".join(told) + "\n")
    return wrap_prose("\n".join(parts), 80)


def _roofline(where: str, ours: dict) -> list[list[str]]:
    """Goal 1's line: judged on the share counting the KV cache where the backend said
    its width (a step cannot read less), else on the weights' share; with rounds, on
    the 95% interval of the rounds' shares (each divides by the bandwidth measured
    beside its own job, which moves between jobs on some hosts)."""
    weights, multiple = ours["roofline_fraction"], ours.get("llc_multiple")
    with_kv = ours.get("roofline_kv_fraction")
    what = f"{ours['label']} ({_times(multiple)})"
    shown = ["-" if share is None else f"{share:.0%}" for share in (weights, with_kv)]
    if multiple is None or multiple < LLC_MULTIPLE:
        return [[where, what, *shown, "", "not judged: cache"]]
    judged = "roofline_kv_fraction" if with_kv else "roofline_fraction"
    rounds = list(ours.get("round_figures", {}).get(judged, {}).values())
    interval = ratio_interval(rounds) if len(rounds) >= 2 else None
    _, _, bounds, verdict = _figure(what, ours[judged], SHARE, interval, fmt="{:.0%}")
    return [[where, what, *shown, bounds, verdict]]


def _faithful_where_real(done: Rows) -> dict[str, str | None]:
    """Native 4-bit labels judged against q4_K_M on a model trained here (examples/
    four-bit.yaml): label -> how they compared where the KL is at or below q4_K_M's in
    every such cell they ran in, else None.
    Random weights' KL says little about what quantisation costs on a real model."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for row in done:
        if row["model"].startswith("trained:") and row["mean_kl"] is not None:
            cells[(row["sweep"], row["model"], row["context"])].append(row)
    verdicts: dict[str, list[str | None]] = defaultdict(list)
    for (_, model, _), here in cells.items():
        k_quant = next((r for r in here if _llama(r) == K_QUANT), None)
        for row in here:
            if k_quant and _native_bits(row) == 4:
                kl, limit = row["mean_kl"], k_quant["mean_kl"]
                told = f"KL {kl:.1e} vs {limit:.1e} on {model}"
                verdicts[row["label"]].append(told if kl <= limit else None)
    return {label: told[-1] if all(told) else None for label, told in verdicts.items()}


def _at_equal_fidelity(
    where: str, here: list[dict], judged: dict[str, str | None]
) -> tuple[list[list[str]], list[str]]:
    """Goal 3: the fastest native 4-bit path whose KL is at or below q4_K_M's: judged on a
    trained model where one was swept (its speed then taken in this cell), else here.
    Its line, and the KL that chose it where that is not one of `judged`'s."""
    k_quant = next((r for r in here if _llama(r) == K_QUANT), None)
    if k_quant is None:
        return [], []
    trained = here[0]["model"].startswith("trained:")
    if judged and not trained:
        ours = _fastest([r for r in here if judged.get(r["label"]) and _native_bits(r) == 4])
        if ours is None:
            none = "none of its paths here"
            return [[where, "KL judged on a trained model", none, "", "n/a"]], []
        ratio, interval = paired(ours, k_quant)
        return [[where, *_figure(ours["label"], ratio, K_LEAD, interval)]], []
    if k_quant["mean_kl"] is None:
        return [], []
    faithful = [
        r
        for r in here
        if _native_bits(r) == 4 and r["mean_kl"] is not None and r["mean_kl"] <= k_quant["mean_kl"]
    ]
    ours = _fastest(faithful)
    if ours is None:
        closest = min(
            (r["mean_kl"] for r in here if _native_bits(r) == 4 and r["mean_kl"]), default=None
        )
        note = f"none: best native KL {closest:.1e}" if closest else "no native 4-bit KL"
        return [[where, f"KL ≤ q4_K_M's {k_quant['mean_kl']:.1e}", note, "", "NOT met"]], []
    ratio, interval = paired(ours, k_quant)
    told = f"- {where}: {ours['label']} {ours['mean_kl']:.1e} vs q4_K_M {k_quant['mean_kl']:.1e}"
    said = judged.get(ours["label"])  # a trained cell's pick: its KL is already in `judged`
    return [[where, *_figure(ours["label"], ratio, K_LEAD, interval)]], [] if said else [told]


def _neighbour(done: Rows) -> list[list[str]]:
    """Goal 4: each path of a `<tag>-busy` sweep against the same cell of `<tag>-quiet`.
    The goal is the native engine's; llama.cpp's lines are there to compare with: their
    verdicts in brackets, left out of the tally."""
    quiet = {
        (r["sweep"].removesuffix("-quiet"), _cell(r)): r
        for r in done
        if r["sweep"].endswith("-quiet")
    }
    lines = []
    for busy in sorted(done, key=lambda r: (r["sweep"], r["label"])):
        if not busy["sweep"].endswith("-busy"):
            continue
        tag = busy["sweep"].removesuffix("-busy")
        calm = quiet.get((tag, _cell(busy)))
        where = f"{tag}: {busy['label']} ctx {busy['context']}"
        rival = busy["backend"] != "native"
        if calm and calm["decode_ms_p50"] and busy["decode_ms_p50"]:
            ratio = busy["decode_ms_p50"] / calm["decode_ms_p50"]
            what = f"busy/quiet median ({calm['decode_ms_p50']:.2f} ms)"
            figure = _figure(what, ratio, STEP_MEDIAN, None, at_least=False)
            line = [where, *_no_interval(figure)]
            lines.append(_bracketed(line) if rival else line)
        if busy["decode_ms"] and busy["decode_ms_p50"]:
            tail = busy["decode_ms"] / busy["decode_ms_p50"]
            figure = _figure("busy mean / median", tail, STEP_TAIL, None, at_least=False)
            line = [where, *_no_interval(figure)]
            lines.append(_bracketed(line) if rival else line)
    return lines


def _bracketed(line: list[str]) -> list[str]:
    """A line shown to compare with, not counted: its verdict in brackets."""
    return [*line[:-1], f"({line[-1]})"]


def paired(a: dict, b: dict) -> tuple[float | None, tuple[float, float] | None]:
    """a's decode tok/s over b's: the median of the within-round ratios over the rounds
    both finished, and their 95% interval (a sweep stopped mid-round leaves one path a
    round the other lacks); the pooled medians' ratio, without one, where fewer than two
    rounds pair up."""
    x = a.get("round_figures", {}).get("decode_tokens_per_s", {})
    y = b.get("round_figures", {}).get("decode_tokens_per_s", {})
    ratios = [x[n] / y[n] for n in sorted(x.keys() & y.keys()) if x[n] and y[n]]
    if len(ratios) >= 2:
        return statistics.median(ratios), ratio_interval(ratios)
    if a["decode_tokens_per_s"] and b["decode_tokens_per_s"]:
        return a["decode_tokens_per_s"] / b["decode_tokens_per_s"], None
    return None, None


def _figure(what, value, target, interval, *, at_least=True, fmt="{:.2f}x") -> list[str]:
    """[what, value, its interval, met / NOT met / unknown]: with an interval, the whole
    of it must be on one side of the target (a ratio of two noisy paths whose interval
    holds the target has not shown either), else the value decides."""
    shown = "-" if value is None else fmt.format(value)
    bounds = f"{fmt.format(interval[0])}-{fmt.format(interval[1])}" if interval else ""
    if value is None:
        return [what, shown, bounds, "n/a"]
    low, high = interval or (value, value)
    if at_least:
        verdict = "met" if low >= target else "NOT met" if high < target else "unknown"
    else:
        verdict = "met" if high <= target else "NOT met" if low > target else "unknown"
    return [what, shown, bounds, verdict]


def _tally(lines: list[list[str]]) -> str:
    """How a goal's verdicts came out, e.g. `met 13, NOT met 2, unknown 1 (of 16)`;
    bracketed lines (`(met)`: llama.cpp's, or a model trained here for its KL, whose 9M
    parameters' speed is not the engine's at the limit) are not counted."""
    counts = Counter(line[-1] for line in lines)
    said = [f"{verdict} {counts[verdict]}" for verdict in VERDICTS if counts[verdict]]
    why = "; unknown: the 95% interval holds the target" if counts["unknown"] else ""
    ours = sum(counts[verdict] for verdict in VERDICTS)
    rivals = (
        "; (bracketed): llama.cpp's, or the model trained for fidelity's: not counted"
        if ours < len(lines)
        else ""
    )
    counted = f"{', '.join(said)} (of {ours})" if ours else "none counted"
    return f"verdicts: {counted}{why}{rivals}"


def _no_interval(figure: list[str]) -> list[str]:
    what, shown, _, verdict = figure
    return [what, shown, verdict]


def _machine(done: Rows) -> str:
    """The CPU, its ISA's vector extensions, the LLC and the bandwidth measured beside the jobs."""
    if not done:
        return "no finished jobs"
    first = done[0]
    isa = [f for f in (first.get("isa") or "").split() if f.startswith(("avx", "amx"))]
    llc, dram_from = first.get("llc_bytes"), first.get("dram_from_bytes")
    reads = [r["bandwidth_bytes_per_s"] for r in done if r.get("bandwidth_bytes_per_s")]
    bandwidth = (
        f"read {min(reads) / 1e9:.0f}-{max(reads) / 1e9:.0f} GB/s beside the jobs" if reads else ""
    )
    cache = f"; LLC {llc / 2**20:.0f} MiB" if llc else ""
    if dram_from and (not llc or dram_from < llc):
        cache += f", DRAM speed from {dram_from / 2**20:.0f} MiB"
    # two lines: a CPU's AVX-512 flags alone take half of 80 columns
    return f"{first.get('cpu_model')} ({' '.join(isa) or 'no AVX'}){cache}\n{bandwidth}\n"


def _native_bits(row: dict) -> int | None:
    return json.loads(row["options"]).get("bits") if row["backend"] == "native" else None


def _llama(row: dict) -> str | None:
    return json.loads(row["options"]).get("quant") if row["backend"] == "llama-cpp" else None


def _fastest(rows: Rows) -> dict | None:
    return max(rows, key=lambda r: r["decode_tokens_per_s"] or 0, default=None)


def _cell(row: dict) -> tuple:
    return (row["label"], row["model"], row["context"], row["generation"], row["threads"])


def _times(multiple: float | None) -> str:
    return "?x" if multiple is None else f"{multiple:.1f}x"


def _order(item) -> tuple:
    (sweep, model, context), here = item
    weights = max((r.get("weight_bytes_per_token") or 0 for r in here), default=0)
    return (sweep, weights, model, context)
