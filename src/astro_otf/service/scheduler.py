"""The scheduler: forms batches of QUEUED jobs, runs each in a free worker, and records how
every job of it ended.

It is woken when a job is queued or a batch ends, and when a waiting batch key reaches its
``max_wait`` (no polling). The batch former decides what runs together: jobs of one ONNX
model, precision and tile shape share forward passes; a classical finder's job runs alone.
Every way a run can end becomes one phase change per job: COMPLETED with its results, ERROR
with an errorSummary, ABORTED when its executionDuration ran out, or QUEUED again when the
batch was stopped because of another job (an ABORT, or a shorter time limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from datetime import UTC, datetime

from astro_otf.batching.former import BatchFormer, BatchKey, BatchRules, QueuedJob
from astro_otf.domain.errors import JobNotFound
from astro_otf.domain.job import Job, JobResult
from astro_otf.domain.phases import Phase
from astro_otf.execution.base import Executor, JobCancelled, WorkerDied
from astro_otf.execution.task import BatchTask, JobTask, TaskOutcome
from astro_otf.models.base import BatchableApp
from astro_otf.models.registry import Registry, RegistryConfig
from astro_otf.service.events import JobEvents
from astro_otf.service.metrics import Metrics
from astro_otf.service.threads import in_thread
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _signal_name(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class Scheduler:
    def __init__(
        self,
        store: JobStore,
        folders: JobFolders,
        executor: Executor,
        events: JobEvents,
        *,
        apps: Registry,
        registry: RegistryConfig | None = None,
        rules: BatchRules | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.folders = folders
        self.executor = executor
        self.events = events
        self.apps = apps
        self.registry = registry or RegistryConfig()
        self.former = BatchFormer(rules or BatchRules())
        #: job id -> the task running its batch (several jobs share one task)
        self.running: dict[str, asyncio.Task[None]] = {}
        self._batches: set[asyncio.Task[None]] = set()
        #: the former's view of each QUEUED job, built once per job
        self._known: dict[str, QueuedJob] = {}
        self._wake = asyncio.Event()
        self._deadline: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._claiming: set[str] = set()
        self._cancelled: set[str] = set()

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.executor.start()
        self._task = asyncio.create_task(self._loop(), name="otf-scheduler")
        self.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in self._batches:
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self.executor.alive()

    # -- dispatch ------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = None if self._deadline is None else max(0.0, self._deadline - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                await self._fill()
            except Exception:  # keep scheduling whatever one pass hit (database hiccup, ...)
                log.exception("scheduler pass failed; retrying in 1 s")
                await asyncio.sleep(1)
                self._wake.set()

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = None
        free = self.executor.capacity - len(self._batches)
        if free <= 0:
            return
        # One light query per pass; whole jobs are read only the first time they are seen.
        ids = await in_thread(self.store.queued_ids, 2000, frozenset(self.running))
        new = [job_id for job_id in ids if job_id not in self._known]
        for fresh in await in_thread(self.store.get_many, new):
            self._known[fresh.job_id] = await self._queued(fresh, loop.time())
        self._known = {job_id: self._known[job_id] for job_id in ids if job_id in self._known}
        queue = list(self._known.values())
        while free > 0 and queue:
            batch = self.former.next_batch(queue, loop.time())
            if batch is None:
                break
            chosen = {q.job_id for q in batch.jobs}
            queue = [q for q in queue if q.job_id not in chosen]
            claimed = [job for q in batch.jobs if (job := await self._claim(q.job_id))]
            if claimed:
                self._launch(batch.key, claimed, batch.tiles)
                free -= 1
            for job_id in chosen:
                self._known.pop(job_id, None)
                self.events.notify(job_id)
        self._deadline = self.former.next_deadline(queue)

    async def _queued(self, job: Job, now: float) -> QueuedJob:
        """The former's view of a queued job: its batch key and tile count."""
        app = self.apps.get(job.model_id)
        waited = (utcnow() - job.queue_time).total_seconds() if job.queue_time else 0.0
        if not isinstance(app, BatchableApp):  # a classical finder: runs alone
            key = BatchKey(job.model_id, app.version, "", (0, 0))
            return QueuedJob(job.job_id, key, job.owner, job.priority, now - waited, 1, False)
        tiles = await in_thread(app.count_tiles, self._image_path(job), job)
        key = app.batch_key(job.parameter_values().get("precision"))
        return QueuedJob(job.job_id, key, job.owner, job.priority, now - waited, tiles)

    async def _claim(self, job_id: str) -> Job | None:
        """QUEUED -> EXECUTING; the job as it is then, or None if it was moved, aborted or
        deleted meanwhile. An ABORT landing between the awaits is remembered in _cancelled."""
        self._claiming.add(job_id)
        try:
            moved = await in_thread(
                self.store.transition, job_id, [Phase.QUEUED], Phase.EXECUTING, start_time=utcnow()
            )
            job = await in_thread(self.store.get, job_id) if moved else None
        except JobNotFound:
            job = None
        finally:
            self._claiming.discard(job_id)
            cancelled = job_id in self._cancelled
            self._cancelled.discard(job_id)
        if job is None or cancelled or job.phase != Phase.EXECUTING:
            return None
        if self.metrics is not None and job.queue_time and job.start_time:
            wait = (job.start_time - job.queue_time).total_seconds()
            self.metrics.queue_wait.labels(job.model_id).observe(max(wait, 0.0))
        return job

    def _image_path(self, job: Job) -> str | None:
        image = next((p for p in job.parameters if p.is_file and p.name == "image"), None)
        return str(self.folders.input_file(job.job_id, image.value)) if image else None

    def _launch(self, key: BatchKey, jobs: list[Job], tiles: int) -> None:
        tasks = tuple(
            JobTask(
                job_id=job.job_id,
                model_id=job.model_id,
                parameters=job.parameter_values(),
                image_path=self._image_path(job),
                job_dir=str(self.folders.job_dir(job.job_id)),
                owner=job.owner,
                registry=self.registry,
            )
            for job in jobs
        )
        batch = BatchTask(secrets.token_hex(6), jobs[0].model_id, tasks, self.registry)
        if self.metrics is not None:
            self.metrics.batch_jobs.labels(batch.model_id).observe(len(jobs))
            self.metrics.batch_tiles.labels(batch.model_id).observe(tiles)
        log.info("batch %s: %d job(s) of %s, %d tile(s)", batch.batch_id, len(jobs), key, tiles)
        task = asyncio.create_task(self._run(batch, jobs))
        self._batches.add(task)
        for job in jobs:
            self.running[job.job_id] = task

    async def cancel(self, job_id: str) -> None:
        """Stop a job's work: before it reaches a worker, or by stopping its batch's worker
        (the batch's other jobs go back to the queue)."""
        task = self.running.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif job_id in self._claiming:
            self._cancelled.add(job_id)

    # -- how a run ended -----------------------------------------------------------------

    async def _run(self, batch: BatchTask, jobs: list[Job]) -> None:
        try:
            await self._record(batch, jobs)
        except Exception:
            log.exception("could not record the end of batch %s", batch.batch_id)
        finally:
            self._batches.discard(asyncio.current_task())
            for job in jobs:
                self.running.pop(job.job_id, None)
                if self.metrics is not None:
                    await self._observe_end(job)
                self.events.notify(job.job_id)
            self.wake()

    async def _record(self, batch: BatchTask, jobs: list[Job]) -> None:
        limit = min(job.execution_duration or 0 for job in jobs) or None
        try:
            outcomes = await self.executor.run(batch, limit)
        except (asyncio.CancelledError, JobCancelled):
            # ABORT or DELETE of one job (already moved), or shutdown: the rest run again
            for job in jobs:
                await self._requeue(job)
            return
        except TimeoutError:
            for job in jobs:
                if job.execution_duration and job.execution_duration <= (limit or 0):
                    message = (
                        f"the job ran longer than its executionDuration of "
                        f"{job.execution_duration} s and was stopped. Ask for a longer "
                        "EXECUTIONDURATION, or search a smaller region with RA, DEC, WIDTH "
                        "and HEIGHT."
                    )
                    await self._end_without_results(job.job_id, Phase.ABORTED, "fatal", message)
                else:  # stopped for a batch neighbour's shorter limit: run it again
                    await self._requeue(job)
            return
        except WorkerDied as exc:
            for job in jobs:
                message = (
                    f"the worker process running this job died ({_signal_name(exc.exitcode)}). "
                    "This usually means it ran out of memory on a very large image: try a "
                    "smaller region (RA, DEC, WIDTH, HEIGHT). If it happens again, report job "
                    f"{job.job_id} to the service operators."
                )
                await self._end_without_results(job.job_id, Phase.ERROR, "transient", message)
            return
        for job, outcome in zip(jobs, outcomes, strict=True):
            await self._record_outcome(job, outcome)

    async def _requeue(self, job: Job) -> None:
        await in_thread(self.folders.clear_results, job.job_id)
        await in_thread(
            self.store.transition, job.job_id, [Phase.EXECUTING], Phase.QUEUED, start_time=None
        )

    async def _record_outcome(self, job: Job, outcome: TaskOutcome) -> None:
        job_id = job.job_id
        info = {**job.info, **outcome.info}
        if outcome.ok:
            results = [
                JobResult(r.result_id, r.filename, r.mime_type, r.size) for r in outcome.results
            ]
            moved = await in_thread(
                self.store.transition,
                job_id,
                [Phase.EXECUTING],
                Phase.COMPLETED,
                results=results,
                end_time=utcnow(),
                info=info,
            )
        else:
            moved = await in_thread(
                self.store.transition,
                job_id,
                [Phase.EXECUTING],
                Phase.ERROR,
                end_time=utcnow(),
                info=info,
                error_type=outcome.error_type,
                error_message=outcome.error_message,
            )
        if not moved or not outcome.ok:  # aborted meanwhile, or failed: list no stray file
            await in_thread(self.folders.clear_results, job_id)

    async def _end_without_results(
        self, job_id: str, phase: Phase, error_type: str, message: str
    ) -> None:
        await in_thread(self.folders.clear_results, job_id)
        await in_thread(
            self.store.transition,
            job_id,
            [Phase.EXECUTING],
            phase,
            end_time=utcnow(),
            error_type=error_type,
            error_message=message,
        )

    async def _observe_end(self, job: Job) -> None:
        assert self.metrics is not None
        try:
            final = await in_thread(self.store.get, job.job_id)
        except JobNotFound:  # deleted meanwhile
            return
        self.metrics.finished.labels(job.model_id, final.phase.value).inc()
        seconds = final.info.get("run_seconds")
        if isinstance(seconds, int | float):
            self.metrics.run_seconds.labels(job.model_id).observe(seconds)
