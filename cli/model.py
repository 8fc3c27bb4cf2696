"""`farm model`: build a model into the cache ahead of a sweep, and say what it is."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from whistle_stop.cli.common import DEFAULT_CACHE, CacheOption, app, fail


@app.command()
def model(
    source: Annotated[
        str, typer.Argument(help="trained:gpt2-shakespeare, random:gpt2, or a local directory.")
    ],
    *,
    seed: Annotated[int, typer.Option(help="The seed the sweep will use.")] = 0,
    cache_dir: CacheOption = DEFAULT_CACHE,
) -> None:
    """Build a model where workers look for it (trained: ones train here, minutes).

    Sweeps build it on first use too; this does it ahead, with a progress bar, and prints
    where it is and, for a trained model, its held-out perplexity.
    """
    from whistle_stop.backends.sources import ModelSourceError, parse_model_source

    try:
        parsed = parse_model_source(source)
    except ModelSourceError as error:
        raise fail(str(error)) from None
    if parsed.kind == "hub":
        raise fail(f"{source} comes from the model hub: workers fetch it, nothing is built")
    try:
        directory = _build(parsed, seed, cache_dir)
    except RuntimeError as error:  # the corpus could not be fetched, or is not the pinned one
        raise fail(str(error), 3) from None
    typer.echo(str(directory))
    report = directory / "training.json"
    if report.is_file():
        facts = json.loads(report.read_text())
        typer.echo(
            f"{facts['parameters'] / 1e6:.1f}M parameters, {facts['tokens_seen']:,} tokens seen "
            f"of {facts['corpus']}; held-out perplexity {facts['held_out_perplexity']:.1f} "
            f"({facts['held_out_tokens']:,} tokens held out); trained in "
            f"{facts['seconds'] / 60:.1f} min"
        )


def _build(parsed, seed: int, cache_dir):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from whistle_stop.backends.weights import materialize, trained_model

    if parsed.kind != "trained":
        return materialize(parsed, cache_dir, seed)
    columns = [
        TextColumn("training {task.description}"),
        BarColumn(),
        TextColumn("{task.fields[loss]}"),
    ]
    # on stderr: stdout is the directory, for `$(farm model ...)`
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        task = bar.add_task(parsed.ref, total=None, loss="")

        def progress(step: int, steps: int, loss: float) -> None:
            bar.update(task, completed=step, total=steps, loss=f"loss {loss:.2f}")

        return trained_model(parsed.ref, cache_dir, seed, progress)
