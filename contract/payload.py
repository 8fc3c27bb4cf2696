"""What a worker sends back for one job: a typed payload, JSON on the wire.

`Metrics` declares the figures once: the `Result` table's columns are made from its
fields (db/models.py), and `HostFacts` has exactly the columns of an `Environment` row
(tests/test_contract.py holds it to that), so a new figure cannot be lost between the
worker and the database. Parsing is strict: a
missing or unknown field is an error naming it, never a silent NULL or a silent drop.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from whistle_stop.contract.status import JobStatus


def last_words(log: Path, offset: int = 0, lines: int = 5) -> str:
    """The end of what a job that died wrote to stderr from `offset` on, one `stderr: `
    line each, for its failure (an engine that crashes in C often says why just before).
    Both executors use it: the embedded pool on its worker's log, a Celery worker's
    parent on the job's own stderr file."""
    try:
        with open(log, "rb") as file:
            file.seek(offset)
            text = file.read()[-4096:].decode(errors="replace")
    except OSError:
        return ""
    said = [line for line in text.splitlines() if line.strip()][-lines:]
    return "".join(f"stderr: {line}\n" for line in said)


class MalformedPayloadError(ValueError):
    """A payload that is not what `ResultPayload.to_json()` produces."""


def _strict(cls, data: Any, what: str) -> dict[str, Any]:
    """`data`'s fields for `cls`: required ones present, none unknown."""
    if not isinstance(data, dict):
        raise MalformedPayloadError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    required = {
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
    }
    missing, extra = sorted(required - set(data)), sorted(set(data) - known)
    if missing or extra:
        raise MalformedPayloadError(
            f"{what}: missing {missing}, unexpected {extra} (do the orchestrator and the "
            "worker run the same version of whistle-stop?)"
        )
    return data


@dataclass(frozen=True)
class HostFacts:
    """Where a job ran: host, CPU and software. Deduplicated by `fingerprint`."""

    fingerprint: str
    hostname: str
    cpu_model: str
    cpu_features: list[str]
    logical_cores: int
    physical_cores: int
    memory_bytes: int
    os: str
    kernel: str
    container: bool
    python: str
    versions: dict[str, str | None]
    git_revision: str | None
    git_dirty: bool | None = None
    source_hash: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> HostFacts:
        return cls(**_strict(cls, data, "environment"))


@dataclass(frozen=True)
class Metrics:
    """Every figure of one measured job, named as its `Result` column."""

    # timing (worker/measure.py summarize)
    repeats: int
    prefill_ms: float
    prefill_ms_p50: float
    # a one-token generation has no decode step: these are NaN on the wire, NULL stored
    decode_ms: float | None
    decode_ms_p50: float | None
    decode_ms_p90: float | None
    decode_ms_p99: float | None
    decode_tokens_per_s: float | None
    e2e_s: float
    e2e_s_p50: float
    e2e_s_p90: float
    e2e_s_stdev: float
    cv: float
    noisy: bool
    timer_gap: float  # the tail after the last token stamp, relative to e2e
    # loading and memory
    materialize_s: float
    load_s: float
    rss_peak_bytes: int
    model_rss_bytes: int
    torch_threads: int
    load_extra: dict[str, Any]  # what the backend reports of its load (fusions ...)
    # raw figures kept beside the summary
    samples: dict[str, list]  # raw per-repeat figures
    tokens: list[int]  # the greedy tokens of the last repeat
    pinning_violations: list[str]
    remeasured: bool = False  # noisy once, measured again
    compile_s: float | None = None
    artifact_built: bool | None = None
    artifact_build_s: float | None = None
    artifact_bytes: int | None = None
    # fidelity against transformers float32 (worker/fidelity.py)
    top1_agreement: float | None = None  # teacher-forced, per position
    mean_kl: float | None = None  # KL(reference || backend) of next-token distributions
    max_logit_diff: float | None = None
    first_divergence: int | None = None  # first free-running token that differs
    fidelity_positions: int | None = None
    fidelity_prompts: int | None = None
    top1_low: float | None = None  # 95% Wilson interval of top1_agreement
    top1_high: float | None = None
    kl_p50: float | None = None
    kl_p90: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    kl_low: float | None = None  # 95% interval of mean_kl (worker/fidelity.py says how)
    kl_high: float | None = None
    top_prob_diff: float | None = None  # mean |p - p_ref| of the reference's top token
    # the bandwidth roofline (worker/roofline.py)
    weight_bytes_per_token: float | None = None
    bandwidth_bytes_per_s: float | None = None  # streaming read, this host and CPU set
    roofline_tokens_per_s: float | None = None
    roofline_fraction: float | None = None
    # the KV cache a decode step reads (its mean over the job's steps), and the roofline's
    # share counting it beside the weights: the bound a step can reach at this context
    kv_bytes_per_token: float | None = None
    roofline_kv_fraction: float | None = None
    bandwidth_before_bytes_per_s: float | None = None  # measured right before the job ...
    bandwidth_after_bytes_per_s: float | None = None  # ... and right after it
    bandwidth_measured_at: float | None = None  # Unix time (the host figure's if cached)
    # the last-level cache of the job's CPUs: weights under ~10x it are partly served from
    # it, so their roofline share is not a share of DRAM's bandwidth
    llc_bytes: int | None = None
    # the smallest streaming read that runs at DRAM speed on the job's CPUs, measured once
    # per host and CPU set: under the LLC where a VM has a share of a shared L3
    dram_from_bytes: int | None = None
    # the token clock against the outer clock: the mean stamped step of k extra tokens
    # against (e2e(N+k) - e2e(N)) / k (None: no room for extra tokens; worker/measure.py)
    timer_check: float | None = None
    # the machine during the timed region, and what may make a figure mislead
    # steal, switches, faults, huge pages, the other CPUs' load, the threads that worked
    machine: dict[str, Any] | None = None
    flags: list[str] | None = None  # why a figure may mislead ("steal 8% ...")
    # text prompts and perplexity
    tokenize_ms: float | None = None
    detokenize_ms: float | None = None
    perplexity: float | None = None  # on the sweep's eval_text, or the held-out positions
    perplexity_delta: float | None = None  # minus transformers float32's
    # what fidelity was measured on: "held-out text" (a trained model's), else random ids
    fidelity_data: str | None = None
    # the reference's per-layer outlier channels (worker/activations.py summarize)
    activation_outliers: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Metrics:
        return cls(**_strict(cls, data, "metrics"))


@dataclass(frozen=True)
class ResultPayload:
    """The outcome of one attempt at one job: `done` with metrics, or `failed` with why."""

    status: JobStatus
    worker: str
    error: str | None = None
    cpus: str | None = None  # the CPU list the job really ran on
    key: str | None = None
    attempt: int = 1
    started_at: float | None = None
    finished_at: float | None = None
    environment: HostFacts | None = None
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        if self.status not in (JobStatus.DONE, JobStatus.FAILED):
            raise MalformedPayloadError(f"a result's status is done or failed, not {self.status}")
        if self.status is JobStatus.DONE and (self.metrics is None or self.environment is None):
            raise MalformedPayloadError("a done result carries its metrics and environment")

    @classmethod
    def failed(cls, worker: str, error: str, **known: Any) -> ResultPayload:
        return cls(status=JobStatus.FAILED, worker=worker, error=error, **known)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> ResultPayload:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise MalformedPayloadError(f"a result payload is not JSON: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> ResultPayload:
        data = dict(_strict(cls, data, "result payload"))
        try:
            data["status"] = JobStatus(data["status"])
        except ValueError:
            raise MalformedPayloadError(f"unknown result status {data['status']!r}") from None
        if data.get("environment") is not None:
            data["environment"] = HostFacts.from_dict(data["environment"])
        if data.get("metrics") is not None:
            data["metrics"] = Metrics.from_dict(data["metrics"])
        return cls(**data)
