"""What the benchmarks share: sweep files cut to size and submitted through the real
`farm`, job specs run on a pinned worker process as the farm runs them, and tables
printed through the report's renderer."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from whistle_stop.orchestrator.sweep import backend_label
from whistle_stop.worker.measure import Repeat

CACHE = Path("~/.cache/whistle-stop").expanduser()
CHECKOUT = Path(__file__).resolve().parent.parent  # where examples/ is, run from a checkout


def example(name: str) -> Path:
    """examples/NAME from the working directory, else from the checkout this runs from:
    the benchmarks read their variants from the sweep files users run."""
    for folder in (Path("examples"), CHECKOUT / "examples"):
        if (folder / name).is_file():
            return folder / name
    raise SystemExit(f"examples/{name} not found: run from a checkout of whistle-stop")


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


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE`, repeatable: a top-level sweep key replaced, as a YAML value."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_pair,
        help="override a sweep key, e.g. --set max_rounds=60",
    )


def _pair(text: str) -> str:
    """argparse's `type` for --set: a pair without `=` is a usage error, in one line."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"takes KEY=VALUE, not {text!r}")
    return text


def settings(pairs: list[str]) -> dict:
    """--set's KEY=VALUE pairs as sweep keys, each value read as YAML."""
    return {key: yaml.safe_load(value) for key, _, value in (p.partition("=") for p in pairs)}


def variants(labels: str | None, default: list[str], grid: Path | None = None):
    """label -> (backend, options) of these comma-separated labels (else `default`) as the
    farm reads them from a sweep file (examples/engines.yaml unless `grid`): the one table
    of variants; a label the file lacks is refused, naming the known ones."""
    from whistle_stop.orchestrator.sweep import load_sweep

    source = grid or example("engines.yaml")
    known = {
        job.label: (job.backend, dict(job.options))
        for job in load_sweep(source, max_jobs=None).jobs
    }
    wanted = labels.split(",") if labels else default
    unknown = [label for label in wanted if label not in known]
    if unknown:
        raise SystemExit(
            f"error: not labels of {source}: {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return {label: known[label] for label in wanted}


def farm(*args: str) -> int:
    """The `farm` command beside this Python, as a user runs it; its exit status."""
    return subprocess.run([str(Path(sys.executable).with_name("farm")), *args]).returncode


def view(name: str, db: Path, *more: str) -> None:
    """`farm report --view NAME` over every sweep in `db`: what the benchmark concluded."""
    farm("report", "--view", name, "--all", "--db", str(db), *more)


def submit(data: dict, directory: Path, db: Path, *more: str) -> Path:
    """Write `data` as <directory>/<name>.yaml and submit it to `db` (quietly); the file."""
    grid = directory / f"{data['name']}.yaml"
    grid.write_text(yaml.safe_dump(data, sort_keys=False))
    # 3 (a job failed) is the sweep's business, stored with its reason; 2 is a sweep file
    # refused, nothing run: its one line is printed, and no later sweep or view can help
    if farm("submit", "--grid", str(grid), "--db", str(db), "-q", *more) == 2:
        raise SystemExit(2)
    return grid


def one_node_model(node, inputs: list, outputs: list, initializers: list = ()) -> bytes:
    """A serialized ONNX model of one node (opset 21 and com.microsoft), for timing a
    single ONNX Runtime kernel alone."""
    from onnx import helper

    graph = helper.make_graph([node], node.op_type, inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def median_ms(call, runs: int, warmups: int = 3) -> float:
    """The median of `runs` timed calls of `call()` after `warmups` untimed, in ms."""
    for _ in range(warmups):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def table(headings: list[str], rows: list[list[str]]) -> str:
    """A markdown table, as `farm report -f markdown` prints one."""
    from whistle_stop.reports.render import to_markdown

    return to_markdown(headings, rows).rstrip("\n")


def bench_model(source: str = "random:gpt2") -> Path:
    """A model's directory in the benchmarks' cache: GPT-2 small with random weights (seed
    0), what every benchmark runs, unless it is given another source (`model_source`)."""
    from whistle_stop.backends.sources import parse_model_source
    from whistle_stop.backends.weights import materialize

    return materialize(parse_model_source(source), CACHE, seed=0)


def counting(text: str) -> int:
    """argparse's `type` for a count (rounds, steps, threads, tokens): a whole number
    from 1, else one error line (0 rounds used to end in an empty median's traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a whole number from 1, not {text!r}")
    return value


def model_source(text: str) -> str:
    """argparse's `type` for --model: a source the farm can load, else one error line."""
    from whistle_stop.backends.sources import ModelSourceError, parse_model_source

    try:
        parse_model_source(text)
    except ModelSourceError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def timed(path, prompt: list[int], tokens: int) -> Repeat:
    """One greedy generation timed as a job times it: an outer timer and each token's
    time. `path` is one of our backends (a Generation) or a peer ((tokens, times))."""
    start = time.perf_counter()
    result = path.generate(prompt, tokens)
    end = time.perf_counter()
    times = result.token_times if hasattr(result, "token_times") else result[1]
    return Repeat(start, end, tuple(times))
