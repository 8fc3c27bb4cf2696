"""`farm report`: select sweeps and jobs, and turn each job into one flat row.

Rendering (table, markdown, CSV, JSON, HTML) lives in orchestrator/render.py.
"""

from __future__ import annotations

import json
import operator
from collections import defaultdict
from statistics import fmean, median
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from whistle_stop.contract.figures import pooled_log_sd, ratio_interval
from whistle_stop.contract.status import JobStatus
from whistle_stop.db.models import Job, Result, Sweep
from whistle_stop.reports.columns import BY_NAME, resolve

# Every figure a result stores, as a row column (None for a job without a result); the
# raw samples, tokens and violations stay out of rows (`farm show` has them).
NOT_IN_ROWS = {
    "id",
    "job_id",
    "environment_id",
    "worker",
    "cpus",
    "created_at",
    "samples",
    "tokens",
    "pinning_violations",
    "load_extra",
    "machine",
    "flags",
}
FIGURES = tuple(c.name for c in Result.__table__.columns if c.name not in NOT_IN_ROWS)


EMPTY_ROW_KEYS = (
    "sweep",
    "key",
    "label",
    "backend",
    "model",
    "options",
    "context",
    "generation",
    "threads",
    "status",
    *FIGURES,
    "speedup",
    "speedup_spread",
    "llc_multiple",
    "speedup_noise",
    "rounds",
    "speedup_rounds",
    "flag_count",
    "host",
)


class ReportError(LookupError):
    """Nothing to report (no such sweep, empty database, a malformed filter)."""


def find_sweeps(session: Session, names: list[str] | None, *, every: bool = False) -> list[Sweep]:
    """The named sweeps, all of them, or the latest one."""
    if every:
        sweeps = list(session.scalars(select(Sweep).order_by(Sweep.id)))
    elif names:
        sweeps = [find_sweep(session, name) for name in names]
    else:
        sweeps = [find_sweep(session, None)]
    if not sweeps:
        raise ReportError("no sweeps in this database yet; run `farm submit --grid FILE` first")
    return sweeps


def find_sweep(session: Session, name: str | None) -> Sweep:
    """The named sweep, or the latest one."""
    query = select(Sweep).order_by(Sweep.id.desc())
    if name is not None:
        query = select(Sweep).where(Sweep.name == name)
    sweep = session.scalars(query.limit(1)).first()
    if sweep is None:
        if name is None:
            raise ReportError("no sweeps in this database yet; run `farm submit --grid FILE` first")
        known = ", ".join(session.scalars(select(Sweep.name)).all()) or "none"
        raise ReportError(f"no sweep named {name!r}; known sweeps: {known}")
    return sweep


def status_counts(session: Session, sweep: Sweep) -> dict[str, int]:
    """How many of the sweep's jobs are in each state, counted by the database."""
    query = select(Job.status, func.count()).where(Job.sweep_id == sweep.id).group_by(Job.status)
    return {str(status): count for status, count in session.execute(query)}


def result_rows(session: Session, sweeps: list[Sweep], baseline: str) -> list[dict[str, Any]]:
    """One dict per grid cell: sweep, spec fields, figures (None when failed) and the
    speedup. A cell measured in several rounds is one row pooling them (`pool_rounds`)."""
    jobs = session.scalars(
        select(Job)
        .where(Job.sweep_id.in_([sweep.id for sweep in sweeps]))
        .options(selectinload(Job.result).selectinload(Result.environment), selectinload(Job.sweep))
        .order_by(Job.sweep_id, Job.label, Job.context, Job.generation, Job.threads)
    ).all()
    rows = [job_row(job) | {"baseline": baseline, "precision": job.sweep.precision} for job in jobs]
    add_speedup(rows, baseline)
    rows = pool_rounds(rows)
    widen_to_sweep_noise(rows, baseline)
    noise_floor(rows, baseline)
    return rows


def widen_to_sweep_noise(rows: list[dict[str, Any]], baseline: str) -> None:
    """Each speedup's interval with its spread floored at its sweep's pooled noise on one
    within-round ratio (`speedup_noise`: contract/figures.pooled_log_sd over the sweep's
    paths, the baseline's own ratios of 1 left out): a cell whose few rounds agree by luck
    is not given a narrower interval than the host allows."""
    by_label = any(row["label"] == baseline for row in rows)  # as add_speedup chose it
    by_sweep: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        row["speedup_noise"] = None  # every row has the key (csv takes its columns from one)
        if (row["label"] if by_label else row["backend"]) != baseline:
            by_sweep[row["sweep"]].append(row)
    for group in by_sweep.values():
        noise = pooled_log_sd(r["round_speedups"] for r in group)
        for row in group:
            row["speedup_noise"] = noise
            interval = ratio_interval(row["round_speedups"], floor=noise)
            row["speedup_lo"], row["speedup_hi"] = interval or (None, None)


def job_row(job: Job) -> dict[str, Any]:
    result = job.result
    row: dict[str, Any] = {
        "sweep": job.sweep.name,
        "key": job.key,
        "label": job.label,
        "backend": job.backend,
        "model": job.spec.get("model"),
        # canonical text: a series key (farm history) and a --where value alike
        "options": json.dumps(job.spec.get("options") or {}, sort_keys=True),
        "context": job.context,
        "generation": job.generation,
        "threads": job.threads,
        "status": job.status,
        "attempts": job.attempts,
        "error": (job.error or "").strip().splitlines()[-1] if job.error else None,
        "cell": job.cell or job.key,
        "round": job.round or 1,
    }
    for name in FIGURES:
        row[name] = getattr(result, name) if result else None
    weights, llc = row.get("weight_bytes_per_token"), cache_bytes(row)
    row["llc_multiple"] = weights / llc if weights and llc else None  # weights over the LLC
    row["pinning_ok"] = (not result.pinning_violations) if result else None
    row["flags"] = list(result.flags or []) if result else []
    row["flag_count"] = len(row["flags"]) if result else None
    row["host"] = result.environment.hostname if result else None
    row["cpus"] = result.cpus if result else None
    row["worker"] = result.worker if result else job.worker
    # the machine and the software, in every row (as llama-bench's): an export stands alone
    environment = result.environment if result else None
    row["cpu_model"] = environment.cpu_model if environment else None
    row["isa"] = " ".join(environment.cpu_features) if environment else None
    row["versions"] = environment.versions if environment else None
    row["git_revision"] = environment.git_revision if environment else None
    row["git_dirty"] = environment.git_dirty if environment else None
    row["measured_at"] = result.created_at.isoformat(timespec="seconds") if result else None
    return row


def cache_bytes(row: dict[str, Any]) -> int | None:
    """The cache a job's weights could be served from: the LLC the CPU reports, or less
    where reads of a smaller size already streamed at DRAM speed (a VM's share of a shared
    L3); None where neither was measured."""
    return min((b for b in (row.get("llc_bytes"), row.get("dram_from_bytes")) if b), default=None)


def add_speedup(rows: list[dict[str, Any]], baseline: str) -> None:
    """Decode tokens/s against the baseline backend's row in the same sweep, grid cell and
    round: a ratio of two jobs measured minutes apart would measure the neighbours too."""

    def cell(row):
        return (
            row["sweep"],
            row["model"],
            row["context"],
            row["generation"],
            row["threads"],
            row["host"],
            row["round"],
        )

    done = [r for r in rows if r["status"] == JobStatus.DONE]
    reference = {cell(r): r for r in done if r["backend"] == baseline}
    reference |= {cell(r): r for r in done if r["label"] == baseline}  # a label is more exact
    for row in rows:
        base = reference.get(cell(row))
        ok = base and row["decode_tokens_per_s"] and base["decode_tokens_per_s"]
        row["speedup"] = row["decode_tokens_per_s"] / base["decode_tokens_per_s"] if ok else None
        # a ratio is only as steady as its noisier side: a job whose own repeats disagreed
        # (`noisy`) was disturbed while it ran (pooling prefers the rounds without one)
        row["speedup_steady"] = bool(ok and not row["noisy"] and not base["noisy"])


# the interval bounds a pooled row carries (None where a cell has a single round)
INTERVALS = ("speedup_lo", "speedup_hi", "decode_tokens_per_s_lo", "decode_tokens_per_s_hi")
# the figures `farm compare` takes round by round (a round is the unit of independent noise)
ROUND_FIGURES = ("decode_tokens_per_s", "e2e_s", "prefill_ms_p50")
# kept round by round too: the limits view's interval on a roofline share (issue #31)
ROUND_SHARES = ("roofline_fraction", "roofline_kv_fraction")
# figures that are the same in every round (measured in round 1 only) or not timings
NOT_POOLED = {"repeats", "noisy", "remeasured", "artifact_built", "torch_threads"}


def pool_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rounds of each cell as one row: each figure the median of its rounds' figures
    (fidelity, measured in round 1, is that round's), the speedup the median of the
    within-round speedups of the steady rounds (neither job noisy; every round if none
    is), `speedup_spread` the (max - min) / median of all of them."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        cells[(row["sweep"], row["cell"])].append(row)
    pooled = []
    for group in cells.values():
        group.sort(key=lambda r: r["round"])
        pooled.append(_pooled(group))
    return pooled


def _by_round(rounds: list[dict[str, Any]]) -> dict[str, dict[int, Any]]:
    """Each round's figures by its number: two paths pair up on the rounds both finished."""
    return {
        name: {r["round"]: r[name] for r in rounds if r[name] is not None}
        for name in ROUND_FIGURES + ROUND_SHARES
    }


def _pooled(group: list[dict[str, Any]]) -> dict[str, Any]:
    first = group[0]
    done = [r for r in group if r["status"] == JobStatus.DONE]
    steady = [r["speedup"] for r in done if r["speedup"] is not None and r["speedup_steady"]]
    first = {k: v for k, v in first.items() if k != "speedup_steady"}  # a round's, not the cell's
    if len(group) == 1:
        return {
            **first,
            "rounds": 1,
            "speedup_spread": None,
            "round_speedups": [],
            "round_figures": _by_round([first]),
            "speedup_rounds": 1,
            **dict.fromkeys(INTERVALS),  # one round: no interval
        }
    row = {**first, "rounds": len(done)}
    row["status"] = JobStatus.DONE if done else first["status"]
    unfinished = [r for r in group if r["status"] != JobStatus.DONE]
    if done and unfinished:  # shown, not hidden: the pooled figures lack these rounds
        row["error"] = f"{len(unfinished)} of {len(group)} rounds not done: " + ", ".join(
            f"round {r['round']} {r['status']}" for r in unfinished
        )
    for name in FIGURES:
        values = [r[name] for r in done if r[name] is not None]
        if name in NOT_POOLED or not all(isinstance(v, int | float) for v in values):
            row[name] = values[0] if values else None
        else:
            row[name] = median(values) if values else None
    row["noisy"] = any(r["noisy"] for r in done)
    speedups = [r["speedup"] for r in done if r["speedup"] is not None]
    row["round_speedups"] = speedups
    row["round_figures"] = _by_round(done)
    row["speedup_rounds"] = len(steady or speedups)  # how many rounds the speedup pools
    row["speedup"] = median(steady or speedups) if speedups else None
    row["speedup_spread"] = (
        (max(speedups) - min(speedups)) / median(speedups) if len(speedups) > 1 else None
    )
    # 95% intervals from the rounds, every done round counted (contract/figures.py)
    row["speedup_lo"], row["speedup_hi"] = ratio_interval(speedups) or (None, None)
    speeds = [r["decode_tokens_per_s"] for r in done if r["decode_tokens_per_s"]]
    interval = ratio_interval(speeds)
    row["decode_tokens_per_s_lo"], row["decode_tokens_per_s_hi"] = interval or (None, None)
    row["pinning_ok"] = all(r["pinning_ok"] for r in done) if done else None
    row["flags"] = [f"round {r['round']}: {flag}" for r in done for flag in r["flags"]]
    row["flag_count"] = len(row["flags"]) if done else None
    return row


def pooled_samples(sweeps: list[Sweep]) -> dict[tuple[str, str], dict[str, list]]:
    """(sweep name, cell) -> every round's raw samples of that cell, list by list."""
    pooled: dict[tuple[str, str], dict[str, list]] = {}
    for sweep in sweeps:
        for job in sweep.jobs:
            if job.result is None:
                continue
            into = pooled.setdefault((sweep.name, job.cell or job.key), {})
            for name, values in (job.result.samples or {}).items():
                into.setdefault(name, []).extend(values)
    return pooled


def noise_floor(rows: list[dict[str, Any]], baseline: str) -> dict[str, tuple[float, float]]:
    """Per sweep with a control: the range of the control's within-round ratios to the
    baseline. A speedup inside it is marked: the farm cannot tell it from noise."""
    from whistle_stop.contract.jobspec import control_label

    floors: dict[str, list[float]] = defaultdict(list)
    controls = {control_label(baseline)}
    for row in rows:
        if row["label"] in controls and row["status"] == JobStatus.DONE:
            floors[row["sweep"]] += row["round_speedups"] or (
                [row["speedup"]] if row["speedup"] is not None else []
            )
    found = {sweep: (min(values), max(values)) for sweep, values in floors.items() if values}
    for row in rows:
        floor = found.get(row["sweep"])
        width = max(abs(floor[0] - 1), abs(floor[1] - 1)) if floor else None
        row["within_noise"] = bool(
            width is not None
            and row["speedup"] is not None
            and row["label"] not in controls | {baseline}  # the floor, and its own reference
            and abs(row["speedup"] - 1) <= width
        )
    return found


OPERATORS = {  # longest first, so `<=` is not read as `<`
    "!=": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
}


def apply_filters(
    rows: list[dict[str, Any]], *, backends: list[str], hosts: list[str], where: list[str]
) -> list[dict[str, Any]]:
    """Keep rows whose backend (name or label) and host match, and every `--where` clause.

    A clause is COLUMN OP VALUE with OP among = != < <= > >=, COLUMN a row key or a
    heading (`tok/s`); an unknown backend, host or column is an error naming the known.
    """
    _known("--backend", backends, {r["backend"] for r in rows} | {r["label"] for r in rows})
    _known("--host", hosts, {r["host"] for r in rows if r["host"]})
    conditions = [_condition(clause, rows) for clause in where]
    return [
        row
        for row in rows
        if (not backends or row["backend"] in backends or row["label"] in backends)
        and (not hosts or row["host"] in hosts)
        and all(test(row) for test in conditions)
    ]


def _known(option: str, wanted: list[str], known: set[str]) -> None:
    unknown = [name for name in wanted if name not in known]
    if unknown and known:
        raise ReportError(
            f"{option} {unknown[0]!r} is not in these sweeps; known: {', '.join(sorted(known))}"
        )


def _condition(clause: str, rows: list[dict[str, Any]]):
    keys = list(rows[0]) if rows else list(EMPTY_ROW_KEYS)
    symbol = next((s for s in OPERATORS if s in clause), None)
    if symbol is None:
        raise ReportError(f"--where {clause!r}: write COLUMN=VALUE (or != < <= > >=)")
    name, _, text = clause.partition(symbol)
    compare = OPERATORS[symbol]
    try:
        key = resolve(name.strip(), keys)
    except KeyError:
        raise ReportError(
            f"--where {clause!r}: no column {name.strip()!r}; use one of: {', '.join(keys)}"
        ) from None
    text = text.strip()
    sample = next((r[key] for r in rows if r[key] is not None), None)
    if isinstance(sample, int | float) and not isinstance(sample, bool):
        value: Any = _shown_number(clause, key, text)
    else:
        value = text
        if symbol not in ("=", "!="):
            raise ReportError(f"--where {clause!r}: {key} is text; use = or !=")

    def test(row: dict[str, Any]) -> bool:
        cell = row[key]
        if cell is None:
            return symbol == "!="
        return bool(compare(cell if isinstance(value, float) else str(cell), value))

    return test


def _shown_number(clause: str, key: str, text: str) -> float:
    """A number in the unit the table shows: `roofline>25` (or 25%) is 25% where the
    column shows percent; `speedup>0.9x` takes the x it shows."""
    column = BY_NAME.get(key)
    percent = column is not None and "%" in column.fmt
    bare = text.removesuffix("%") if percent else text.removesuffix("x")
    try:
        value = float(bare)
    except ValueError:
        unit = " (in %)" if percent else ""
        raise ReportError(f"--where {clause!r}: {key} is a number{unit}, not {text!r}") from None
    return value / 100 if percent else value


def check_baseline(rows: list[dict[str, Any]], baseline: str) -> None:
    """An unknown --baseline is an error (every speedup would silently be '-')."""
    known = {r["backend"] for r in rows} | {r["label"] for r in rows}
    if rows and baseline not in known and baseline != "hf":
        raise ReportError(
            f"--baseline {baseline!r} is not in these sweeps; known: {', '.join(sorted(known))}"
        )


def sort_rows(rows: list[dict[str, Any]], spec: list[str]) -> list[dict[str, Any]]:
    """`--sort tok/s` (ascending) or `--sort -tok/s` (descending); several apply in turn."""
    keys = list(rows[0]) if rows else []
    for item in reversed(spec):
        descending = item.startswith("-")
        try:
            key = resolve(item.lstrip("-"), keys)
        except KeyError:
            raise ReportError(
                f"--sort {item!r}: no such column; use one of: {', '.join(keys)}"
            ) from None
        present = [r for r in rows if r[key] is not None]
        missing = [r for r in rows if r[key] is None]  # always last
        present.sort(key=lambda r: r[key], reverse=descending)
        rows = present + missing
    return rows


def group_rows(rows: list[dict[str, Any]], field: str | None) -> dict[str, list[dict[str, Any]]]:
    if field is None:
        return {"": rows}
    keys = list(rows[0]) if rows else list(EMPTY_ROW_KEYS)
    try:
        field = resolve(field, keys)  # a heading (`ctx`) as well as a key, as in --where
    except KeyError:
        raise ReportError(
            f"--group-by {field!r}: not a column; use one of: {', '.join(keys)}"
        ) from None
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row[field]].append(row)
    return {f"{field}={value}": groups[value] for value in sorted(groups, key=_natural)}


def _natural(value: Any) -> tuple:
    """Numbers by value (32 before 128), before text; None last."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value, "")
    return (1 if value is not None else 2, 0, str(value))


def pivot(rows: list[dict[str, Any]], spec: str) -> tuple[list[str], list[list[Any]], str]:
    """`ROWS:COLUMNS:VALUE`, e.g. label:generation:tok/s -> headings, cells, and a line
    saying what a cell is: the mean of VALUE over the matching rows (None if none)."""
    parts = spec.split(":")
    keys = list(rows[0]) if rows else list(EMPTY_ROW_KEYS)
    try:
        if len(parts) != 3:
            raise KeyError(spec)
        row_key, column_key, value_key = (resolve(part, keys) for part in parts)
    except KeyError:
        raise ReportError(
            f"--pivot {spec!r}: write ROWS:COLUMNS:VALUE with columns among: {', '.join(keys)}"
        ) from None
    values = [r[value_key] for r in rows if r[value_key] is not None]
    if any(not isinstance(v, int | float) or isinstance(v, bool) for v in values):
        raise ReportError(
            f"--pivot {spec!r}: {value_key} is not a number; pick a figure "
            "such as decode_tokens_per_s"
        )
    cells: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row[value_key] is not None:
            cells[(row[row_key], row[column_key])].append(row[value_key])
    row_values = sorted({row[row_key] for row in rows}, key=_natural)
    column_values = sorted({row[column_key] for row in rows}, key=_natural)
    headings = [f"{row_key} \\ {column_key}", *map(str, column_values)]
    others = [
        k
        for k in ("sweep", "model", "context", "generation", "threads", "host")
        if k not in (row_key, column_key) and len({r[k] for r in rows if r[k] is not None}) > 1
    ]
    meaning = f"each cell: mean {value_key} over the matching jobs" + (
        f" (averaged over {', '.join(others)})" if others else ""
    )
    body = [
        [
            value,
            *(fmean(cells[(value, c)]) if cells.get((value, c)) else None for c in column_values),
        ]
        for value in row_values
    ]
    return headings, body, meaning
