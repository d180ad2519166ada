"""The store's named phase moves: each sets the columns of its phase, refuses a job that is
no longer in a source phase, and honours the run that owns the job."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from astro_otf.domain.job import ErrorSummary, ErrorType, Job, JobParameter, JobResult
from astro_otf.domain.phases import Phase
from astro_otf.store.database import make_engine, migrate
from astro_otf.store.repository import Arrival, JobStore
from astro_otf.store.tables import UsageRow

T0 = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=5)
T2 = T0 + timedelta(seconds=30)
RESULT = JobResult("result", "catalogue.xml", "application/x-votable+xml", 1234)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    """A migrated SQLite store of its own."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    migrate(engine)
    yield JobStore(engine)
    engine.dispose()


def _job(job_id: str, phase: Phase = Phase.PENDING, **extra: Any) -> Job:
    """A job as it is created, in ``phase``."""
    return Job(
        job_id=job_id,
        owner="alice",
        run_id=None,
        phase=phase,
        model_id="sep",
        priority=0,
        creation_time=T0,
        start_time=None,
        end_time=None,
        execution_duration=600,
        destruction_time=T0 + timedelta(days=7),
        parameters=[JobParameter("image", "image.fits", True)],
        **extra,
    )


def _running(store: JobStore, job_id: str, token: str = "run-1") -> None:
    """A job claimed by run ``token``."""
    store.create(_job(job_id, Phase.QUEUED, queue_time=T0))
    assert store.mark_executing(job_id, start_time=T1, run_token=token)


def _ledger(store: JobStore, job_id: str) -> list[str]:
    """The phases the usage ledger holds for the job (one row at most)."""
    with store.session() as s:
        return list(s.scalars(select(UsageRow.phase).where(UsageRow.job_id == job_id)))


def test_queued_records_its_wait_and_quote(store: JobStore) -> None:
    store.create(_job("q1"))
    assert not store.mark_queued("q1", [Phase.HELD], queue_time=T1, quote=T2)
    assert store.mark_queued("q1", [Phase.PENDING], queue_time=T1, quote=T2)
    job = store.get("q1")
    assert (job.phase, job.queue_time, job.quote, job.info) == (Phase.QUEUED, T1, T2, {})
    assert job.start_time is None and job.end_time is None and job.error is None


def test_a_held_job_waits_until_its_deadline_and_its_arrival_ends_the_wait(
    store: JobStore,
) -> None:
    store.create(_job("h1"), hold_until=T2)
    assert store.mark_held("h1", until=T2)
    assert not store.mark_held("h1", until=T2)  # no longer PENDING
    assert store.held() == [("h1", T2)]
    later = T2 + timedelta(hours=1)
    assert store.set_hold_until("h1", later, info={"held": {"deadline": "DESTRUCTION"}})
    assert store.held() == [("h1", later)]
    assert store.get("h1").info == {"held": {"deadline": "DESTRUCTION"}}
    info = {"input": {"bytes": 10}}
    assert store.mark_queued(
        "h1",
        [Phase.HELD],
        queue_time=T1,
        quote=None,
        info=info,
        arrival=Arrival("m31.fits", "k" * 64),
    )
    job = store.get("h1")
    assert (job.phase, job.info, job.image_name, job.cache_key) == (
        Phase.QUEUED,
        info,
        "m31.fits",
        "k" * 64,
    )
    assert store.held() == []
    assert not store.set_hold_until("h1", later, info={})  # no longer HELD


def test_executing_belongs_to_its_run(store: JobStore) -> None:
    store.create(_job("e1"))
    assert not store.mark_executing("e1", start_time=T1, run_token="run-1")  # not QUEUED
    store.mark_queued("e1", [Phase.PENDING], queue_time=T0, quote=None)
    assert store.mark_executing("e1", start_time=T1, run_token="run-1", quote=T2)
    job = store.get("e1")
    assert (job.phase, job.start_time, job.quote) == (Phase.EXECUTING, T1, T2)
    assert store.run_token("e1") == "run-1"


def test_completed_lists_its_results_and_writes_the_ledger(store: JobStore) -> None:
    _running(store, "c1")
    published: list[str] = []
    assert not store.mark_completed(
        "c1",
        [RESULT],
        info={},
        end_time=T2,
        owner_token="run-0",
        publish=lambda: published.append("x"),
    )
    assert published == [] and store.get("c1").phase == Phase.EXECUTING  # not its run
    info = {"n_sources": 3}
    assert store.mark_completed(
        "c1",
        [RESULT],
        info=info,
        end_time=T2,
        owner_token="run-1",
        publish=lambda: published.append("c1"),
    )
    job = store.get("c1")
    assert (job.phase, job.results, job.info, job.end_time) == (
        Phase.COMPLETED,
        [RESULT],
        info,
        T2,
    )
    assert published == ["c1"]
    assert _ledger(store, "c1") == ["COMPLETED"]


def test_a_failing_publish_commits_nothing(store: JobStore) -> None:
    _running(store, "c2")

    def publish() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.mark_completed(
            "c2", [RESULT], info={}, end_time=T2, owner_token="run-1", publish=publish
        )
    job = store.get("c2")
    assert (job.phase, job.results) == (Phase.EXECUTING, [])
    assert _ledger(store, "c2") == []


def test_reused_results_start_and_end_at_once(store: JobStore) -> None:
    store.create(_job("u1"), hold_until=T2)
    assert store.mark_held("u1", until=T2)
    assert not store.mark_reused("u1", [Phase.PENDING], [RESULT], info={}, at=T1)
    info = {"cached_from": "0" * 16}
    assert store.mark_reused(
        "u1", [Phase.HELD], [RESULT], info=info, at=T1, arrival=Arrival("a.fits", "k" * 64)
    )
    job = store.get("u1")
    assert (job.phase, job.start_time, job.end_time, job.results, job.info) == (
        Phase.COMPLETED,
        T1,
        T1,
        [RESULT],
        info,
    )
    assert (job.image_name, job.cache_key) == ("a.fits", "k" * 64)
    assert store.held() == [] and _ledger(store, "u1") == ["COMPLETED"]


def test_error_carries_its_type_and_message(store: JobStore) -> None:
    _running(store, "f1")
    error = ErrorSummary(ErrorType.TRANSIENT, "its worker died twice")
    assert not store.mark_failed("f1", [Phase.EXECUTING], error, end_time=T2, owner_token="x")
    assert store.mark_failed(
        "f1", [Phase.EXECUTING], error, end_time=T2, info={"a": 1}, owner_token="run-1"
    )
    job = store.get("f1")
    assert (job.phase, job.end_time, job.info) == (Phase.ERROR, T2, {"a": 1})
    assert job.error == error and job.error.error_type is ErrorType.TRANSIENT
    assert _ledger(store, "f1") == ["ERROR"]
    # a finished job moves no more
    fatal = ErrorSummary(ErrorType.FATAL, "again")
    assert not store.mark_failed("f1", [Phase.EXECUTING], fatal, end_time=T2)


def test_a_waiting_job_that_fails_waits_no_more(store: JobStore) -> None:
    store.create(_job("f2"), hold_until=T2)
    store.mark_held("f2", until=T2)
    error = ErrorSummary(ErrorType.FATAL, "its data never came")
    assert store.mark_failed("f2", [Phase.HELD], error, end_time=T2)
    assert store.get("f2").error == error and store.held() == []


def test_aborted_by_its_owner_or_by_its_time_limit(store: JobStore) -> None:
    store.create(_job("a1"))
    assert store.mark_aborted("a1", [Phase.PENDING, Phase.QUEUED], end_time=T1)
    job = store.get("a1")
    assert (job.phase, job.end_time, job.error) == (Phase.ABORTED, T1, None)
    assert _ledger(store, "a1") == ["ABORTED"]
    _running(store, "a2")
    limit = ErrorSummary(ErrorType.FATAL, "the job ran longer than its executionDuration")
    assert not store.mark_aborted(
        "a2", [Phase.EXECUTING], end_time=T2, error=limit, owner_token="run-0"
    )
    assert store.mark_aborted(
        "a2", [Phase.EXECUTING], end_time=T2, error=limit, info={}, owner_token="run-1"
    )
    assert store.get("a2").error == limit


def test_requeue_takes_the_job_from_its_run(store: JobStore) -> None:
    _running(store, "r1")
    assert not store.requeue("r1", owner_token="run-0")
    assert store.requeue("r1", owner_token="run-1", info={"worker_deaths": {"alone": 1}})
    job = store.get("r1")
    assert (job.phase, job.start_time, job.queue_time) == (Phase.QUEUED, None, T0)
    assert job.info == {"worker_deaths": {"alone": 1}}
    assert store.run_token("r1") is None
    assert _ledger(store, "r1") == []
    # after a restart (no owner token): its wait starts again
    assert store.mark_executing("r1", start_time=T1, run_token="run-2")
    assert store.requeue("r1", queue_time=T2)
    job = store.get("r1")
    assert (job.phase, job.queue_time, job.start_time) == (Phase.QUEUED, T2, None)
    assert store.run_token("r1") is None
    assert not store.requeue("r1")  # not EXECUTING


def test_settable_columns_keep_to_their_phases(store: JobStore) -> None:
    store.create(_job("s1"))
    assert store.set_execution_duration("s1", 60)
    assert store.set_destruction("s1", T2)
    assert not store.set_progress("s1", {"progress": {"stage": "reading"}})
    assert store.set_info("s1", [Phase.PENDING], {"note": "x"})
    job = store.get("s1")
    assert (job.execution_duration, job.destruction_time, job.info) == (60, T2, {"note": "x"})
    store.mark_queued("s1", [Phase.PENDING], queue_time=T0, quote=None)
    assert store.mark_executing("s1", start_time=T1, run_token="run-1")
    assert not store.set_execution_duration("s1", 120)  # only while PENDING
    assert store.set_destruction("s1", T1)  # in any phase
    progress = {"progress": {"stage": "inference"}}
    assert store.set_progress("s1", progress, quote=T2)
    job = store.get("s1")
    assert (job.execution_duration, job.destruction_time, job.info, job.quote) == (
        60,
        T1,
        progress,
        T2,
    )
    assert store.set_progress("s1", {})  # no quote: the quote stays
    assert store.get("s1").quote == T2
    assert not store.set_info("s1", [Phase.QUEUED], {})


def test_a_move_outside_the_phase_machine_is_a_programming_error(store: JobStore) -> None:
    store.create(_job("m1"))
    fatal = ErrorSummary(ErrorType.FATAL, "x")
    with pytest.raises(ValueError, match="COMPLETED -> ERROR"):
        store.mark_failed("m1", [Phase.PENDING, Phase.COMPLETED], fatal, end_time=T1)
    with pytest.raises(ValueError, match="ABORTED -> ABORTED"):
        store.mark_aborted("m1", [Phase.ABORTED], end_time=T1)
    assert store.get("m1").phase == Phase.PENDING


def test_error_types_are_the_two_uws_names() -> None:
    assert [t.value for t in ErrorType] == ["fatal", "transient"]
    assert ErrorType.of("transient") is ErrorType.TRANSIENT
    assert ErrorType.of(ErrorType.TRANSIENT) is ErrorType.TRANSIENT
    for other in ("fatal", None, "", "Transient", "retry"):
        assert ErrorType.of(other) is ErrorType.FATAL
