"""Run job specs on a pinned local worker process, as the farm does, and print tables."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from whistle_stop.contract.cpus import available_cpus, parse_cpu_list  # noqa: E402
from whistle_stop.executors.local import LocalWorker  # noqa: E402
from whistle_stop.orchestrator.sweep import backend_label, parse_sweep  # noqa: E402
from whistle_stop.worker.measure import Repeat  # noqa: E402

CACHE = Path("~/.cache/whistle-stop").expanduser()


def edited_grid(
    source: Path,
    labels: list[str] | None = None,
    contexts: list[int] | None = None,
    **updates,
) -> dict:
    """A sweep file's contents, cut to `labels` (and its baseline) and `contexts`, with
    top-level keys replaced by `updates`; a label the file lacks is refused."""
    data = yaml.safe_load(source.read_text())
    if labels:
        keep = {*labels, data.get("baseline", "hf")}
        data["backends"] = [b for b in data["backends"] if backend_label(b) in keep]
        missing = set(labels) - {backend_label(b) for b in data["backends"]}
        if missing:
            raise SystemExit(f"not in {source.name}: {', '.join(sorted(missing))}")
    if contexts:
        data["context_sizes"] = contexts
    return data | updates


def farm(*args: str) -> None:
    """The `farm` command of this checkout (not whichever one is installed), as a user
    runs it; its exit status is the sweep's business, not the benchmark's."""
    main = "import sys; from whistle_stop.cli import main; sys.argv[0] = 'farm'; main()"
    subprocess.run([sys.executable, "-c", main, *args], check=False, cwd=ROOT)


def submit(data: dict, directory: Path, db: Path) -> Path:
    """Write `data` as <directory>/<name>.yaml and submit it to `db` (quietly); the file."""
    grid = directory / f"{data['name']}.yaml"
    grid.write_text(yaml.safe_dump(data, sort_keys=False))
    farm("submit", "--grid", str(grid), "--db", str(db), "-q")
    return grid


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
                print(
                    f"  [{index}/{len(specs)}] {spec['label']} ctx={spec['context']} "
                    f"gen={spec['generation']}",
                    file=sys.stderr,
                    flush=True,
                )
            payloads.append(await worker.run(spec))
        return payloads

    return asyncio.run(main())


def one_node_model(node, inputs: list, outputs: list, initializers: list = ()) -> bytes:
    """A serialized ONNX model of one node (opset 21 and com.microsoft), for timing a
    single ONNX Runtime kernel alone."""
    from onnx import helper

    graph = helper.make_graph([node], node.op_type, inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def table(headings: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headings, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def in_process_arguments(doc: str, rounds: int):
    """The arguments every in-process comparison takes (parsed), torch's threads set."""
    import argparse

    import torch

    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=rounds, help="timed rounds, after one warm-up"
    )
    parser.add_argument("--context", type=int, default=128, help="prompt tokens")
    parser.add_argument("--generation", type=int, default=128, help="greedy tokens per run")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def gpt2_small() -> Path:
    """GPT-2 small with random weights (seed 0): what every benchmark runs."""
    from whistle_stop.backends.sources import parse_model_source
    from whistle_stop.backends.weights import materialize

    return materialize(parse_model_source("random:gpt2"), CACHE, seed=0)


def full_options(backend: str, options: dict):
    """Options as a job passes them to its backend: validated, defaults filled in."""
    from whistle_stop.backends import registry

    return registry.entry(backend).options.model_validate(options)


def load_paths(paths: dict[str, tuple[str, dict]], threads: int):
    """Random GPT-2 small weights, and each named (backend, options) loaded on them:
    (model_dir, {name: backend})."""
    from whistle_stop.backends import registry

    model_dir = gpt2_small()
    loaded = {}
    for name, (backend, options) in paths.items():
        loaded[name] = registry.create(backend, model_dir, options, threads, CACHE)
    return model_dir, loaded


def timed(path, prompt: list[int], tokens: int) -> Repeat:
    """One greedy generation timed as a job times it: an outer timer and each token's
    time. `path` is one of our backends (a Generation) or a peer ((tokens, times))."""
    start = time.perf_counter()
    result = path.generate(prompt, tokens)
    end = time.perf_counter()
    times = result.token_times if hasattr(result, "token_times") else result[1]
    return Repeat(start, end, tuple(times))
