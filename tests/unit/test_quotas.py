"""Quotas and accounting without a server: the creation-rate token bucket, the split of a
batch's CPU time among its jobs, a real batch's measured CPU, and the ledger that outlives
its jobs."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from astro_otf.config import Settings
from astro_otf.domain.errors import QuotaExceeded
from astro_otf.domain.job import Job, JobResult
from astro_otf.domain.phases import Phase
from astro_otf.execution import worker
from astro_otf.execution.task import BatchTask, JobTask
from astro_otf.service.quotas import Quotas, TokenBucket
from astro_otf.store.database import migrate
from astro_otf.store.repository import JobStore
from astro_otf.store.usage import UsageStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the token bucket ------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_one_token_per_period() -> None:
    bucket = TokenBucket.full(rate=0.5, burst=3, now=0.0)  # 30 a minute
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(2.0)  # the next token in 1 / rate seconds
    assert bucket.take(1.0) == pytest.approx(1.0)  # half a token there: taking failed
    assert bucket.take(2.0) == 0.0
    assert bucket.take(2.0) == pytest.approx(2.0)


def test_bucket_refills_only_up_to_its_burst() -> None:
    bucket = TokenBucket.full(rate=1.0, burst=2, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert bucket.wait(1000.0) == 0.0
    assert bucket.tokens == 2.0
    assert bucket.is_full(1000.0)


def test_rate_quota_per_owner_with_retry_after(tmp_path: Path) -> None:
    clock = Clock()
    settings = Settings(data_dir=tmp_path, job_creation_rate=6, job_creation_burst=2)
    quotas = Quotas(settings, UsageStore(create_engine("sqlite://")), clock=clock)
    quotas.check_rate("alice", take=True)
    quotas.check_rate("alice", take=False)  # looking takes nothing
    quotas.check_rate("alice", take=True)
    with pytest.raises(QuotaExceeded) as refused:
        quotas.check_rate("alice", take=False)
    assert refused.value.status_code == 429
    assert refused.value.retry_after == 10  # 6 a minute: one every 10 s
    assert "job_creation_rate" in refused.value.message and "10 s" in refused.value.message
    quotas.check_rate("bob", take=True)  # another owner has a bucket of its own
    assert quotas.rate_left("alice") == 0
    clock.now += 10
    quotas.check_rate("alice", take=True)
    assert quotas.rate_left("bob") == 2  # refilled to its burst meanwhile


def test_no_rate_means_no_limit(tmp_path: Path) -> None:
    quotas = Quotas(Settings(data_dir=tmp_path), UsageStore(create_engine("sqlite://")))
    for _ in range(1000):
        quotas.check_rate(None, take=True)
    assert quotas.rate_left(None) is None


# -- CPU split -------------------------------------------------------------------------------


def test_cpu_meter_splits_shared_time_by_tiles_and_keeps_own_time() -> None:
    clock = Clock()
    meter = worker.CpuMeter(clock, {"a": 3, "b": 1})
    clock.now += 4.0  # loading the model: both, by tiles
    meter.shared(["a", "b"])
    clock.now += 8.0  # shared forward passes
    meter.shared(["a", "b"])
    clock.now += 0.5  # a's result files
    meter.own("a")
    clock.now += 1.5  # b's
    meter.own("b")
    assert meter.seconds("a") == pytest.approx(3 + 6 + 0.5)
    assert meter.seconds("b") == pytest.approx(1 + 2 + 1.5)
    # every second is charged once
    assert meter.seconds("a") + meter.seconds("b") == pytest.approx(14.0)


def test_cpu_meter_equal_split_when_untiled() -> None:
    clock = Clock()
    meter = worker.CpuMeter(clock, {"a": 1, "b": 1, "c": 1})
    clock.now += 3.0
    meter.shared(["a", "b", "c"])
    clock.now += 2.0
    meter.shared(["a", "b"])  # c had failed already
    assert [meter.seconds(j) for j in "abc"] == pytest.approx([2.0, 2.0, 1.0])


def test_a_real_batch_reports_cpu_for_each_job(tmp_path: Path, real_data: Path) -> None:
    """Two sep jobs in a batch: each outcome carries its CPU, more than nothing and no more
    than the process used."""
    tasks = []
    for name in ("j1", "j2"):
        job_dir = tmp_path / name
        (job_dir / "inputs").mkdir(parents=True)
        image = job_dir / "inputs" / "image.fits"
        shutil.copyfile(real_data / "aegean" / "synthetic_test.fits", image)
        tasks.append(JobTask(name, "sep", {}, str(image), str(job_dir), None))
    before = worker.process_cpu()
    outcomes = worker.run_batch(BatchTask("b1", "sep", tuple(tasks)))
    used = worker.process_cpu() - before
    assert all(o.ok for o in outcomes), [o.error_message for o in outcomes]
    cpu = [o.info["cpu_seconds"] for o in outcomes]
    assert all(c > 0 for c in cpu), cpu
    assert sum(cpu) <= used + 1e-3


def test_thread_clock_counts_only_its_thread() -> None:
    start = worker.thread_cpu()
    total = 0
    for i in range(200_000):
        total += i * i
    assert worker.thread_cpu() > start


# -- the ledger ------------------------------------------------------------------------------


def _job(job_id: str, owner: str | None, phase: Phase, now: datetime) -> Job:
    return Job(
        job_id=job_id,
        owner=owner,
        run_id=None,
        phase=phase,
        model_id="sep",
        priority=0,
        creation_time=now,
        start_time=None,
        end_time=None,
        execution_duration=60,
        destruction_time=now + timedelta(days=1),
        info={"input": {"bytes": 1000}},
    )


def test_ledger_row_per_final_job_survives_deletion(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    migrate(engine)
    store = JobStore(engine)
    usage = UsageStore(engine)
    now = datetime.now(UTC)
    store.create(_job("a" * 16, "alice", Phase.QUEUED, now))
    assert usage.active_jobs("alice") == [("a" * 16, None)]
    assert store.mark_executing("a" * 16, start_time=now, run_token="t")
    assert store.mark_completed(
        "a" * 16,
        [JobResult("result", "r.txt", "text/plain", 234)],
        info={"input": {"bytes": 1000}, "cpu_seconds": 1.25},
        end_time=now + timedelta(seconds=2.5),
        owner_token="t",
    )
    store.create(_job("b" * 16, "bob", Phase.PENDING, now))
    assert store.mark_aborted("b" * 16, [Phase.PENDING], end_time=now)
    assert usage.active_jobs("alice") == []
    assert usage.stored_bytes() == {"alice": 1234, "bob": 1000}
    store.delete("a" * 16)
    store.delete("b" * 16)
    period = usage.period(now - timedelta(minutes=1), now + timedelta(minutes=1))
    alice, bob = period["alice"], period["bob"]
    assert alice.by_phase == {"COMPLETED": 1} and alice.by_model == {"sep": 1}
    assert alice.wall_seconds == pytest.approx(2.5) and alice.cpu_seconds == pytest.approx(1.25)
    assert alice.bytes_computed == 1234
    assert bob.by_phase == {"ABORTED": 1} and bob.wall_seconds == 0 and bob.cpu_seconds == 0
    assert usage.stored_bytes() == {}  # nothing live any more; the ledger remains
    assert usage.period(now + timedelta(minutes=1), now + timedelta(minutes=2)) == {}
    assert usage.period(None, None, ["bob"]).keys() == {"bob"}
