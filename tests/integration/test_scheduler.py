"""The scheduler against a real store and real worker processes, driven step by step.

These pin down races that the HTTP tests only hit by chance: an ABORT that lands after a job
was claimed but before its batch task took its first step must still free the worker slot
and leave the job ABORTED.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from astro_otf.batching.former import BatchKey, BatchRules
from astro_otf.domain.job import Job, JobParameter
from astro_otf.domain.phases import Phase
from astro_otf.execution.local import LocalExecutor
from astro_otf.execution.task import BatchTask, JobTask, TaskOutcome
from astro_otf.models.registry import RegistryConfig, build_registry
from astro_otf.service.events import JobEvents
from astro_otf.service.scheduler import Scheduler
from astro_otf.store.database import make_engine, migrate
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore
from tests.conftest import install_model_version


def _sleep_job(job_id: str, seconds: float) -> Job:
    now = datetime.now(UTC)
    return Job(
        job_id=job_id,
        owner=None,
        run_id=None,
        phase=Phase.QUEUED,
        model_id="sleep",
        priority=0,
        creation_time=now,
        start_time=None,
        end_time=None,
        execution_duration=600,
        destruction_time=now + timedelta(days=1),
        queue_time=now,
        parameters=[JobParameter("model", "sleep"), JobParameter("duration", str(seconds))],
    )


async def _final(store: JobStore, job_id: str, timeout: float) -> Phase:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        phase = store.get(job_id).phase
        if phase in (Phase.COMPLETED, Phase.ERROR, Phase.ABORTED):
            return phase
        await asyncio.sleep(0.05)
    return store.get(job_id).phase


def test_abort_before_the_batch_task_starts_frees_its_slot(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    migrate(engine)
    store = JobStore(engine)
    folders = JobFolders(tmp_path)
    config = RegistryConfig(diagnostic_apps=True)
    executor = LocalExecutor(1, config)

    async def scenario() -> tuple[Phase, Phase]:
        scheduler = Scheduler(
            store, folders, executor, JobEvents(), apps=build_registry(config), registry=config
        )
        executor.start()
        try:
            for job_id in ("aaaa000000000001", "aaaa000000000002"):
                folders.create(job_id)
            store.create(_sleep_job("aaaa000000000001", 60))
            # one pass claims the job and creates its batch task, which has not run yet
            await scheduler._fill()
            assert store.get("aaaa000000000001").phase == Phase.EXECUTING
            # the ABORT lands now, as JobService.abort does it
            now = datetime.now(UTC)
            assert store.mark_aborted("aaaa000000000001", [Phase.EXECUTING], end_time=now)
            await scheduler.cancel("aaaa000000000001")
            # the only slot is free again: the next job runs to the end
            scheduler._task = asyncio.create_task(scheduler._loop())
            store.create(_sleep_job("aaaa000000000002", 0.1))
            scheduler.wake()
            second = await _final(store, "aaaa000000000002", 30)
            first = store.get("aaaa000000000001").phase
            await asyncio.sleep(0.2)
            return first, second
        finally:
            await scheduler.stop()
            await executor.shutdown()

    first, second = asyncio.run(scenario())
    assert first == Phase.ABORTED
    assert second == Phase.COMPLETED


def test_batch_ending_after_delete_does_not_recreate_the_folder(tmp_path: Path) -> None:
    folders = JobFolders(tmp_path)
    folders.create("bbbb000000000001")
    folders.remove("bbbb000000000001")
    folders.clear_results("bbbb000000000001")
    assert not folders.job_dir("bbbb000000000001").exists()


def test_two_cancels_of_one_run_both_return_after_the_worker_is_gone(tmp_path: Path) -> None:
    """On PostgreSQL an ABORT reaches the scheduler twice (the request, and its own
    notification): neither may return while the worker still runs the job."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    migrate(engine)
    store = JobStore(engine)
    folders = JobFolders(tmp_path)
    config = RegistryConfig(diagnostic_apps=True)
    executor = LocalExecutor(1, config)

    async def scenario() -> list[bool]:
        scheduler = Scheduler(
            store, folders, executor, JobEvents(), apps=build_registry(config), registry=config
        )
        executor.start()
        try:
            job_id = "cccc000000000001"
            folders.create(job_id)
            store.create(_sleep_job(job_id, 60))
            await scheduler._fill()
            log = folders.logs(job_id) / "job.log"
            while not (log.exists() and "pid" in log.read_text()):  # the worker runs it
                await asyncio.sleep(0.05)
            busy = [w for w in executor._workers if w.future is not None]
            assert len(busy) == 1
            store.mark_aborted(job_id, [Phase.EXECUTING], end_time=datetime.now(UTC))
            alive_after: list[bool] = []

            async def cancel() -> None:
                await scheduler.cancel(job_id)
                # the executor has seen the worker process exit
                alive_after.append(not busy[0].exited.is_set())

            first = asyncio.create_task(cancel())
            for _ in range(3):  # the run is now stopping its worker, waiting for it to exit
                await asyncio.sleep(0)
            await asyncio.gather(first, cancel())
            return alive_after
        finally:
            await scheduler.stop()
            await executor.shutdown()

    assert asyncio.run(scenario()) == [False, False]


class _RecordingExecutor:
    """Runs nothing: records each batch it is given and fails its jobs."""

    capacity = 4

    def __init__(self) -> None:
        self.batches: list[BatchTask] = []

    def start(self) -> None:
        pass

    def alive(self) -> bool:
        return True

    async def run(
        self, task: BatchTask, timeout: float | None, report: object = None
    ) -> list[TaskOutcome]:
        self.batches.append(task)
        return [TaskOutcome(t.job_id, False, error_message="not run") for t in task.tasks]

    async def shutdown(self) -> None:
        pass


def _detector_job(job_id: str, version: str | None) -> Job:
    job = _sleep_job(job_id, 0)
    job.model_id = "radio-detector"
    job.parameters = [JobParameter("model", "radio-detector")]
    if version is not None:
        job.parameters.append(JobParameter("model_version", version))
    return job


def test_queued_jobs_run_their_stored_model_version(tmp_path: Path) -> None:
    """A job runs the version stored at its creation; one stored before versions were (no
    MODEL_VERSION) runs the default, the newest; one whose version was removed ends in
    ERROR without stopping the others."""
    models = tmp_path / "models"
    install_model_version(models, "2.0")
    config = RegistryConfig(models_dirs=(str(models),))
    executor = _RecordingExecutor()
    jobs = {"dddd000000000001": "1.0", "dddd000000000002": None, "dddd000000000003": "0.9"}
    scheduler, store, folders = _detector_scheduler(tmp_path, executor, config, max_wait=0)

    async def scenario() -> None:
        try:
            for job_id, version in jobs.items():
                folders.create(job_id)
                store.create(_detector_job(job_id, version))
            await scheduler._fill()
            await asyncio.gather(*scheduler._batches, return_exceptions=True)
            await asyncio.gather(*scheduler._endings, return_exceptions=True)
        finally:
            await scheduler.stop()

    asyncio.run(scenario())
    ran = {t.job_id: b.model_version for b in executor.batches for t in b.tasks}
    assert ran == {"dddd000000000001": "1.0", "dddd000000000002": "2.0"}
    assert all(b.model_id == "radio-detector" for b in executor.batches)
    gone = store.get("dddd000000000003")
    assert gone.phase == Phase.ERROR and gone.error is not None
    assert "radio-detector version 0.9" in gone.error.message
    assert "installed: 2.0, 1.0" in gone.error.message


def _detector_scheduler(
    tmp_path: Path,
    executor: _RecordingExecutor,
    config: RegistryConfig | None = None,
    **rules: float,
) -> tuple[Scheduler, JobStore, JobFolders]:
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    migrate(engine)
    store = JobStore(engine)
    folders = JobFolders(tmp_path)
    config = config or RegistryConfig()
    scheduler = Scheduler(
        store,
        folders,
        executor,  # type: ignore[arg-type]
        JobEvents(),
        apps=build_registry(config),
        registry=config,
        rules=BatchRules(**rules),  # type: ignore[arg-type]
    )
    return scheduler, store, folders


def test_a_lone_job_starts_at_once_while_a_worker_is_idle(tmp_path: Path) -> None:
    """Nobody is coming: with a worker idle, one pass sends a lone job to it even though the
    batch wait (an hour here) has not passed."""
    executor = _RecordingExecutor()
    scheduler, store, folders = _detector_scheduler(tmp_path, executor, max_wait=3600)

    async def scenario() -> None:
        try:
            folders.create("eeee000000000001")
            store.create(_detector_job("eeee000000000001", None))
            await scheduler._fill()
            await asyncio.gather(*scheduler._batches, return_exceptions=True)
        finally:
            await scheduler.stop()

    asyncio.run(scenario())
    assert [[t.job_id for t in b.tasks] for b in executor.batches] == [["eeee000000000001"]]


def test_a_burst_is_spread_over_every_idle_worker(tmp_path: Path) -> None:
    """32 queued jobs of one model and two idle workers: two batches of 16, so that neither
    worker sits idle while the other runs them all."""
    executor = _RecordingExecutor()
    executor.capacity = 2
    scheduler, store, folders = _detector_scheduler(tmp_path, executor, max_jobs=64)
    ids = [f"ffff{n:012d}" for n in range(32)]

    async def scenario() -> None:
        try:
            for job_id in ids:
                folders.create(job_id)
                store.create(_detector_job(job_id, None))
            await scheduler._fill()
            await asyncio.gather(*scheduler._batches, return_exceptions=True)
        finally:
            await scheduler.stop()

    asyncio.run(scenario())
    assert sorted(len(b.tasks) for b in executor.batches) == [16, 16]
    assert sorted(t.job_id for b in executor.batches for t in b.tasks) == ids


def test_a_job_of_a_batch_ends_when_its_own_work_ends(tmp_path: Path) -> None:
    """A batch of a short and a long job: the short one is COMPLETED, with its results,
    while the long one still runs in the same worker. When that worker then dies, only the
    long one goes back to the queue (to run alone); the finished one stays COMPLETED."""
    engine = make_engine(f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    migrate(engine)
    store = JobStore(engine)
    folders = JobFolders(tmp_path)
    config = RegistryConfig(diagnostic_apps=True)
    executor = LocalExecutor(1, config)
    apps = build_registry(config)
    short, long = "gggg000000000001", "gggg000000000002"

    async def scenario() -> tuple[Phase, Phase, Job, Job]:
        scheduler = Scheduler(store, folders, executor, JobEvents(), apps=apps, registry=config)
        executor.start()
        try:
            for job_id, seconds in ((short, 0.1), (long, 60)):
                folders.create(job_id)
                store.create(_sleep_job(job_id, seconds))
            claimed = await scheduler._claim([short, long])
            key = BatchKey("sleep", apps.get("sleep").version, "", (0, 0))
            scheduler._launch(key, claimed, 2)  # one batch of both, in one worker
            assert await _final(store, short, 30) == Phase.COMPLETED
            while_running = store.get(long).phase
            assert short not in scheduler.running and long in scheduler.running
            [worker] = [w for w in executor._workers if w.future is not None]
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            await asyncio.gather(*scheduler._batches, return_exceptions=True)
            await asyncio.gather(*scheduler._endings, return_exceptions=True)
            return store.get(short).phase, while_running, store.get(short), store.get(long)
        finally:
            await scheduler.stop()
            await executor.shutdown()

    short_phase, long_while, short_job, long_job = asyncio.run(scenario())
    assert short_phase == Phase.COMPLETED and long_while == Phase.EXECUTING
    assert [r.result_id for r in short_job.results] == ["result"]
    assert (folders.job_dir(short) / "results" / "report.txt").is_file()
    assert short_job.info["batch_jobs"] == 2 and "worker_deaths" not in short_job.info
    assert long_job.phase == Phase.QUEUED
    assert long_job.info["worker_deaths"]["in_batch"] == 1


def test_every_report_of_a_big_batch_is_read_under_uvloop(tmp_path: Path) -> None:
    """600 jobs of one batch report one by one, then the batch ends with all their outcomes
    in one message bigger than a pipe's buffer: under uvloop (the server's event loop where
    installed, which makes the pipe non-blocking) every message is read whole."""
    import pytest

    uvloop = pytest.importorskip("uvloop")
    config = RegistryConfig(diagnostic_apps=True)
    tasks = tuple(
        JobTask(f"j{n}", "sleep", {"duration": "0"}, None, str(tmp_path / f"j{n}"), None, config)
        for n in range(600)
    )

    async def scenario() -> tuple[int, int]:
        executor = LocalExecutor(1, config)
        executor.start()
        # uvloop made the server's end of each pipe non-blocking: a message bigger than the
        # pipe's buffer would then be cut short (BlockingIOError) and lost
        assert all(os.get_blocking(w.conn.fileno()) for w in executor._workers)
        reported: list[TaskOutcome] = []
        try:
            batch = BatchTask("big", "sleep", tasks, config)
            outcomes = await asyncio.wait_for(
                executor.run(batch, None, report=reported.append), 120
            )
            return len(outcomes), len(reported)
        finally:
            await executor.shutdown()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == (600, 600)
