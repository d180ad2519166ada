"""The job repository: every read and write of job rows goes through here.

Phase changes are conditional updates (``UPDATE ... WHERE phase IN (...)``) in one
transaction, so that two actors racing (an ABORT and a worker finishing, say) cannot both win.
Each move is a named method (:meth:`JobStore.mark_queued`, ``mark_executing``,
``mark_completed``, ``mark_failed``, ...) that owns the columns going with its phase, so a
caller says what happened, not which columns change.

Hot reads are SQLAlchemy Core selects on a pooled connection (no ORM session or objects). On
SQLite the writes of this process take turns on a lock before they open their transaction,
so that they queue in Python instead of sleeping in SQLite's busy handler; and with a
:class:`~astro_otf.store.cache.JobCache` every write invalidates the job's cached record once
it has committed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Row,
    Table,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.base import Executable

from astro_otf.domain.errors import JobNotFound
from astro_otf.domain.job import ErrorSummary, ErrorType, Job, JobParameter, JobResult, JobSummary
from astro_otf.domain.phases import FINAL_PHASES, Phase, can_move
from astro_otf.store import usage
from astro_otf.store.cache import JobCache
from astro_otf.store.tables import JobRow, ParameterRow, ResultRow

__all__ = ["JOB_CHANNEL", "Arrival", "JobStore"]

JOBS = cast(Table, JobRow.__table__)
PARAMETERS = cast(Table, ParameterRow.__table__)
RESULTS = cast(Table, ResultRow.__table__)


def _changed(session: Session, statement: Executable) -> int:
    """Execute an UPDATE or DELETE and return how many rows it touched."""
    result = session.execute(statement)
    return cast(CursorResult[Any], result).rowcount


@dataclass(frozen=True)
class Arrival:
    """What a job waiting for its data (PENDING created waiting, or HELD) learned when the
    data came: the image's file name and what the job now computes (its computation key).
    Recording it ends the wait."""

    image_name: str | None
    cache_key: str | None


def _arrived(arrival: Arrival) -> dict[str, Any]:
    """The columns an arrival sets."""
    return {"image_name": arrival.image_name, "cache_key": arrival.cache_key, "hold_until": None}


def _error_columns(error: ErrorSummary) -> dict[str, Any]:
    """The columns of an errorSummary (the type stored as its UWS name)."""
    return {"error_type": error.error_type.value, "error_message": error.message}


def _to_job(row: Row[Any], parameters: Sequence[Row[Any]], results: Sequence[Row[Any]]) -> Job:
    """A job from its row (Core) and its parameter and result rows (in their order)."""
    error = None
    if row.error_message is not None:
        error = ErrorSummary(ErrorType.of(row.error_type), row.error_message)
    return Job(
        job_id=row.job_id,
        owner=row.owner,
        run_id=row.run_id,
        phase=Phase(row.phase),
        model_id=row.model_id,
        priority=row.priority,
        creation_time=row.creation_time,
        start_time=row.start_time,
        end_time=row.end_time,
        execution_duration=row.execution_duration,
        destruction_time=row.destruction_time,
        quote=row.quote,
        queue_time=row.queue_time,
        error=error,
        parameters=[JobParameter(p.name, p.value, bool(p.is_file)) for p in parameters],
        results=[JobResult(r.result_id, r.filename, r.mime_type, r.size) for r in results],
        info=dict(row.info or {}),
        image_name=row.image_name,
        cache_key=row.cache_key,
    )


def _summary(row: Any) -> JobSummary:
    """A job-list line from a row of :meth:`JobStore.list_jobs`'s select."""
    sources = row.sources if row.phase == Phase.COMPLETED.value else None
    progress = row.progress
    return JobSummary(
        row.job_id,
        Phase(row.phase),
        row.run_id,
        row.owner,
        row.creation_time,
        model_id=row.model_id,
        image_name=row.image_name,
        end_time=row.end_time,
        sources=sources if isinstance(sources, int) else None,
        progress=progress if isinstance(progress, dict) else None,
        has_preview=bool(row.has_preview),
    )


def _name_matches(column: Any, pattern: str) -> Any:
    """``column`` equal to ``pattern``, or LIKE it where it holds ``*`` (the only wildcard;
    SQL's own ``%`` and ``_`` are taken literally)."""
    if "*" not in pattern:
        return column == pattern
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%"), escape="\\")


def _read_jobs(conn: Connection, job_ids: Collection[str]) -> list[Job]:
    """Jobs with their parameters and results: three selects on one connection."""
    ids = list(job_ids)
    if len(ids) == 1:
        where_job, where_param, where_result = (
            JOBS.c.job_id == ids[0],
            PARAMETERS.c.job_id == ids[0],
            RESULTS.c.job_id == ids[0],
        )
    else:
        where_job, where_param, where_result = (
            JOBS.c.job_id.in_(ids),
            PARAMETERS.c.job_id.in_(ids),
            RESULTS.c.job_id.in_(ids),
        )
    rows = conn.execute(select(JOBS).where(where_job)).all()
    if not rows:
        return []
    params: dict[str, list[Row[Any]]] = {}
    for p in conn.execute(
        select(PARAMETERS).where(where_param).order_by(PARAMETERS.c.job_id, PARAMETERS.c.name)
    ):
        params.setdefault(p.job_id, []).append(p)
    results: dict[str, list[Row[Any]]] = {}
    for r in conn.execute(
        select(RESULTS).where(where_result).order_by(RESULTS.c.job_id, RESULTS.c.position)
    ):
        results.setdefault(r.job_id, []).append(r)
    return [_to_job(r, params.get(r.job_id, []), results.get(r.job_id, [])) for r in rows]


#: PostgreSQL channel on which every phase change is announced, as "<job id> <PHASE>" (or
#: "<job id> DELETED"), delivered when its transaction commits: what lets several API
#: replicas wake each other's WAITs and the leading replica's scheduler.
JOB_CHANNEL = "otf_jobs"


class JobStore:
    """Jobs in the database. Methods are synchronous: the HTTP layer calls them in threads."""

    def __init__(self, engine: Engine, *, cache: JobCache | None = None) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._announce = engine.dialect.name == "postgresql"
        #: Job records by id; only where every write goes through this store (see
        #: :mod:`astro_otf.store.cache`).
        self.cache = cache
        self._write_lock: threading.Lock | None = (
            threading.Lock() if engine.dialect.name == "sqlite" else None
        )

    @contextlib.contextmanager
    def _writing(self, job_id: str | None) -> Iterator[None]:
        """Around one write transaction: on SQLite this process's writers take turns here
        (SQLite allows one writer; waiting in its busy handler sleeps in steps of up to
        100 ms); the job's cached record is dropped after the transaction ends."""
        try:
            if self._write_lock is None:
                yield
            else:
                with self._write_lock:
                    yield
        finally:
            if self.cache is not None and job_id is not None:
                self.cache.invalidate(job_id)

    def cached(self, job_id: str) -> Job | None:
        """The job's cached record, if the store keeps one (no database read)."""
        return None if self.cache is None else self.cache.get(job_id)

    def document(self, job: Job, key: str, render: Callable[[], bytes]) -> bytes:
        """A document rendered from ``job``, kept with its cached record."""
        if self.cache is None:
            return render()
        return self.cache.document(job, key, render)

    def _announce_change(self, s: Session, job_id: str, what: str) -> None:
        """On PostgreSQL, tell the other replicas (when the transaction commits)."""
        if self._announce:
            s.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": JOB_CHANNEL, "payload": f"{job_id} {what}"},
            )

    def session(self) -> Session:
        """A new ORM session on the store's engine."""
        return self._sessions()

    def ping(self) -> None:
        """Raise if the database cannot be reached (the health check)."""
        with self.session() as s:
            s.execute(select(1))

    # -- create / read -------------------------------------------------------------------

    def create(self, job: Job, *, hold_until: datetime | None = None) -> Job:
        """Record a new job; returns it as a read would (parameters in name order).
        ``hold_until``: when the wait of a job born waiting for its data ends."""
        ticket = None if self.cache is None else self.cache.ticket()
        with self._writing(None), self.engine.begin() as conn:
            conn.execute(
                insert(JOBS).values(
                    job_id=job.job_id,
                    owner=job.owner,
                    run_id=job.run_id,
                    phase=job.phase.value,
                    model_id=job.model_id,
                    priority=job.priority,
                    creation_time=job.creation_time,
                    execution_duration=job.execution_duration,
                    destruction_time=job.destruction_time,
                    quote=job.quote,
                    queue_time=job.queue_time,
                    start_time=job.start_time,
                    end_time=job.end_time,
                    info=job.info,
                    image_name=job.image_name,
                    cache_key=job.cache_key,
                    hold_until=hold_until,
                )
            )
            if job.parameters:
                conn.execute(
                    insert(PARAMETERS),
                    [
                        {
                            "job_id": job.job_id,
                            "name": p.name,
                            "value": p.value,
                            "is_file": p.is_file,
                        }
                        for p in job.parameters
                    ],
                )
            if job.results:  # a job born COMPLETED with another's results (reuse of results)
                conn.execute(
                    insert(RESULTS),
                    [
                        {
                            "job_id": job.job_id,
                            "result_id": r.result_id,
                            "position": pos,
                            "filename": r.filename,
                            "mime_type": r.mime_type,
                            "size": r.size,
                        }
                        for pos, r in enumerate(job.results)
                    ],
                )
            if job.phase in FINAL_PHASES:  # born COMPLETED with reused results
                usage.record(conn, job.job_id)
            if job.phase != Phase.PENDING and self._announce:
                conn.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": JOB_CHANNEL, "payload": f"{job.job_id} {job.phase.value}"},
                )
        stored = Job(
            **{
                **job.__dict__,
                "parameters": sorted(job.parameters, key=lambda p: p.name),
                "results": list(job.results),
                "info": dict(job.info),
            }
        )
        if self.cache is not None and ticket is not None:
            self.cache.fill(stored, ticket)
        return stored

    def get(self, job_id: str, owner: str | None = None, *, check_owner: bool = False) -> Job:
        """The job, or JobNotFound. With ``check_owner`` a job of another owner is not found
        (the same answer as an unknown id)."""
        job = None if self.cache is None else self.cache.get(job_id)
        if job is None:
            ticket = None if self.cache is None else self.cache.ticket()
            with self.engine.connect() as conn:
                found = _read_jobs(conn, [job_id])
            if not found:
                raise JobNotFound(job_id)
            job = found[0]
            if self.cache is not None and ticket is not None:
                self.cache.fill(job, ticket)
        if check_owner and job.owner != owner:
            raise JobNotFound(job_id)
        return job

    def list_jobs(
        self,
        *,
        owner: str | None,
        check_owner: bool,
        phases: Collection[Phase] | None = None,
        after: datetime | None = None,
        last: int | None = None,
        run_ids: Collection[str] = (),
        image_names: Collection[str] = (),
        details: bool = False,
    ) -> list[JobSummary]:
        """Jobs newest first. Without ``phases``, ARCHIVED jobs are left out (UWS 1.1).
        ``run_ids`` and ``image_names`` keep jobs with one of those values; a ``*`` in an
        image name matches any characters. With ``details``, each line has what a person
        looks for besides UWS's jobref (model, image name, end, sources, progress, whether
        there is a preview); without, the query is the cheaper one UWS's XML list needs."""
        columns: list[Any] = [
            JOBS.c.job_id,
            JOBS.c.phase,
            JOBS.c.run_id,
            JOBS.c.owner,
            JOBS.c.creation_time,
        ]
        if details:
            has_preview = (
                select(RESULTS.c.job_id)
                .where(RESULTS.c.job_id == JOBS.c.job_id, RESULTS.c.result_id == "preview")
                .exists()
            )
            columns += [
                JOBS.c.model_id,
                JOBS.c.image_name,
                JOBS.c.end_time,
                # two keys of the info document, not all of it
                JOBS.c.info["n_sources"].as_integer().label("sources"),
                case(
                    (JOBS.c.phase == Phase.EXECUTING.value, JOBS.c.info["progress"]),
                    else_=None,
                ).label("progress"),
                has_preview.label("has_preview"),
            ]
        query = select(*columns)
        if check_owner:
            query = query.where(JOBS.c.owner == owner)
        if phases:
            query = query.where(JOBS.c.phase.in_([p.value for p in phases]))
        else:
            query = query.where(JOBS.c.phase != Phase.ARCHIVED.value)
        if after is not None:
            query = query.where(JOBS.c.creation_time > after)
        if run_ids:
            query = query.where(JOBS.c.run_id.in_(list(run_ids)))
        if image_names:
            query = query.where(or_(*(_name_matches(JOBS.c.image_name, n) for n in image_names)))
        query = query.order_by(JOBS.c.creation_time.desc(), JOBS.c.job_id)
        if last is not None:
            query = query.limit(last)
        with self.engine.connect() as conn:
            rows = conn.execute(query)
            if not details:
                return [
                    JobSummary(r.job_id, Phase(r.phase), r.run_id, r.owner, r.creation_time)
                    for r in rows
                ]
            return [_summary(r) for r in rows]

    def find_computed(self, cache_key: str, owner: str | None, *, check_owner: bool) -> Job | None:
        """The newest COMPLETED job of ``owner`` (any owner without ``check_owner``) whose
        computation key is ``cache_key``; None when there is none."""
        query = select(JOBS.c.job_id).where(
            JOBS.c.cache_key == cache_key, JOBS.c.phase == Phase.COMPLETED.value
        )
        if check_owner:
            query = query.where(JOBS.c.owner == owner)
        query = query.order_by(JOBS.c.end_time.desc()).limit(1)
        with self.engine.connect() as conn:
            job_id = conn.scalar(query)
            if job_id is None:
                return None
            found = _read_jobs(conn, [job_id])
        return found[0] if found else None

    def count(self, phase: Phase) -> int:
        """How many jobs are in ``phase``."""
        with self.session() as s:
            return s.scalar(select(func.count()).where(JobRow.phase == phase.value)) or 0

    def queued_by_model(self) -> dict[str, int]:
        """QUEUED jobs per model id (the metrics' queue gauge)."""
        with self.session() as s:
            rows = s.execute(
                select(JobRow.model_id, func.count())
                .where(JobRow.phase == Phase.QUEUED.value)
                .group_by(JobRow.model_id)
            )
            return {model: n for model, n in rows}

    def counts_by_phase(self) -> dict[str, int]:
        """Jobs per phase name (phases without jobs left out)."""
        with self.session() as s:
            rows = s.execute(select(JobRow.phase, func.count()).group_by(JobRow.phase))
            return {phase: n for phase, n in rows}

    # -- phase changes -------------------------------------------------------------------
    #
    # Each move is one named method that owns the columns going with its phase; all of them
    # go through _transition, which checks the phase machine and makes the conditional update.

    def mark_queued(
        self,
        job_id: str,
        sources: Iterable[Phase],
        *,
        queue_time: datetime,
        quote: datetime | None,
        info: dict[str, Any] | None = None,
        arrival: Arrival | None = None,
    ) -> bool:
        """Into the queue (sent RUN, or its data arrived): ``queue_time`` starts its wait,
        ``quote`` is its estimated end. ``info`` (when given) replaces its jobInfo;
        ``arrival`` records the data a waiting job got, and ends its wait."""
        fields: dict[str, Any] = {"queue_time": queue_time, "quote": quote}
        if info is not None:
            fields["info"] = info
        if arrival is not None:
            fields.update(_arrived(arrival))
        return self._transition(job_id, sources, Phase.QUEUED, **fields)

    def mark_held(self, job_id: str, *, until: datetime | None) -> bool:
        """PENDING -> HELD: sent RUN while its data is not there yet; ``until``: when its wait
        ends in ERROR (None: it waits as long as the job lives)."""
        return self._transition(job_id, [Phase.PENDING], Phase.HELD, hold_until=until)

    def mark_executing(
        self,
        job_id: str,
        *,
        start_time: datetime,
        run_token: str,
        quote: datetime | None = None,
    ) -> bool:
        """QUEUED -> EXECUTING: claimed by the run ``run_token``, which alone may record its
        end; ``quote`` (when given) is its estimated end."""
        fields: dict[str, Any] = {"start_time": start_time, "run_token": run_token}
        if quote is not None:
            fields["quote"] = quote
        return self._transition(job_id, [Phase.QUEUED], Phase.EXECUTING, **fields)

    def mark_completed(
        self,
        job_id: str,
        results: list[JobResult],
        *,
        info: dict[str, Any],
        end_time: datetime,
        owner_token: str,
        publish: Callable[[], None] | None = None,
    ) -> bool:
        """EXECUTING -> COMPLETED with ``results`` listed, while run ``owner_token`` owns the
        job. ``publish`` moves the result files into place inside the transaction (see
        :meth:`_transition`)."""
        return self._transition(
            job_id,
            [Phase.EXECUTING],
            Phase.COMPLETED,
            results=results,
            owner_token=owner_token,
            publish=publish,
            end_time=end_time,
            info=info,
        )

    def mark_reused(
        self,
        job_id: str,
        sources: Iterable[Phase],
        results: list[JobResult],
        *,
        info: dict[str, Any],
        at: datetime,
        arrival: Arrival | None = None,
    ) -> bool:
        """COMPLETED at once with the ``results`` of a job that computed the same thing
        (their files already linked into its folder): it starts and ends ``at``. ``arrival``
        records the data a waiting job got, and ends its wait."""
        fields: dict[str, Any] = {"start_time": at, "end_time": at, "info": info}
        if arrival is not None:
            fields.update(_arrived(arrival))
        return self._transition(job_id, sources, Phase.COMPLETED, results=results, **fields)

    def mark_failed(
        self,
        job_id: str,
        sources: Iterable[Phase],
        error: ErrorSummary,
        *,
        end_time: datetime,
        info: dict[str, Any] | None = None,
        owner_token: str | None = None,
    ) -> bool:
        """ERROR with ``error`` as its errorSummary; a job that waited for its data waits no
        more. ``info`` (when given) replaces its jobInfo; with ``owner_token``, only while
        that run owns the job."""
        fields: dict[str, Any] = {**_error_columns(error), "end_time": end_time, "hold_until": None}
        if info is not None:
            fields["info"] = info
        return self._transition(job_id, sources, Phase.ERROR, owner_token=owner_token, **fields)

    def mark_aborted(
        self,
        job_id: str,
        sources: Iterable[Phase],
        *,
        end_time: datetime,
        error: ErrorSummary | None = None,
        info: dict[str, Any] | None = None,
        owner_token: str | None = None,
    ) -> bool:
        """ABORTED: by its owner (ABORT, DELETE), or, with ``error`` saying why, by the
        service (its executionDuration ran out). ``info`` (when given) replaces its jobInfo;
        with ``owner_token``, only while that run owns the job."""
        fields: dict[str, Any] = {"end_time": end_time}
        if error is not None:
            fields.update(_error_columns(error))
        if info is not None:
            fields["info"] = info
        return self._transition(job_id, sources, Phase.ABORTED, owner_token=owner_token, **fields)

    def requeue(
        self,
        job_id: str,
        *,
        owner_token: str | None = None,
        queue_time: datetime | None = None,
        info: dict[str, Any] | None = None,
    ) -> bool:
        """EXECUTING -> QUEUED, to run again: it is no longer started and no run owns it.
        With ``owner_token``, only while that run owns the job; ``queue_time`` (when given)
        starts its wait again, else it keeps its place; ``info`` (when given) replaces its
        jobInfo."""
        fields: dict[str, Any] = {"start_time": None, "run_token": None}
        if queue_time is not None:
            fields["queue_time"] = queue_time
        if info is not None:
            fields["info"] = info
        return self._transition(
            job_id, [Phase.EXECUTING], Phase.QUEUED, owner_token=owner_token, **fields
        )

    def _transition(
        self,
        job_id: str,
        sources: Iterable[Phase],
        target: Phase,
        *,
        results: list[JobResult] | None = None,
        owner_token: str | None = None,
        publish: Callable[[], None] | None = None,
        **fields: Any,
    ) -> bool:
        """Move the job to ``target`` if it is now in one of ``sources``; set ``fields`` (column
        names) and, for a finished job, record its results in the same transaction.
        Returns False when the job was not in a source phase (someone else moved it).
        A move the phase machine does not allow is a programming error (ValueError).

        With ``owner_token`` the move is made only while that run still owns the job (its
        ``run_token``): a run that was superseded (its job queued again by a recovery and
        claimed by another run) changes nothing. ``publish`` is called once the row has
        moved and before the transaction commits (the results' files are moved into place
        there): if it raises, nothing is committed and the exception propagates."""
        sources = list(sources)
        illegal = [p.value for p in sources if not can_move(p, target)]
        if illegal:
            raise ValueError(
                f"{', '.join(illegal)} -> {target.value} is not a move of the phase machine"
            )
        condition = [JobRow.job_id == job_id, JobRow.phase.in_([p.value for p in sources])]
        if owner_token is not None:
            condition.append(JobRow.run_token == owner_token)
        with self._writing(job_id), self.session() as s, s.begin():
            done = _changed(
                s, update(JobRow).where(*condition).values(phase=target.value, **fields)
            )
            if not done:
                return False
            self._announce_change(s, job_id, target.value)
            for pos, r in enumerate(results or []):
                s.add(
                    ResultRow(
                        job_id=job_id,
                        result_id=r.result_id,
                        position=pos,
                        filename=r.filename,
                        mime_type=r.mime_type,
                        size=r.size,
                    )
                )
            if target in FINAL_PHASES and target != Phase.ARCHIVED:
                usage.record(s, job_id)  # the ledger row, in the same transaction
            if publish is not None:
                s.flush()  # the row lock is held (PostgreSQL) or the write lock (SQLite)
                publish()
            return True

    # -- settable columns ----------------------------------------------------------------

    def set_execution_duration(self, job_id: str, seconds: int) -> bool:
        """The run-time limit (EXECUTIONDURATION) of a PENDING job; False once it left
        PENDING."""
        return self._update(job_id, [Phase.PENDING], execution_duration=seconds)

    def set_destruction(self, job_id: str, when: datetime) -> bool:
        """When the job is destroyed (DESTRUCTION), in any phase; False for a job gone."""
        return self._update(job_id, list(Phase), destruction_time=when)

    def set_progress(
        self, job_id: str, info: dict[str, Any], *, quote: datetime | None = None
    ) -> bool:
        """A running job's jobInfo (its ``progress`` in it) and, when given, its quote (its
        estimated end); False once it no longer runs."""
        fields: dict[str, Any] = {"info": info}
        if quote is not None:
            fields["quote"] = quote
        return self._update(job_id, [Phase.EXECUTING], **fields)

    def set_info(self, job_id: str, sources: Iterable[Phase], info: dict[str, Any]) -> bool:
        """The job's whole jobInfo, while it is in one of ``sources``."""
        return self._update(job_id, sources, info=info)

    def set_hold_until(self, job_id: str, until: datetime, *, info: dict[str, Any]) -> bool:
        """When a HELD job's wait ends (its jobInfo, which says so, with it); False once it
        is no longer HELD."""
        return self._update(job_id, [Phase.HELD], info=info, hold_until=until)

    def _update(self, job_id: str, sources: Iterable[Phase], **fields: Any) -> bool:
        """Set columns if the job is in one of ``sources``; False otherwise."""
        with self._writing(job_id), self.session() as s, s.begin():
            return bool(
                _changed(
                    s,
                    update(JobRow)
                    .where(JobRow.job_id == job_id, JobRow.phase.in_([p.value for p in sources]))
                    .values(**fields),
                )
            )

    def replace_parameters(
        self,
        job_id: str,
        params: list[JobParameter],
        *,
        priority: int,
        model_id: str,
        cache_key: str | None = None,
        info: dict[str, Any] | None = None,
        image_name: str | None = None,
    ) -> bool:
        """Replace the whole parameter set of a PENDING job; False if it is no longer PENDING."""
        with self._writing(job_id), self.session() as s, s.begin():
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or row.phase != Phase.PENDING.value:
                return False
            s.execute(delete(ParameterRow).where(ParameterRow.job_id == job_id))
            s.add_all(
                ParameterRow(job_id=job_id, name=p.name, value=p.value, is_file=p.is_file)
                for p in params
            )
            row.priority = priority
            row.model_id = model_id
            row.cache_key = cache_key
            if info is not None:
                row.info = info
            if image_name is not None:
                row.image_name = image_name
            return True

    def delete(self, job_id: str) -> bool:
        """Remove the job's rows (its ledger row stays); False when it was already gone."""
        with self._writing(job_id), self.session() as s, s.begin():
            s.execute(delete(ParameterRow).where(ParameterRow.job_id == job_id))
            s.execute(delete(ResultRow).where(ResultRow.job_id == job_id))
            gone = bool(_changed(s, delete(JobRow).where(JobRow.job_id == job_id)))
            if gone:
                self._announce_change(s, job_id, "DELETED")
            return gone

    # -- queries for the scheduler and reaper ---------------------------------------------

    def queued_ids(self, limit: int, exclude: Collection[str] = ()) -> list[str]:
        """Ids of QUEUED jobs, in the order they should run (an index-only query)."""
        query = (
            select(JobRow.job_id)
            .where(JobRow.phase == Phase.QUEUED.value)
            .order_by(JobRow.priority.desc(), JobRow.creation_time, JobRow.job_id)
            .limit(limit + len(exclude))
        )
        with self.session() as s:
            return [i for i in s.scalars(query) if i not in exclude][:limit]

    def get_many(self, job_ids: Collection[str]) -> list[Job]:
        """Several jobs in one query (those that exist)."""
        if not job_ids:
            return []
        with self.engine.connect() as conn:
            return _read_jobs(conn, job_ids)

    def run_token(self, job_id: str) -> str | None:
        """The token of the run that owns the job now (None when no run does)."""
        with self.session() as s:
            return s.scalar(select(JobRow.run_token).where(JobRow.job_id == job_id))

    def existing_ids(self, job_ids: Collection[str]) -> set[str]:
        """Those of ``job_ids`` that have a row."""
        found: set[str] = set()
        ids = list(job_ids)
        with self.session() as s:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found.update(s.scalars(select(JobRow.job_id).where(JobRow.job_id.in_(chunk))))
        return found

    def ids_in_phase(self, phase: Phase) -> list[str]:
        """Ids of every job in ``phase``."""
        with self.session() as s:
            return list(s.scalars(select(JobRow.job_id).where(JobRow.phase == phase.value)))

    def expired(self, now: datetime) -> list[str]:
        """Ids of the jobs whose destruction time is ``now`` or earlier."""
        with self.session() as s:
            return list(s.scalars(select(JobRow.job_id).where(JobRow.destruction_time <= now)))

    def held(self) -> list[tuple[str, datetime | None]]:
        """(job id, hold deadline) of every HELD job (waiting for its data)."""
        query = select(JobRow.job_id, JobRow.hold_until).where(JobRow.phase == Phase.HELD.value)
        with self.session() as s:
            return [(r.job_id, r.hold_until) for r in s.execute(query)]

    def next_destruction(self) -> datetime | None:
        """The earliest destruction time of any job (None: there is no job), for the
        reaper's sleep."""
        with self.session() as s:
            return s.scalar(select(func.min(JobRow.destruction_time)))
