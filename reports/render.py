"""Rows -> text: a rich table that fits the terminal, markdown, CSV, JSON, or a
self-contained HTML page with the plots embedded as data URIs."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import textwrap
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from whistle_stop.contract.status import JobStatus
from whistle_stop.reports.columns import Column, cell, columns_for, fit

FORMATS = ("table", "markdown", "csv", "json", "html")


def failures(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"failed: {row['label']} ctx={row['context']} gen={row['generation']} "
        f"(key {row['key']}): {row['error']}"
        for row in rows
        if row["status"] == JobStatus.FAILED
    ]


def wrap_prose(text: str, width: int) -> str:
    """Lines of a view's prose wrapped to `width`, tables left whole: a table's rows
    (`|`) must stay one line each, so a view is printed unwrapped and its prose wrapped
    here. A bullet's continuation lines are indented under its text."""
    lines = []
    for line in text.split("\n"):
        if len(line) <= width or line.lstrip().startswith("|"):
            lines.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip())]
        hang = lead + ("  " if line.lstrip().startswith(("- ", "* ")) else "")
        # a path or a command stays whole, even past the width
        lines += textwrap.wrap(
            line.lstrip(),
            width,
            initial_indent=lead,
            subsequent_indent=hang,
            break_on_hyphens=False,
            break_long_words=False,
        )
    return "\n".join(lines)


def to_markdown(headings: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def to_table(
    title: str, columns: list[Column], body: list[list[str]], styles=None, width: int | None = None
) -> Table:
    """A compact table; only the first (label) column may be shortened, never a number.

    With `width`, the first column gets what the others leave, so nothing else is cut."""
    # columns one space apart (the box's separator), no padding: 9 columns fit in 80
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
    needs = [max([len(c.heading), *(len(line[i]) for line in body)]) for i, c in enumerate(columns)]
    room = None if width is None else max(12, width - sum(n + 1 for n in needs[1:]))
    for index, (column, need) in enumerate(zip(columns, needs, strict=True)):
        if index == 0:
            table.add_column(
                column.heading,
                justify="left",
                no_wrap=True,
                overflow="ellipsis",
                min_width=min(need, 12),
                max_width=room,
            )
        else:
            table.add_column(column.heading, justify="right", no_wrap=True, min_width=need)
    for index, line in enumerate(body):
        table.add_row(*map(Text, line), style=(styles or {}).get(index))
    return table


def render_rows(
    rows: list[dict[str, Any]],
    fmt: str,
    title: str,
    *,
    width: int = 80,
    names: list[str] | None = None,
) -> str | Table:
    """The per-job report in one format: text, or a rich Table for a terminal `width` wide."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else EMPTY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    columns = columns_for(rows, names)
    if fmt == "markdown":
        body = [[cell(row, c) for c in columns] for row in rows]
        notes = failures(rows)
        headings = [c.heading for c in columns]
        return to_markdown(headings, body) + ("\n" + "\n".join(notes) + "\n" if notes else "")
    shown = fit(columns, rows, width, in_order=bool(names))
    body = [[cell(row, c) for c in shown] for row in rows]
    styles = {i: "red" for i, row in enumerate(rows) if row["status"] == JobStatus.FAILED}
    table = to_table(title, shown, body, styles, width=width)
    left_out = [c.heading for c in columns if c not in shown]
    if names and left_out:  # asked for by name: say which did not fit, never cut them
        table.caption = (
            f"not shown at {width} columns: {', '.join(left_out)} (-f csv or -f json has "
            "every column)"
        )
    return table


# the columns of an empty CSV: what a report with rows would have (see query.job_row)
EMPTY_FIELDS = ["sweep", "key", "label", "backend", "context", "generation", "threads", "status"]


def render_pivot(headings: list[str], body: list[list[Any]], fmt: str, title: str) -> str | Table:
    text = [
        [str(line[0])] + [("-" if v is None else f"{v:.4g}") for v in line[1:]] for line in body
    ]
    if fmt == "json":
        return json.dumps([dict(zip(headings, line, strict=True)) for line in body], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out).writerows([headings, *text])
        return out.getvalue()
    if fmt == "markdown":
        return to_markdown(headings, text)
    columns = [Column(h, h, "{}", 0) for h in headings]
    return to_table(title, columns, text)


def print_table(console: Console, renderable: Table, rows: list[dict[str, Any]]) -> None:
    console.print(renderable)
    for line in failures(rows):
        console.print(line, style="red", markup=False, highlight=False, soft_wrap=True)


def render_html(
    title: str,
    sections: list[tuple[str, list[dict[str, Any]]]],
    images: dict[str, tuple[str, bytes]],
    notes: list[str],
    provenance: list[tuple[str, str]],
) -> str:
    """One self-contained page: a table per section, every plot inline (data URIs), what
    was skipped or failed, a legend of the columns, and where the figures came from."""
    parts = [
        "<!doctype html>",
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child{text-align:left}"
        "tr.fail,p.fail{color:#b00}img{max-width:100%;margin:1em 0}dt{font-weight:bold}</style>"
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, rows in sections:
        columns = columns_for(rows)
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(
            "<table><tr>" + "".join(f"<th>{html.escape(c.heading)}</th>" for c in columns) + "</tr>"
        )
        for row in rows:
            css = " class='fail'" if row["status"] == JobStatus.FAILED else ""
            cells = "".join(f"<td>{html.escape(cell(row, c))}</td>" for c in columns)
            parts.append(f"<tr{css}>{cells}</tr>")
        parts.append("</table>")
        parts += [f"<p class='fail'>{html.escape(line)}</p>" for line in failures(rows)]
    for name, (caption, png) in images.items():
        data = base64.b64encode(png).decode()
        parts.append(
            f"<h2>{html.escape(caption)}</h2>"
            f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
        )
    parts += [f"<p>{html.escape(note)}</p>" for note in notes]
    parts.append("<h2>Columns</h2><dl>")
    parts += [f"<dt>{html.escape(h)}</dt><dd>{html.escape(m)}</dd>" for h, m in LEGEND]
    parts.append("</dl><h2>Where these figures come from</h2><dl>")
    parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in provenance]
    parts.append("</dl></body></html>")
    return "\n".join(parts)


LEGEND = (
    ("backend", "the backend and its options (label)"),
    ("ctx, gen, thr", "prompt tokens, generated tokens, threads"),
    ("prefill ms", "time to first token, median over repeats"),
    ("decode ms, p90", "interval between tokens, median and 90th percentile"),
    ("tok/s", "decode tokens per second: tokens after the first over their intervals"),
    ("speedup", "tok/s against the baseline backend in the same cell and host"),
    ("top-1, KL", "teacher-forced agreement with transformers float32; mean KL divergence"),
    ("roofline", "share of the memory-bandwidth bound on decode speed"),
    ("e2e s, cv", "one generation end to end (mean), its coefficient of variation"),
)
