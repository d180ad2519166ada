"""The accounting ledger and the per-owner figures quotas are checked against.

A job that reaches a final phase gets one ``usage`` row, written by :func:`record` inside the
transaction that moves it there (the final moves of
:class:`~astro_otf.store.repository.JobStore`: ``mark_completed``, ``mark_reused``,
``mark_failed``, ``mark_aborted``; and ``create`` for a job born COMPLETED with reused
results), so that the ledger and the jobs never disagree; it is an upsert on the job id
(one row per job whatever happens). A later move to ARCHIVED leaves the row as the job ended.
Rows have no foreign key to ``jobs``: they stay after the job is destroyed.

Live figures (bytes a job holds now, active jobs) are read from ``jobs``: a job's bytes are
its input image's (``jobInfo.input.bytes``) plus its listed result files' sizes. That is the
logical size: an input linked from a stored upload, or results linked from a job that
computed the same thing, are counted for each job that lists them, although the file system
keeps them once (a quota an owner can work out from what it sees). Logs and a preview drawn
on its first request are not counted.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, delete, func, insert, or_, select
from sqlalchemy.orm import Session

from astro_otf.domain.phases import FINAL_PHASES, Phase
from astro_otf.store.tables import JobRow, ResultRow, UsageRow

__all__ = ["OwnerUsage", "UsageStore", "input_bytes", "record", "seconds_between"]

USAGE = cast(Table, UsageRow.__table__)
JOBS = cast(Table, JobRow.__table__)
RESULTS = cast(Table, ResultRow.__table__)

#: Phases a job counts against ``max_active_jobs`` in (HELD: it will run once its data is
#: there, and holds a place meanwhile).
ACTIVE = (Phase.QUEUED, Phase.EXECUTING, Phase.HELD)


def seconds_between(start: datetime | None, end: datetime | None) -> float:
    """``end - start`` in seconds; 0 when either is missing (or the clock went back)."""
    if start is None or end is None:
        return 0.0
    return max(0.0, (end - start).total_seconds())


def input_bytes(info: Any) -> int:
    """The input image's size that a job's jobInfo records (0 when it has none)."""
    if not isinstance(info, dict):
        return 0
    identity = info.get("input")
    size = identity.get("bytes") if isinstance(identity, dict) else None
    return int(size) if isinstance(size, int | float) else 0


def cpu_seconds(info: Any) -> float:
    """The CPU time a job's worker measured (jobInfo ``cpu_seconds``), 0 when none was."""
    value = info.get("cpu_seconds") if isinstance(info, dict) else None
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


def record(s: Session | Connection, job_id: str) -> None:
    """Write (or rewrite) the job's ledger row from its row as it is now, inside the caller's
    transaction; the job must be in a final phase and its results written (flushed)."""
    if isinstance(s, Session):
        s.flush()
    results = select(func.sum(RESULTS.c.size)).where(RESULTS.c.job_id == job_id).scalar_subquery()
    job = s.execute(
        select(
            JOBS.c.owner,
            JOBS.c.model_id,
            JOBS.c.phase,
            JOBS.c.creation_time,
            JOBS.c.start_time,
            JOBS.c.end_time,
            JOBS.c.info,
            results.label("results"),
        ).where(JOBS.c.job_id == job_id)
    ).one_or_none()
    if job is None or Phase(job.phase) not in FINAL_PHASES:
        return
    end = job.end_time or job.start_time or job.creation_time
    values = {
        "owner": job.owner,
        "model_id": job.model_id,
        "phase": job.phase,
        "creation_time": job.creation_time,
        "start_time": job.start_time,
        "end_time": end,
        "wall_seconds": seconds_between(job.start_time, end),
        "cpu_seconds": cpu_seconds(job.info),
        "bytes_stored": int(job.results or 0) + input_bytes(job.info),
    }
    # a portable upsert: the job's row is locked by the caller's UPDATE (PostgreSQL) or the
    # store's write lock (SQLite), so no other writer races on this job id
    s.execute(delete(USAGE).where(USAGE.c.job_id == job_id))
    s.execute(insert(USAGE).values(job_id=job_id, **values))


@dataclass
class OwnerUsage:
    """What one owner used over a period (from the ledger), and holds now."""

    owner: str | None
    by_phase: dict[str, int] = field(default_factory=dict)
    by_model: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    #: bytes the period's jobs held when they ended (deleted ones included)
    bytes_computed: int = 0
    #: bytes the owner's live jobs hold now
    bytes_stored: int = 0
    #: the owner's jobs QUEUED, EXECUTING or HELD now
    active_jobs: int = 0

    @property
    def jobs(self) -> int:
        """The period's jobs of the owner, over all final phases."""
        return sum(self.by_phase.values())


class UsageStore:
    """Reads of the ledger and of the live per-owner figures. Synchronous: call them in a
    thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def active_jobs(self, owner: str | None) -> list[tuple[str, datetime | None]]:
        """The owner's jobs that count as active (id, quote), in one indexed query."""
        query = select(JOBS.c.job_id, JOBS.c.quote).where(
            _is_owner(owner), JOBS.c.phase.in_([p.value for p in ACTIVE])
        )
        with self.engine.connect() as conn:
            return [(r.job_id, r.quote) for r in conn.execute(query)]

    def stored_bytes(self, owners: Collection[str | None] | None = None) -> dict[str | None, int]:
        """Bytes the live jobs of each owner hold (of ``owners`` only, when given)."""
        out: dict[str | None, int] = {}
        inputs = select(
            JOBS.c.owner, func.sum(JOBS.c.info[("input", "bytes")].as_float())
        ).group_by(JOBS.c.owner)
        results = (
            select(JOBS.c.owner, func.sum(RESULTS.c.size))
            .select_from(RESULTS.join(JOBS, RESULTS.c.job_id == JOBS.c.job_id))
            .group_by(JOBS.c.owner)
        )
        if owners is not None:
            inputs = inputs.where(_owner_in(owners))
            results = results.where(_owner_in(owners))
        with self.engine.connect() as conn:
            for query in (inputs, results):
                for owner, total in conn.execute(query):
                    out[owner] = out.get(owner, 0) + int(total or 0)
        return out

    def active_counts(self) -> dict[str | None, int]:
        """Every owner's number of active jobs (for the metrics)."""
        query = (
            select(JOBS.c.owner, func.count())
            .where(JOBS.c.phase.in_([p.value for p in ACTIVE]))
            .group_by(JOBS.c.owner)
        )
        with self.engine.connect() as conn:
            return {owner: int(n) for owner, n in conn.execute(query)}

    def period(
        self,
        since: datetime | None,
        until: datetime | None,
        owners: Collection[str | None] | None = None,
    ) -> dict[str | None, OwnerUsage]:
        """Each owner's ledger figures for jobs that ended in [since, until), every owner's
        (or ``owners``' only); an owner with no ledger row in the period is absent."""
        where: list[Any] = []
        if since is not None:
            where.append(USAGE.c.end_time >= since)
        if until is not None:
            where.append(USAGE.c.end_time < until)
        if owners is not None:
            where.append(_owner_in(owners, USAGE.c.owner))
        query = (
            select(
                USAGE.c.owner,
                USAGE.c.phase,
                USAGE.c.model_id,
                func.count(),
                func.sum(USAGE.c.cpu_seconds),
                func.sum(USAGE.c.wall_seconds),
                func.sum(USAGE.c.bytes_stored),
            )
            .where(*where)
            .group_by(USAGE.c.owner, USAGE.c.phase, USAGE.c.model_id)
        )
        out: dict[str | None, OwnerUsage] = {}
        with self.engine.connect() as conn:
            for owner, phase, model, n, cpu, wall, stored in conn.execute(query):
                usage = out.setdefault(owner, OwnerUsage(owner))
                usage.by_phase[phase] = usage.by_phase.get(phase, 0) + int(n)
                usage.by_model[model] = usage.by_model.get(model, 0) + int(n)
                usage.cpu_seconds += float(cpu or 0.0)
                usage.wall_seconds += float(wall or 0.0)
                usage.bytes_computed += int(stored or 0)
        return out

    def owners_with_jobs(self) -> list[str | None]:
        """Owners that have live jobs now."""
        with self.engine.connect() as conn:
            return list(conn.scalars(select(JOBS.c.owner).distinct()))

    def totals(self) -> list[tuple[str | None, str, int, float, float]]:
        """All-time ledger sums: (owner, phase, jobs, cpu seconds, wall seconds)."""
        query = select(
            USAGE.c.owner,
            USAGE.c.phase,
            func.count(),
            func.sum(USAGE.c.cpu_seconds),
            func.sum(USAGE.c.wall_seconds),
        ).group_by(USAGE.c.owner, USAGE.c.phase)
        with self.engine.connect() as conn:
            return [
                (owner, phase, int(n), float(cpu or 0.0), float(wall or 0.0))
                for owner, phase, n, cpu, wall in conn.execute(query)
            ]


def _is_owner(owner: str | None, column: Any = JOBS.c.owner) -> Any:
    return column.is_(None) if owner is None else column == owner


def _owner_in(owners: Iterable[str | None], column: Any = JOBS.c.owner) -> Any:
    names = [o for o in owners if o is not None]
    parts = []
    if names:
        parts.append(column.in_(names))
    if any(o is None for o in owners):
        parts.append(column.is_(None))
    return or_(*parts) if parts else column.in_([])
