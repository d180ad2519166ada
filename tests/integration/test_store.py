"""The job store on SQLite and on a real PostgreSQL: migrations, conditional phase changes,
ordering and listing."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from astro_otf.domain.errors import JobNotFound
from astro_otf.domain.job import ErrorSummary, ErrorType, Job, JobParameter, JobResult
from astro_otf.domain.phases import Phase
from astro_otf.store.cache import JobCache
from astro_otf.store.database import alembic_config, has_schema, make_engine, migrate
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        "sqlite-cached",
        pytest.param("postgres-cached", marks=pytest.mark.postgres),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """Every store test also runs with the job cache: what it reads must be what the
    database holds after each write."""
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'otf.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_databases").create()
    engine = make_engine(url)
    migrate(engine)
    yield JobStore(engine, cache=JobCache() if request.param.endswith("cached") else None)
    engine.dispose()


T0 = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


def make_job(
    job_id: str,
    *,
    created: datetime = T0,
    owner: str | None = None,
    priority: int = 0,
    phase: Phase = Phase.PENDING,
) -> Job:
    return Job(
        job_id=job_id,
        owner=owner,
        run_id=f"run-{job_id}",
        phase=phase,
        model_id="sep",
        priority=priority,
        creation_time=created,
        start_time=None,
        end_time=None,
        execution_duration=600,
        destruction_time=created + timedelta(days=7),
        parameters=[JobParameter("thresh", "5"), JobParameter("image", "image.fits", True)],
    )


def test_migration_creates_schema_and_is_idempotent(store: JobStore) -> None:
    assert has_schema(store.engine)
    migrate(store.engine)  # again: nothing to do, no error
    tables = set(inspect(store.engine).get_table_names())
    assert {"jobs", "job_parameters", "job_results", "alembic_version"} <= tables
    with store.engine.connect() as conn:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert conn.execute(text("select version_num from alembic_version")).scalar() == head


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_round_trip_keeps_utc_times_and_parameters(store: JobStore) -> None:
    store.create(make_job("a1"))
    job = store.get("a1")
    assert job.creation_time == T0 and job.creation_time.tzinfo is not None
    assert job.destruction_time == T0 + timedelta(days=7)
    assert job.start_time is None and job.phase is Phase.PENDING
    assert {(p.name, p.value, p.is_file) for p in job.parameters} == {
        ("thresh", "5", False),
        ("image", "image.fits", True),
    }
    assert job.parameter_values() == {"thresh": "5"}
    with pytest.raises(JobNotFound):
        store.get("nope")


def test_owner_check_hides_other_owners_jobs(store: JobStore) -> None:
    store.create(make_job("o1", owner="alice"))
    assert store.get("o1", "alice", check_owner=True).owner == "alice"
    with pytest.raises(JobNotFound):
        store.get("o1", "bob", check_owner=True)
    assert store.get("o1", "bob", check_owner=False).job_id == "o1"


def test_transition_is_conditional(store: JobStore) -> None:
    store.create(make_job("t1"))
    assert not store.mark_executing("t1", start_time=T0, run_token="r")
    assert store.mark_queued("t1", [Phase.PENDING], queue_time=T0, quote=None)
    assert store.mark_executing("t1", start_time=T0, run_token="r")
    results = [JobResult("result", "catalogue.vot", "application/x-votable+xml", 1234)]
    assert store.mark_completed(
        "t1", results, info={}, end_time=T0 + timedelta(seconds=3), owner_token="r"
    )
    # a late ABORT loses the race and changes nothing
    active = [Phase.PENDING, Phase.QUEUED, Phase.EXECUTING]
    assert not store.mark_aborted("t1", active, end_time=T0)
    job = store.get("t1")
    assert job.phase is Phase.COMPLETED
    assert job.results == results
    assert job.end_time == T0 + timedelta(seconds=3)


def test_moves_outside_the_phase_machine_are_refused(store: JobStore) -> None:
    store.create(make_job("m1"))
    with pytest.raises(ValueError, match=r"^QUEUED -> COMPLETED is not"):
        store.mark_reused("m1", [Phase.PENDING, Phase.QUEUED], [], info={}, at=T0)
    with pytest.raises(ValueError, match="COMPLETED -> QUEUED"):
        store.mark_queued("m1", [Phase.PENDING, Phase.COMPLETED], queue_time=T0, quote=None)
    assert store.get("m1").phase is Phase.PENDING


def test_only_one_of_racing_transitions_wins(store: JobStore) -> None:
    store.create(make_job("r1", phase=Phase.EXECUTING))
    wins: list[Phase] = []
    barrier = threading.Barrier(2)

    def race(target: Phase) -> None:
        barrier.wait()
        if target == Phase.ABORTED:
            moved = store.mark_aborted("r1", [Phase.EXECUTING], end_time=T0)
        else:
            error = ErrorSummary(ErrorType.FATAL, "it failed")
            moved = store.mark_failed("r1", [Phase.EXECUTING], error, end_time=T0)
        if moved:
            wins.append(target)

    threads = [threading.Thread(target=race, args=(p,)) for p in (Phase.ABORTED, Phase.ERROR)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get("r1").phase is wins[0]


def test_list_filters_and_orders_newest_first(store: JobStore) -> None:
    for i in range(5):
        store.create(make_job(f"l{i}", created=T0 + timedelta(minutes=i)))
    store.mark_queued("l1", [Phase.PENDING], queue_time=T0, quote=None)
    store.delete("l4")
    store.create(make_job("l4", created=T0 + timedelta(minutes=4), phase=Phase.ARCHIVED))
    kw: dict[str, Any] = {"owner": None, "check_owner": False}
    ids = [j.job_id for j in store.list_jobs(**kw)]
    assert ids == ["l3", "l2", "l1", "l0"]  # ARCHIVED left out unless asked for
    assert [j.job_id for j in store.list_jobs(**kw, phases=[Phase.ARCHIVED])] == ["l4"]
    assert [j.job_id for j in store.list_jobs(**kw, phases=[Phase.QUEUED])] == ["l1"]
    assert [j.job_id for j in store.list_jobs(**kw, last=2)] == ["l3", "l2"]
    after = [j.job_id for j in store.list_jobs(**kw, after=T0 + timedelta(minutes=1))]
    assert after == ["l3", "l2"]


def test_queued_ids_order_by_priority_then_age(store: JobStore) -> None:
    store.create(make_job("q0", created=T0, phase=Phase.QUEUED))
    store.create(make_job("q1", created=T0 + timedelta(seconds=1), phase=Phase.QUEUED, priority=5))
    store.create(make_job("q2", created=T0 + timedelta(seconds=2), phase=Phase.QUEUED))
    store.create(make_job("p0", phase=Phase.PENDING))
    assert store.queued_ids(10) == ["q1", "q0", "q2"]
    assert store.queued_ids(2) == ["q1", "q0"]
    assert store.queued_ids(2, exclude={"q1"}) == ["q0", "q2"]
    assert store.queued_ids(10, exclude={"q0"}) == ["q1", "q2"]
    assert store.count(Phase.QUEUED) == 3
    many = store.get_many(["q2", "p0", "nope"])
    assert sorted(j.job_id for j in many) == ["p0", "q2"]
    assert all(j.parameter_values() == {"thresh": "5"} for j in many)
    assert store.get_many([]) == []


def test_parameters_replace_only_while_pending(store: JobStore) -> None:
    store.create(make_job("p1"))
    new = [JobParameter("thresh", "7"), JobParameter("image", "image.fits", True)]
    assert store.replace_parameters("p1", new, priority=3, model_id="sep")
    job = store.get("p1")
    assert job.parameter_values() == {"thresh": "7"} and job.priority == 3
    store.mark_queued("p1", [Phase.PENDING], queue_time=T0, quote=None)
    assert not store.replace_parameters("p1", [], priority=0, model_id="sep")
    assert store.get("p1").parameter_values() == {"thresh": "7"}


def test_expiry_and_delete(store: JobStore) -> None:
    store.create(make_job("e1", created=T0 - timedelta(days=8)))
    store.create(make_job("e2"))
    assert store.next_destruction() == T0 - timedelta(days=1)
    assert store.expired(T0) == ["e1"]
    assert store.mark_queued("e1", [Phase.PENDING], queue_time=T0, quote=None)
    assert store.mark_executing("e1", start_time=T0, run_token="r")
    assert store.mark_completed(
        "e1",
        [JobResult("result", "x.vot", "text/xml", 1)],
        info={},
        end_time=T0,
        owner_token="r",
    )
    assert store.delete("e1")
    assert not store.delete("e1")
    assert store.expired(T0) == []
    with pytest.raises(JobNotFound):
        store.get("e1")


def test_job_folders_refuse_unsafe_names(tmp_path: Path) -> None:
    folders = JobFolders(tmp_path)
    base = folders.create("abc123")
    assert {p.name for p in base.iterdir()} == {"inputs", "results", "logs"}
    for bad in ("../etc", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(ValueError):
            folders.job_dir(bad)
    with pytest.raises(ValueError):
        folders.input_file("abc123", "../../passwd")
    folders.remove("abc123")
    assert not base.exists()


def test_upgrade_from_0001_keeps_existing_jobs(tmp_path: Path) -> None:
    from alembic import command

    from astro_otf.store.database import alembic_config

    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (job_id, phase, model_id, priority, creation_time, "
                "execution_duration, info) VALUES ('old1', 'COMPLETED', 'sep', 0, "
                "'2026-11-01 10:00:00', 600, '{}')"
            )
        )
    migrate(engine)
    job = JobStore(engine).get("old1")
    assert job.phase is Phase.COMPLETED and job.queue_time is None
    assert job.creation_time == datetime(2026, 11, 1, 10, tzinfo=UTC)
    engine.dispose()


def test_reads_follow_every_write(store: JobStore) -> None:
    """Each write is seen by the next read (with the cache: each write drops the cached
    record), and a job read again is the same as the database's."""
    created = store.create(make_job("c1"))
    assert created == store.get("c1")
    assert [p.name for p in created.parameters] == ["image", "thresh"]  # name order
    assert store.get("c1").phase == Phase.PENDING
    assert store.set_execution_duration("c1", 60)
    assert store.get("c1").execution_duration == 60
    assert store.replace_parameters("c1", [JobParameter("thresh", "7")], priority=3, model_id="sep")
    again = store.get("c1")
    assert (again.parameter_values(), again.priority) == ({"thresh": "7"}, 3)
    assert store.mark_queued("c1", [Phase.PENDING], queue_time=T0, quote=None)
    assert store.get("c1").phase == Phase.QUEUED
    assert store.mark_executing("c1", start_time=T0, run_token="r")
    result = JobResult("result", "catalogue.xml", "application/x-votable+xml", 12)
    assert store.mark_completed("c1", [result], info={}, end_time=T0, owner_token="r")
    done = store.get("c1")
    assert (done.phase, done.results, done.end_time) == (Phase.COMPLETED, [result], T0)
    assert done == store.get_many(["c1"])[0]
    assert store.delete("c1")
    with pytest.raises(JobNotFound):
        store.get("c1")


def test_a_refused_write_leaves_reads_right(store: JobStore) -> None:
    store.create(make_job("r1"))
    store.get("r1")
    assert not store.mark_executing("r1", start_time=T0, run_token="r")
    assert not store.set_progress("r1", {"progress": {"stage": "reading"}}, quote=T0)
    assert store.get("r1").phase == Phase.PENDING
    assert store.get("r1").info == {} and store.get("r1").quote is None


def test_a_cached_job_of_another_owner_is_not_found(store: JobStore) -> None:
    store.create(make_job("o1", owner="alice"))
    assert store.get("o1", "alice", check_owner=True).owner == "alice"  # cached now
    with pytest.raises(JobNotFound) as err:
        store.get("o1", "bob", check_owner=True)
    with pytest.raises(JobNotFound) as unknown:
        store.get("o2", "bob", check_owner=True)
    assert str(err.value).replace("o1", "o2") == str(unknown.value)


def test_writes_from_many_threads_all_land(store: JobStore) -> None:
    """Writers of one process take turns (no 'database is locked' on SQLite), and every
    job's final read is its last write."""
    for n in range(8):
        store.create(make_job(f"w{n}"))

    def work(n: int) -> None:
        job_id = f"w{n}"
        for seconds in range(1, 6):
            store.get(job_id)
            assert store.set_execution_duration(job_id, seconds)
        assert store.mark_queued(job_id, [Phase.PENDING], queue_time=T0, quote=None)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(8):
        job = store.get(f"w{n}")
        assert (job.phase, job.execution_duration) == (Phase.QUEUED, 5)
