"""The job spec: what the orchestrator asks a worker to measure.

It travels as JSON. `from_dict` is strict, so a malformed spec from a broker is
rejected before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

# The JSON type each field must have on the wire, from its annotation (so the dataclass
# below is the one list of fields): bool is never an int; an int is a float.
WIRE_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "str | None": "a string or null",
    "tuple[tuple[str, Any], ...]": "an object",  # options: a JSON object on the wire
}
NOT_COUNTS = ("seed", "round")  # every other integer field counts something: never negative
BANDWIDTH_MODES = ("fresh", "host")


def _is(value: Any, kind: str) -> bool:
    if kind == "a boolean":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return {
        "a string": isinstance(value, str),
        "an object": isinstance(value, dict),
        "an integer": isinstance(value, int),
        "a number": isinstance(value, int | float),
        "a string or null": value is None or isinstance(value, str),
    }[kind]


class MalformedJobError(ValueError):
    """A job spec that is not what `JobSpec.to_dict()` produces."""


@dataclass(frozen=True)
class JobSpec:
    """One cell of the grid in one round. Frozen; its key is a hash of its canonical JSON
    form.

    The key leaves out the sweep name, so the same cell in two sweeps can be matched;
    `cell` leaves out the round too, so the rounds of one cell can be pooled.
    """

    model: str
    backend: str
    label: str
    options: tuple[tuple[str, Any], ...]
    context: int
    generation: int
    threads: int
    warmups: int
    repeats: int
    min_duration_s: float
    max_repeats: int
    noise_threshold: float
    fidelity_tokens: int
    eval_text: str | None
    eval_tokens: int
    rerun_noisy: bool
    prompt_text: str | None
    tokenizer: str
    seed: int
    fidelity_prompts: int = 4  # prompts the teacher-forced fidelity is measured on
    bandwidth: str = "fresh"  # "fresh": measured around the job; "host": the cached figure
    round: int = 1  # which interleaved round of the sweep (1-based)

    @property
    def cell(self) -> str:
        """The grid cell, the same in every round."""
        data = self.to_dict()
        del data["round"]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        """The job: round 1's key is its cell's, so a one-round sweep keys jobs by cell."""
        if self.round == 1:
            return self.cell
        return hashlib.sha256(f"{self.cell}:round{self.round}".encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        if not isinstance(data, dict):
            raise MalformedJobError(f"job spec must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            missing, extra = sorted(names - set(data)), sorted(set(data) - names)
            raise MalformedJobError(
                f"job spec fields wrong: missing {missing}, unexpected {extra} (do the "
                "orchestrator and this worker run the same version of whistle-stop?)"
            )
        for name, kind in FIELD_TYPES.items():
            if not _is(data[name], kind):
                raise MalformedJobError(f"job spec {name} must be {kind}, not {data[name]!r:.40}")
        if not all(isinstance(key, str) for key in data["options"]):
            raise MalformedJobError("job spec options must have string keys")
        for name in COUNTS:
            if data[name] < 0:
                raise MalformedJobError(f"job spec {name} must not be negative")
        if data["round"] < 1:
            raise MalformedJobError("job spec round must be 1 or more")
        if data["bandwidth"] not in BANDWIDTH_MODES:
            raise MalformedJobError(f"job spec bandwidth must be one of {BANDWIDTH_MODES}")
        return cls(**{**data, "options": tuple(sorted(data["options"].items()))})


FIELD_TYPES = {f.name: WIRE_TYPES[f.type] for f in fields(JobSpec)}
COUNTS = tuple(n for n, kind in FIELD_TYPES.items() if kind == "an integer" and n not in NOT_COUNTS)


def control_label(baseline: str) -> str:
    """The label of the baseline's twin (`control: true`): the sweep adds it, reports know it."""
    return f"{baseline}-control"
