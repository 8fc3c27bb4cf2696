"""Rows -> text: a rich table in the terminal, markdown, CSV, JSON, or a self-contained
HTML page with the plots embedded as data URIs."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from contract.status import JobStatus

FORMATS = ("table", "markdown", "csv", "json", "html")

# (row key, heading, format) in display order; `sweep` and `host` join when they vary.
COLUMNS: list[tuple[str, str, str]] = [
    ("label", "backend", "{}"),
    ("context", "context", "{}"),
    ("generation", "gen", "{}"),
    ("threads", "threads", "{}"),
    ("prefill_ms_p50", "prefill ms", "{:.1f}"),
    ("decode_ms_p50", "decode ms p50", "{:.2f}"),
    ("decode_ms_p90", "p90", "{:.2f}"),
    ("decode_tokens_per_s", "tok/s", "{:.1f}"),
    ("e2e_s", "e2e s", "{:.3f}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("top1_agreement", "top-1", "{:.3f}"),
    ("mean_kl", "KL", "{:.1e}"),
    ("roofline_fraction", "roofline", "{:.0%}"),
    ("cv", "cv", "{:.1%}"),
    ("status", "status", "{}"),
]


def columns_for(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    extra = [(k, k, "{}") for k in ("sweep", "host") if len({r[k] for r in rows if r[k]}) > 1]
    return extra + COLUMNS


def cell(row: dict[str, Any], key: str, spec: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = spec.format(value)
    if key == "cv" and row.get("noisy"):
        text += " noisy"
    if key == "status" and row.get("pinning_ok") is False:
        text += " (pinning!)"
    return text


def failures(rows: list[dict[str, Any]]) -> list[str]:
    return [
        f"failed: {row['label']} ctx={row['context']} gen={row['generation']}: {row['error']}"
        for row in rows
        if row["status"] == JobStatus.FAILED
    ]


def to_markdown(headings: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    lines += ["| " + " | ".join(line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def to_table(title: str, headings: list[str], body: list[list[str]], styles=None) -> Table:
    table = Table(title=title)
    for index, heading in enumerate(headings):
        table.add_column(heading, justify="left" if index == 0 else "right")
    for index, line in enumerate(body):
        table.add_row(*map(Text, line), style=(styles or {}).get(index))
    return table


def render_rows(rows: list[dict[str, Any]], fmt: str, title: str) -> str | Table:
    """The per-job report in one format: text, or a rich Table for the terminal."""
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["key"])
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    columns = columns_for(rows)
    headings = [heading for _, heading, _ in columns]
    body = [[cell(row, key, spec) for key, _, spec in columns] for row in rows]
    if fmt == "markdown":
        notes = failures(rows)
        return to_markdown(headings, body) + ("\n" + "\n".join(notes) + "\n" if notes else "")
    styles = {i: "red" for i, row in enumerate(rows) if row["status"] == JobStatus.FAILED}
    return to_table(title, headings, body, styles)


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
    return to_table(title, headings, text)


def print_table(console: Console, renderable: Table, rows: list[dict[str, Any]]) -> None:
    # Piped output has no terminal width to fit; never squeeze figures into ellipses.
    out = console if console.is_terminal else Console(width=240, file=console.file)
    out.print(renderable)
    for line in failures(rows):
        out.print(line, style="red", markup=False, highlight=False)


def render_html(
    title: str, sections: list[tuple[str, list[dict[str, Any]]]], images: dict[str, bytes]
) -> str:
    """One self-contained page: a table per section and every plot inline (data URIs)."""
    parts = [
        "<!doctype html>",
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child{text-align:left}"
        "tr.fail,p.fail{color:#b00}img{max-width:100%;margin:1em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, rows in sections:
        columns = columns_for(rows)
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(
            "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns) + "</tr>"
        )
        for row in rows:
            css = " class='fail'" if row["status"] == JobStatus.FAILED else ""
            cells = "".join(f"<td>{html.escape(cell(row, k, s))}</td>" for k, _, s in columns)
            parts.append(f"<tr{css}>{cells}</tr>")
        parts.append("</table>")
        parts += [f"<p class='fail'>{html.escape(line)}</p>" for line in failures(rows)]
    for name, png in images.items():
        data = base64.b64encode(png).decode()
        parts.append(
            f"<h2>{html.escape(name)}</h2>"
            f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
