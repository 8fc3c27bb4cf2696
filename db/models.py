"""The farm's tables: sweeps, their jobs, each job's result, and where it ran.

Written only by the orchestrator. Figures are plain columns so reports can
filter and sort in SQL; raw per-repeat samples are kept as JSON beside them.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Double,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from whistle_stop.contract.payload import Metrics
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
    precision: Mapped[float | None]  # rounds: auto's goal (a 95% interval within ±this)

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


# Python annotation -> column type, for the figures declared in contract/payload.py
SQL_TYPES = {
    "int": Integer,
    "float": Double,
    "bool": Boolean,
    "str": Text,
    "dict": JSON,
    "list": JSON,
}


def _metric_columns() -> dict[str, Any]:
    """One column per field of the payload's `Metrics`: the figures are declared once,
    there, so what a worker sends and what the store keeps cannot drift apart."""
    columns = {}
    for figure in dataclasses.fields(Metrics):
        base, _, optional = figure.type.partition(" | ")
        kind = BigInteger if figure.name.endswith("_bytes") else SQL_TYPES[base.split("[")[0]]
        nullable = bool(optional)
        default = figure.default if figure.default not in (dataclasses.MISSING, None) else None
        extra = {} if default is None else {"default": default}
        columns[figure.name] = mapped_column(kind, nullable=nullable, **extra)
    return columns


MetricColumns = type("MetricColumns", (), _metric_columns())


class Result(MetricColumns, Base):
    """The measurement of one job: who ran it where, then every figure of `Metrics`
    (contract/payload.py says what each means, in the unit its name says)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), unique=True)
    environment_id: Mapped[int] = mapped_column(ForeignKey("environments.id"))
    worker: Mapped[str] = mapped_column(String(200))
    cpus: Mapped[str] = mapped_column(String(200))  # the CPU list the job really ran on
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result")
    environment: Mapped[Environment] = relationship()
