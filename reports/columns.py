"""The report's columns: what each shows, its heading, format, and how much it matters.

One vocabulary for the table, markdown, HTML, `--where`, `--sort` and `--columns`:
a column is named by its key (`decode_tokens_per_s`) or its heading (`tok/s`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from whistle_stop.contract.figures import relative_half_width


@dataclass(frozen=True)
class Column:
    key: str
    heading: str
    fmt: str
    rank: int  # 0: shown at 80 columns; 1 from ~100; 2 from ~140 (a narrow terminal drops
    # the higher ranks first, and never cuts a number)


COLUMNS: tuple[Column, ...] = (
    Column("label", "backend", "{}", 0),
    Column("context", "ctx", "{}", 0),
    Column("generation", "gen", "{}", 0),
    Column("threads", "thr", "{}", 1),
    Column("prefill_ms_p50", "prefill ms", "{:.1f}", 0),
    Column("decode_ms_p50", "decode ms", "{:.2f}", 1),
    Column("decode_ms_p90", "p90", "{:.2f}", 2),
    Column("decode_tokens_per_s", "tok/s", "{:.1f}", 0),
    Column("speedup", "speedup", "{:.2f}x", 0),
    Column("speedup_spread", "spread", "{:.0%}", 1),  # of the within-round speedups
    Column("top1_agreement", "top-1", "{:.3f}", 0),
    Column("mean_kl", "KL", "{:.1e}", 0),
    Column("roofline_fraction", "roofline", "{:.0%}", 1),
    Column("roofline_kv_fraction", "roof+KV", "{:.0%}", 2),  # counting the KV cache read
    Column("llc_multiple", "xLLC", "{:.1f}", 2),  # weights a token reads / last-level cache
    Column("e2e_s", "e2e s", "{:.3f}", 2),
    Column("cv", "cv", "{:.1%}", 2),
    Column("flag_count", "flags", "{}", 2),  # `farm show` lists them
    Column("rounds", "rounds", "{}", 2),
    Column("status", "status", "{}", 0),
    Column("key", "key", "{}", 1),  # what `farm show` takes
)
BY_NAME = {c.key: c for c in COLUMNS} | {c.heading: c for c in COLUMNS}
EXTRA = ("sweep", "model", "host")  # joined in front when they vary


# the table shows the median step and prompt under these names' headings: a filter or a
# sort on `decode_ms` works on the figure the reader sees, not on the mean beside it
SHOWN_AS = {"decode_ms": "decode_ms_p50", "prefill_ms": "prefill_ms_p50"}


def resolve(name: str, known: list[str]) -> str:
    """A row key from a column key or heading (`tok/s` -> decode_tokens_per_s)."""
    if SHOWN_AS.get(name) in known:
        return SHOWN_AS[name]
    if name in known:
        return name
    if name in BY_NAME and BY_NAME[name].key in known:
        return BY_NAME[name].key
    raise KeyError(name)


def cell(row: dict[str, Any], column: Column) -> str:
    value = row.get(column.key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column.fmt == "{}" and isinstance(value, float):
        text = f"{value:.4g}"  # a figure without a column of its own: 4 digits, not 17
    else:
        text = column.fmt.format(value)
    if column.key == "cv" and row.get("noisy"):
        text += " noisy"
    if column.key == "status" and row.get("pinning_ok") is False:
        text += " (pinning!)"
    if column.key == "speedup" and row.get("speedup_lo") not in (None, row.get("speedup_hi")):
        # its 95% interval, from the rounds (none for the baseline against itself)
        text += f" ±{relative_half_width(row['speedup_lo'], row['speedup_hi']):.0%}"
    if column.key == "speedup" and row.get("within_noise"):
        text += "~"  # inside the sweep's measured noise floor
    if column.key == "rounds" and row.get("speedup_rounds", value) < value:
        text = f"{row['speedup_rounds']}/{value}"  # the speedup pools the steady rounds only
    if column.key == "roofline_fraction" and (value > 1 or (row.get("llc_multiple") or 99) < 10):
        # above the bound, or weights under 10x the last-level cache: partly served from it,
        # so not a share of DRAM's bandwidth alone
        text += "*"
    return text


def columns_for(rows: list[dict[str, Any]], names: list[str] | None = None) -> list[Column]:
    """The columns to show: `names` if given, else every column, with sweep and host
    in front when the rows span more than one."""
    if names:
        return [BY_NAME.get(n) or Column(n, n, "{}", 0) for n in names]
    extra = [Column(k, k, "{}", 0) for k in EXTRA if len({r.get(k) for r in rows if r.get(k)}) > 1]
    return extra + list(COLUMNS)


def fit(
    columns: list[Column], rows: list[dict[str, Any]], width: int, *, in_order: bool = False
) -> list[Column]:
    """The columns that fit `width` characters: lower ranks first (`in_order`: the order
    given, for columns asked for by name), numbers never cut.

    Only the backend label may be shortened (counted here at up to 18 characters).
    """

    def need(column: Column) -> int:
        cells = [len(cell(row, column)) for row in rows]
        wide = max([len(column.heading), *cells])
        return (min(wide, 18) if column.key == "label" else wide) + 1  # the separator

    chosen: list[Column] = []
    used = 0
    for rank in (None,) if in_order else (0, 1, 2):
        for column in columns:
            if (in_order or column.rank == rank) and used + need(column) <= width:
                chosen.append(column)
                used += need(column)
    return [c for c in columns if c in chosen]
