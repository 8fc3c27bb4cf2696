"""The farm's tables: sweeps, their jobs, each job's result, and where it ran.

Written only by the orchestrator. Figures are plain columns so reports can
filter and sort in SQL; raw per-repeat samples are kept as JSON beside them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from whistle_stop.contract.status import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


# Stored as the enum's values ('done'), in a plain string column every database has.
StatusColumn = SqlEnum(
    JobStatus,
    native_enum=False,
    length=16,
    values_callable=lambda statuses: [status.value for status in statuses],
    validate_strings=True,
)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    source_text: Mapped[str] = mapped_column(Text)  # the sweep YAML as submitted last
    baseline: Mapped[str | None] = mapped_column(String(200))  # what speedups compare with
    rounds: Mapped[int | None]

    jobs: Mapped[list[Job]] = relationship(back_populates="sweep", order_by="Job.id")


class Job(Base):
    """One grid cell of one sweep. Status: pending -> queued -> running -> done | failed."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("sweep_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id"), index=True)
    key: Mapped[str] = mapped_column(String(32), index=True)
    # the grid cell (the same in every round); NULL in databases older than rounds
    cell: Mapped[str | None] = mapped_column(String(32), index=True)
    round: Mapped[int | None]
    position: Mapped[int | None]  # where the job ran in its round's shuffled order
    spec: Mapped[dict[str, Any]]
    label: Mapped[str] = mapped_column(String(200))
    backend: Mapped[str] = mapped_column(String(50))
    context: Mapped[int]
    generation: Mapped[int]
    threads: Mapped[int]
    status: Mapped[JobStatus] = mapped_column(StatusColumn, default=JobStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(200))
    # attempts whose worker was lost: [{"worker", "at" (ISO time), "why"}, ...]
    lost_attempts: Mapped[list[Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    sweep: Mapped[Sweep] = relationship(back_populates="jobs")
    result: Mapped[Result | None] = relationship(back_populates="job")


class Environment(Base):
    """A host and its software, deduplicated by fingerprint."""

    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32), unique=True)
    hostname: Mapped[str] = mapped_column(String(255), index=True)
    cpu_model: Mapped[str] = mapped_column(String(255))
    cpu_features: Mapped[list[Any]]
    logical_cores: Mapped[int]
    physical_cores: Mapped[int]
    memory_bytes: Mapped[int] = mapped_column(BigInteger)  # byte counts pass 2**31: 64-bit
    os: Mapped[str] = mapped_column(String(255))
    kernel: Mapped[str] = mapped_column(String(255))
    container: Mapped[bool]
    python: Mapped[str] = mapped_column(String(32))
    versions: Mapped[dict[str, Any]]
    git_revision: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None]  # uncommitted changes in the checkout the worker ran
    source_hash: Mapped[str | None] = mapped_column(String(32))  # of whistle-stop's own code


class Result(Base):
    """The measurement of one job. Times in the unit their name says."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    worker: Mapped[str] = mapped_column(String(200))
    cpus: Mapped[str] = mapped_column(String(200))  # the CPU list the job really ran on
    torch_threads: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    repeats: Mapped[int]
    prefill_ms: Mapped[float]
    prefill_ms_p50: Mapped[float]
    decode_ms: Mapped[float | None]  # None: a one-token generation has no decode step
    decode_ms_p50: Mapped[float | None]
    decode_ms_p90: Mapped[float | None]
    decode_ms_p99: Mapped[float | None]
    decode_tokens_per_s: Mapped[float | None]
    e2e_s: Mapped[float]
    e2e_s_p50: Mapped[float]
    e2e_s_p90: Mapped[float]
    e2e_s_stdev: Mapped[float]
    cv: Mapped[float]
    noisy: Mapped[bool]
    remeasured: Mapped[bool] = mapped_column(default=False)  # noisy once, measured again
    timer_gap: Mapped[float]  # the tail after the last token stamp, relative to e2e
    # the token clock against the outer clock: the mean stamped step of k extra tokens
    # against (e2e(N+k) - e2e(N)) / k, e2e(N) the mean of runs right before and after the
    # longer one (None: no room for extra tokens; worker/measure.py TimerCheck)
    timer_check: Mapped[float | None]

    materialize_s: Mapped[float]
    load_s: Mapped[float]
    compile_s: Mapped[float | None]
    artifact_built: Mapped[bool | None]
    artifact_build_s: Mapped[float | None]
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    rss_peak_bytes: Mapped[int] = mapped_column(BigInteger)
    model_rss_bytes: Mapped[int] = mapped_column(BigInteger)

    # agreement with transformers float32 on the same prompt (None: not measured)
    top1_agreement: Mapped[float | None]  # teacher-forced, per position
    mean_kl: Mapped[float | None]  # KL(reference || backend) of next-token distributions
    max_logit_diff: Mapped[float | None]
    first_divergence: Mapped[int | None]  # first free-running token that differs
    fidelity_positions: Mapped[int | None]
    fidelity_prompts: Mapped[int | None]
    top1_low: Mapped[float | None]  # 95% Wilson interval of top1_agreement
    top1_high: Mapped[float | None]
    kl_p50: Mapped[float | None]
    kl_p90: Mapped[float | None]
    kl_p99: Mapped[float | None]
    kl_max: Mapped[float | None]
    top_prob_diff: Mapped[float | None]  # mean |p - p_ref| of the reference's top token
    # the memory-bandwidth bound on decode speed (see worker/roofline.py)
    weight_bytes_per_token: Mapped[float | None]
    bandwidth_bytes_per_s: Mapped[float | None]  # streaming read, this host and CPU set
    bandwidth_before_bytes_per_s: Mapped[float | None]  # measured right before the job ...
    bandwidth_after_bytes_per_s: Mapped[float | None]  # ... and right after it
    bandwidth_measured_at: Mapped[float | None]  # when (Unix time; the host figure's if cached)
    roofline_tokens_per_s: Mapped[float | None]
    roofline_fraction: Mapped[float | None]
    tokenize_ms: Mapped[float | None]  # text prompts: the prompt's tokenization
    detokenize_ms: Mapped[float | None]  # ... and the output's detokenization
    perplexity: Mapped[float | None]  # on the sweep's eval_text, if any
    perplexity_delta: Mapped[float | None]  # minus transformers float32's
    load_extra: Mapped[dict[str, Any]]  # what the backend reports of its load (fusions ...)

    pinning_violations: Mapped[list[Any]]
    # the machine during the timed region (worker/observe.py): steal, switches, faults,
    # huge pages, the other CPUs' load, the threads that worked and where they ran
    machine: Mapped[dict[str, Any] | None]
    flags: Mapped[list[Any] | None]  # why a figure may mislead ("steal 8% ...")
    tokens: Mapped[list[Any]]  # the greedy tokens of the last repeat
    samples: Mapped[dict[str, Any]]  # raw per-repeat figures

    job: Mapped[Job] = relationship(back_populates="result")
    environment: Mapped[Environment] = relationship()
