"""Run job specs on a pinned local worker process, as the farm does, and print tables."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.embedded import LocalWorker  # noqa: E402
from orchestrator.sweep import parse_sweep  # noqa: E402
from worker.pinning import available_cpus, parse_cpu_list  # noqa: E402

CACHE = Path("~/.cache/whistle-stop").expanduser()


def jobs_from_yaml(text: str):
    return parse_sweep(text, origin="benchmark", default_name="benchmark").jobs


def run(specs: list[dict], cpus: str | None = None, progress: bool = True) -> list[dict]:
    """Each spec in a fresh process pinned to `cpus` (default: all), one after another."""
    cpu_set = parse_cpu_list(cpus) if cpus else available_cpus()

    async def main() -> list[dict]:
        worker = LocalWorker("bench", cpu_set, CACHE, CACHE / "logs")
        payloads = []
        for index, spec in enumerate(specs, 1):
            if progress:
                print(f"  [{index}/{len(specs)}] {spec['label']} ctx={spec['context']} "
                      f"gen={spec['generation']}", file=sys.stderr, flush=True)  # fmt: skip
            payloads.append(await worker.run(spec))
        return payloads

    return asyncio.run(main())


def table(headings: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]  # fmt: skip
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)
