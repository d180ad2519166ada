"""SQLAlchemy tables. The schema itself is created and changed only by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = ["Base", "JobRow", "ParameterRow", "ResultRow", "UTCDateTime", "UsageRow"]


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite keeps no time zone, PostgreSQL would
    otherwise convert to the session's zone."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """An aware time as naive UTC; a naive one is refused (its zone is unknown)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """A stored (naive UTC) time as an aware UTC one."""
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """The tables' common declarative base (its metadata is what migrations check)."""


class JobRow(Base):
    """One UWS job: its phase, times, errorSummary and jobInfo (written only through
    :class:`astro_otf.store.repository.JobStore`)."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    run_id: Mapped[str | None] = mapped_column(String(255))
    phase: Mapped[str] = mapped_column(String(16), index=True)
    model_id: Mapped[str] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    creation_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    queue_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    execution_duration: Mapped[int] = mapped_column(Integer)
    destruction_time: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    quote: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_type: Mapped[str | None] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The run that owns the job while it is EXECUTING (set when the job is claimed, cleared
    #: when it is queued again): only that run may record the job's end and its results.
    run_token: Mapped[str | None] = mapped_column(String(32))
    #: The uploaded image's file name as the client named it (listed, filtered on).
    image_name: Mapped[str | None] = mapped_column(String(255), index=True)
    #: sha256 of what the job computes (input, model, version, precision, parameters): a
    #: COMPLETED job with the same key has the results a new one would make.
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True)
    #: While the job is HELD (or PENDING waiting for its data): when its wait ends in ERROR.
    hold_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)

    parameters: Mapped[list[ParameterRow]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="ParameterRow.name"
    )
    results: Mapped[list[ResultRow]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="ResultRow.position"
    )


class ParameterRow(Base):
    """One parameter of a job (a file parameter's value is its file name in inputs/)."""

    __tablename__ = "job_parameters"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    is_file: Mapped[bool] = mapped_column(Boolean, default=False)

    job: Mapped[JobRow] = relationship(back_populates="parameters")


class ResultRow(Base):
    """One listed result of a job, in its place among the job's results."""

    __tablename__ = "job_results"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    result_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))
    mime_type: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)

    job: Mapped[JobRow] = relationship(back_populates="results")


class UsageRow(Base):
    """The accounting ledger: one row per job that reached a final phase, written in the
    transaction that moved it there. No foreign key: the row outlives the job (a period's
    accounting must not shrink when its jobs expire or are deleted)."""

    __tablename__ = "usage"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(255), index=True)
    model_id: Mapped[str] = mapped_column(String(128))
    phase: Mapped[str] = mapped_column(String(16))
    creation_time: Mapped[datetime] = mapped_column(UTCDateTime())
    start_time: Mapped[datetime | None] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    #: end - start (0 for a job that never started, or took another job's results)
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: CPU time its worker measured for it (0: it never ran, or reused results)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    #: its input image and result files, in bytes, when it ended
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)
