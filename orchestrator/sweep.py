"""The sweep file: validated once at the edge, then expanded into frozen job specs.

Data flow: YAML text -> `SweepFile` (pydantic, unknown keys are errors) ->
`expand()` -> a tuple of `JobSpec`, each with a stable key.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from whistle_stop.backends import registry
from whistle_stop.backends.sources import ModelSourceError, parse_model_source
from whistle_stop.contract.jobspec import JobSpec, control_label
from whistle_stop.orchestrator.sweep_text import SweepTextError, parse_yaml, read_text

PositiveInts = Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)]


MAX_JOBS = 10_000  # a bigger grid is more often a typo than a plan: it needs --yes


class SweepError(ValueError):
    """A sweep file that cannot be run. The message names the file, the field and the fix."""


class TooManyJobsError(SweepError):
    """A valid grid bigger than the caller allowed."""


class BackendChoice(BaseModel):
    """One entry of `backends:`: a registered name plus that backend's options."""

    model_config = ConfigDict(frozen=True)

    name: str
    label: str
    options: dict[str, Any]


AUTO_FIRST_ROUNDS = 3  # rounds: auto starts with this many (two give no usable interval)


def _default_threads() -> list[int]:
    return [len(os.sched_getaffinity(0))]


class SweepFile(BaseModel):
    """What a sweep YAML file may say. Every key is optional except `backends`."""

    # strict: true is not 1, 1.5 is not an int, "4" is not a number, a string is not a list
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str | None = Field(None, description="sweep name; defaults to the file's stem")
    model: str = Field(
        "random:gpt2",
        description="random:gpt2, trained:gpt2-shakespeare, a local directory, or a hub id",
    )
    models: Annotated[list[str], Field(min_length=1)] | None = Field(
        None,
        description="instead of model: several models, a grid axis (e.g. random:gpt2 ... "
        "random:gpt2-xl)",
    )
    backends: Annotated[list[BackendChoice], Field(min_length=1)] = Field(
        description="each a backend name, or a mapping: name, label and that backend's options"
    )
    context_sizes: PositiveInts = Field([128], description="prompt tokens: a grid axis")
    generation_lengths: PositiveInts = Field(
        [64], description="new tokens, exactly (no stop at an end token): a grid axis"
    )
    threads: PositiveInts = Field(
        default_factory=_default_threads,
        description="intra-op threads (torch, OpenMP, each engine's): a grid axis; "
        "default: the CPUs this process may use",
    )
    warmups: Annotated[int, Field(ge=0)] = Field(1, description="untimed generations first")
    repeats: Annotated[int, Field(gt=0)] = Field(3, description="at least this many timed runs")
    min_duration_s: Annotated[float, Field(ge=0)] = Field(
        0.0, description="... and at least this many seconds of timed runs"
    )
    max_repeats: Annotated[int, Field(gt=0)] = Field(100, description="... but at most this many")
    noise_threshold: Annotated[float, Field(gt=0)] = Field(
        0.05, description="a job whose end-to-end CV passes this is marked noisy"
    )
    rerun_noisy: bool = Field(False, description="measure a noisy cell once more, keep the rerun")
    fidelity_tokens: Annotated[int, Field(ge=0)] = Field(
        64, description="teacher-forced positions compared with float32, per prompt (0: skip)"
    )
    fidelity_prompts: Annotated[int, Field(gt=0, le=64)] = Field(
        4, description="... on this many prompts (the job's own and random ones)"
    )
    rounds: Annotated[int, Field(gt=0, le=100)] | Literal["auto"] = Field(
        1,
        description="run the whole grid N times, each round in a fresh shuffled order; "
        "auto: 3, then more rounds for the cells whose speedup is not yet within precision",
    )
    max_rounds: Annotated[int, Field(ge=AUTO_FIRST_ROUNDS, le=100)] = Field(
        10, description="rounds: auto spends at most this many rounds on a cell"
    )
    precision: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.03, description="rounds: auto stops a cell once its 95% interval is within ±this"
    )
    control: bool = Field(False, description="add `<baseline>-control`, a copy of the baseline")
    baseline: str = Field("hf", description="the label (or backend) speedups are measured against")
    bandwidth: Literal["fresh", "host"] = Field(
        "fresh", description="roofline from bandwidth measured around each job, or the host's"
    )
    eval_text: str | None = Field(
        None, description="a text file (or datasets:NAME[:CONFIG]) to measure perplexity on"
    )
    eval_tokens: Annotated[int, Field(gt=1)] = Field(
        1024, description="tokens of eval_text scored for perplexity"
    )
    prompt: Literal["ids", "text"] = Field("ids", description="random token ids, or prompt_text")
    prompt_text: str | None = Field(None, description="inline text, or the path of a text file")
    tokenizers: Annotated[list[Literal["fast", "slow"]], Field(min_length=1)] = Field(
        ["fast"], description="text prompts: a grid axis of fast (Rust) and slow (Python) BPE"
    )
    seed: int = Field(0, description="random weights, prompt token ids and round orders")

    @field_validator("backends", mode="before")
    @classmethod
    def _parse_backends(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [_backend_choice(item, index) for index, item in enumerate(value)]


def backend_label(item: Any) -> str:
    """The label a sweep file's backend entry gets (its own, or name[changed options])."""
    return _backend_choice(item, 0).label


def _backend_choice(item: Any, index: int) -> BackendChoice:
    """`hf` or `{name: hf, dtype: bfloat16, label: hf-bf16}` -> a validated choice."""
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict) or "name" not in item:
        raise ValueError(f"backends[{index}] must be a name or a mapping with `name:`")
    fields = dict(item)
    name = fields.pop("name")
    label = fields.pop("label", None)
    if label is not None and not isinstance(label, str):
        raise ValueError(f"backends[{index}].label must be a string")
    try:
        entry = registry.entry(name)
    except (registry.UnknownBackendError, registry.NotABackendError) as error:
        raise ValueError(str(error)) from None
    valid = sorted(entry.options.model_fields)
    for key in fields:
        if key not in valid:
            raise ValueError(
                f"unknown option {key!r} for backend {name!r}; valid options: "
                + (", ".join(valid) or "none")
            )
    options = entry.options.model_validate(fields).model_dump()
    if label is None:
        defaults = entry.options().model_dump()
        changed = [f"{k}={v}" for k, v in options.items() if defaults[k] != v]
        label = name + (f"[{','.join(changed)}]" if changed else "")
    return BackendChoice(name=name, label=str(label), options=options)


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: its name, the file as submitted, and its jobs."""

    name: str
    source_text: str
    jobs: tuple[JobSpec, ...]  # in the order they run: round by round
    baseline: str = "hf"
    rounds: int = 1  # the rounds in `jobs` (rounds: auto adds more while it runs)
    auto: bool = False  # rounds: auto
    max_rounds: int = 1
    precision: float | None = None  # rounds: auto's goal: a 95% interval within ±this
    seed: int = 0  # orders the rounds (round_of)


def load_sweep(path: Path, *, max_jobs: int | None = MAX_JOBS) -> SweepPlan:
    """Read, validate and expand a sweep file. Raises `SweepError`; has no side effects."""
    try:
        text = read_text(path)
    except SweepTextError as error:
        raise SweepError(str(error)) from None
    return parse_sweep(text, origin=str(path), default_name=path.stem, max_jobs=max_jobs)


def parse_sweep(
    text: str, *, origin: str, default_name: str, max_jobs: int | None = MAX_JOBS
) -> SweepPlan:
    """Validate and expand sweep text. A grid of more than `max_jobs` jobs (None: no limit)
    raises `TooManyJobsError`, before any job is built."""
    try:
        data = parse_yaml(text, origin)
    except SweepTextError as error:
        raise SweepError(str(error)) from None
    if not isinstance(data, dict):
        raise SweepError(f"{origin}: expected a mapping of keys (model:, backends:, ...)")
    try:
        sweep = SweepFile.model_validate(data)
    except ValidationError as error:
        raise SweepError(_describe(origin, error)) from None
    sources = _sources(origin, sweep)
    for name, source in sources.items():
        _check_eval_text(origin, sweep, name, source)
    _check_unique(origin, sweep)
    for name, source in sources.items():
        sweep = _resolve_prompt(origin, sweep, name, source)
    sweep = _add_control(origin, sweep)
    cells = grid_size(sweep) * _first_rounds(sweep)
    if max_jobs is not None and cells > max_jobs:
        raise TooManyJobsError(
            f"{origin}: the grid expands to {cells:,} jobs, more than {max_jobs:,}; "
            "check its axes, or pass --yes to run them all"
        )
    jobs = expand(sweep)
    longest = max(job.context + job.generation for job in jobs)
    for name, source in sources.items():
        if longest > source.n_positions:
            raise SweepError(
                f"{origin}: context_sizes + generation_lengths reach {longest} tokens, beyond "
                f"{name}'s {source.n_positions} positions; lower the largest context or length"
            )
    return SweepPlan(
        name=sweep.name or default_name,
        source_text=text,
        jobs=jobs,
        baseline=sweep.baseline,
        rounds=_first_rounds(sweep),
        auto=sweep.rounds == "auto",
        max_rounds=sweep.max_rounds if sweep.rounds == "auto" else _first_rounds(sweep),
        precision=sweep.precision if sweep.rounds == "auto" else None,
        seed=sweep.seed,
    )


def model_names(sweep: SweepFile) -> list[str]:
    """The models axis: `models:`, or the one `model:` (its default included)."""
    return list(sweep.models) if sweep.models is not None else [sweep.model]


def _sources(origin: str, sweep: SweepFile) -> dict:
    """Each model of the axis, resolved; a typo or a model given twice is refused."""
    if sweep.models is not None and "model" in sweep.model_fields_set:
        raise SweepError(f"{origin}: model: and models: both given; keep one (models: a list)")
    key = "models" if sweep.models is not None else "model"
    sources = {}
    for name in model_names(sweep):
        if name in sources:
            raise SweepError(f"{origin}: models: {name} appears twice; list each value once")
        try:
            sources[name] = parse_model_source(name)
        except ModelSourceError as error:
            raise SweepError(f"{origin}: {key}: {error}") from None
    return sources


def _check_eval_text(origin: str, sweep: SweepFile, model: str, source) -> None:
    if sweep.eval_text is None:
        return
    if source.kind == "random":
        raise SweepError(
            f"{origin}: eval_text: perplexity needs a tokenizer, and {model} has none; "
            "use a local model directory or hub id that ships one, or drop eval_text"
        )
    if source.kind == "local" and not any(
        (Path(source.ref) / name).exists() for name in ("tokenizer.json", "vocab.json")
    ):
        raise SweepError(f"{origin}: eval_text: {source.ref} has no tokenizer files")
    if (
        not sweep.eval_text.startswith("datasets:")
        and not Path(sweep.eval_text).expanduser().is_file()
    ):
        raise SweepError(f"{origin}: eval_text: no such file {sweep.eval_text!r}")


def _resolve_prompt(origin: str, sweep: SweepFile, model: str, source) -> SweepFile:
    """A text prompt needs a tokenizer and a text; the text itself goes into the specs."""
    if sweep.prompt == "ids":
        if sweep.prompt_text is not None:
            raise SweepError(f"{origin}: prompt_text is set but prompt is 'ids'; add prompt: text")
        return sweep
    if sweep.prompt_text is None:
        raise SweepError(f"{origin}: prompt: text needs prompt_text (inline text or a file path)")
    if source.kind == "random":
        raise SweepError(
            f"{origin}: prompt: text needs a tokenizer, and {model} has none; "
            "use a local model directory or hub id that ships one"
        )
    if (
        "slow" in sweep.tokenizers
        and source.kind == "local"
        and not all((Path(source.ref) / name).exists() for name in ("vocab.json", "merges.txt"))
    ):
        raise SweepError(
            f"{origin}: tokenizers: 'slow' (GPT-2's Python BPE) reads vocab.json and merges.txt, "
            f"which {source.ref} lacks; use [fast]"
        )
    path = Path(sweep.prompt_text).expanduser()
    if "\n" not in sweep.prompt_text and len(sweep.prompt_text) < 4096 and path.is_file():
        return sweep.model_copy(update={"prompt_text": path.read_text()})
    return sweep


def _check_unique(origin: str, sweep: SweepFile) -> None:
    """A value given twice is a typo or a copy-paste, never a plan: refused, whether it is
    an axis value or a backend, instead of being merged or counted twice. A baseline the
    file names must be one of its backends, or every speedup would be '-'."""
    axes = ("context_sizes", "generation_lengths", "threads", "tokenizers")
    for axis in axes:
        values = list(getattr(sweep, axis))
        twice = sorted({v for v in values if values.count(v) > 1}, key=str)
        if twice:
            raise SweepError(f"{origin}: {axis}: {twice[0]} appears twice; list each value once")
    labels = [b.label for b in sweep.backends]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise SweepError(
            f"{origin}: backends: {twice[0]!r} appears twice; give each entry its own "
            "options, or a label: to tell them apart"
        )
    names = {b.name for b in sweep.backends}
    if "baseline" in sweep.model_fields_set and sweep.baseline not in {*labels, *names}:
        raise SweepError(
            f"{origin}: baseline: {sweep.baseline!r} is not among the backends "
            f"({', '.join(labels)}); name one of them"
        )


def _add_control(origin: str, sweep: SweepFile) -> SweepFile:
    """`control: true`: a second copy of the baseline, whose ratio to it is the noise floor."""
    if not sweep.control:
        return sweep
    labels = [b.label for b in sweep.backends]
    base = next((b for b in sweep.backends if b.label == sweep.baseline), None)
    base = base or next((b for b in sweep.backends if b.name == sweep.baseline), None)
    if base is None:
        raise SweepError(
            f"{origin}: control: true copies the baseline {sweep.baseline!r}, "
            f"which is not among the backends ({', '.join(labels)}); set "
            "baseline:"
        )
    control = base.model_copy(update={"label": control_label(base.label)})
    if control.label in labels:
        raise SweepError(f"{origin}: control: true adds {control.label!r}, already a label")
    return sweep.model_copy(update={"backends": [*sweep.backends, control]})


def _tokenizers(sweep: SweepFile) -> list[str]:
    return list(sweep.tokenizers) if sweep.prompt == "text" else ["fast"]


def grid_size(sweep: SweepFile) -> int:
    """How many cells the grid has (before identical cells are merged)."""
    axes = (
        model_names(sweep),
        sweep.backends,
        sweep.context_sizes,
        sweep.generation_lengths,
        sweep.threads,
    )
    return len(_tokenizers(sweep)) * math.prod(len(axis) for axis in axes)


def expand(sweep: SweepFile) -> tuple[JobSpec, ...]:
    """Every round of the grid, in the order the jobs run.

    One round keeps the grid's order. With several, each round is shuffled with its own
    seed (`round_order_seed`): the grid cells in a random order, and within each cell its
    backends in a random order, one after another. So no backend always runs first, or
    right after another, and a backend and its baseline run seconds apart, not minutes:
    on a shared machine the speed of memory moves within minutes.
    """
    grid = _grid(sweep)
    if _first_rounds(sweep) == 1:
        return grid
    jobs: list[JobSpec] = []
    for number in range(1, _first_rounds(sweep) + 1):
        jobs += round_of(grid, sweep.seed, number)
    return tuple(jobs)


def _first_rounds(sweep: SweepFile) -> int:
    return AUTO_FIRST_ROUNDS if sweep.rounds == "auto" else sweep.rounds


def grid_cell(job: JobSpec) -> tuple:
    """Where a job sits in the grid, whatever its backend: its speedup's baseline is the
    baseline's job at the same place and round."""
    return (job.model, job.context, job.generation, job.threads, job.tokenizer)


def round_of(jobs: Sequence[JobSpec], seed: int, number: int) -> list[JobSpec]:
    """Round `number` of `jobs` (round-1 specs), shuffled with its own seed: the grid
    cells in a random order, a cell's backends one after another in a random order."""
    cells: dict[tuple, list[JobSpec]] = {}
    for job in jobs:
        cells.setdefault(grid_cell(job), []).append(job)
    shuffle = random.Random(round_order_seed(seed, number)).shuffle
    order = [list(backends) for backends in cells.values()]
    shuffle(order)
    ran: list[JobSpec] = []
    for backends in order:
        shuffle(backends)
        ran += [dataclasses.replace(job, round=number) for job in backends]
    return ran


def extra_round(plan: SweepPlan, number: int, cells: set[str]) -> list[JobSpec]:
    """rounds: auto's round `number`: the jobs of these cells and, beside each, its
    baseline (a speedup is a ratio within a round)."""
    first = [job for job in plan.jobs if job.round == 1]
    places = {grid_cell(job) for job in first if job.cell in cells}
    chosen = [
        job
        for job in first
        if job.cell in cells or (grid_cell(job) in places and is_baseline(job, plan.baseline))
    ]
    return round_of(chosen, plan.seed, number)


def is_baseline(job: JobSpec, baseline: str) -> bool:
    return job.label == baseline or job.backend == baseline


def round_order_seed(seed: int, number: int) -> str:
    """The seed that shuffles round `number` (recorded: the jobs table keeps each position)."""
    return f"{seed}:round{number}"


# Settings a job carries exactly as the sweep file gives them: the fields both models
# name alike, less those a cell sets or the grid derives (each named in _grid).
PER_CELL = ("model", "backend", "label", "options", "context", "generation", "threads", "round")
DERIVED = ("max_repeats", "prompt_text", "tokenizer")
SWEEP_WIDE = tuple(
    f.name
    for f in dataclasses.fields(JobSpec)
    if f.name not in (*PER_CELL, *DERIVED) and f.name in SweepFile.model_fields
)


def _grid(sweep: SweepFile) -> tuple[JobSpec, ...]:
    """The grid: the product of models x backends x context x generation x threads,
    deduplicated."""
    jobs: dict[str, JobSpec] = {}
    for model, backend, context, generation, threads, tokenizer in itertools.product(
        model_names(sweep),
        sweep.backends,
        sweep.context_sizes,
        sweep.generation_lengths,
        sweep.threads,
        _tokenizers(sweep),
    ):
        job = JobSpec(
            **{name: getattr(sweep, name) for name in SWEEP_WIDE},
            model=model,
            backend=backend.name,
            label=backend.label,
            options=tuple(sorted(backend.options.items())),
            context=context,
            generation=generation,
            threads=threads,
            max_repeats=max(sweep.max_repeats, sweep.repeats),
            prompt_text=sweep.prompt_text if sweep.prompt == "text" else None,
            tokenizer=tokenizer,
        )
        jobs.setdefault(job.key, job)
    return tuple(jobs.values())


def _describe(origin: str, error: ValidationError) -> str:
    """One line: `file: field: what is wrong (fix); next field: ...`."""
    lines = []
    known = list(SweepFile.model_fields)
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(problem["loc"][-1]), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(known)}"
            lines.append(f"unknown key {where!r} ({hint})")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {message}")
    return f"{origin}: " + "; ".join(lines)
