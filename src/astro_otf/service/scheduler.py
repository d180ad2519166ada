"""The scheduler: forms batches of QUEUED jobs, claims their jobs and runs each batch in a free
worker; how each job of it ended is recorded by :class:`astro_otf.service.lifecycle.RunEnds`.

It is woken when a job is queued or a batch ends (no polling). The batch former decides what
runs together: jobs of one ONNX model, precision and tile shape share forward passes; a
classical finder's job runs alone. While a worker is idle nothing waits for company: a lone
job starts at once, and a batch takes only its share of the queue (about ceil(N / workers)
of its key's N jobs) so that every worker stays busy until the queue is empty.

Each job ends when its own work ends: a local worker reports every job of its batch as soon
as that job's results are staged, and the job is recorded then (the Dask executor reports a
batch's jobs together at its end). A job once reported is out of its batch's hands: a later
death, time limit or ABORT of the batch concerns only the jobs it had not reported.

Each run owns its job through a token, set when the job is claimed (QUEUED -> EXECUTING) and
cleared when it is queued again: the end of a run is recorded, and its result files are moved
from ``staging/<token>/`` into ``results/`` (in the same transaction), only while the token is
still the job's. A run that lost its job (a restarted server or a new leader queued it again)
changes nothing and its files are thrown away. A job whose worker died running it runs alone
from then on (see :mod:`astro_otf.service.lifecycle` for who is blamed, and when).

While a batch runs, its worker reports each job's progress; the scheduler keeps the latest in
memory (:mod:`astro_otf.service.progress` turns it into a fraction done and an eta), passes
every update to :attr:`Scheduler.on_progress` (the live event feed) and writes it to the job's
``jobInfo.progress`` on each new stage and otherwise at most once per PROGRESS_WRITE_S per job,
with the job's ``quote`` (its estimated end). A job's outcome is recorded without ``progress``.
Each pass also places the QUEUED jobs it knows in the order they should run, with an eta from
what runs now and the measured pace of each batch key (:meth:`Scheduler.queue_progress`,
:meth:`Scheduler.estimate_end`): that lives in memory only, never in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from astro_otf.batching.former import BatchFormer, BatchKey, BatchRules, QueuedJob, fair_order
from astro_otf.domain.errors import JobNotFound, ParameterError
from astro_otf.domain.job import Job
from astro_otf.domain.phases import Phase
from astro_otf.execution.base import Executor
from astro_otf.execution.task import BatchTask, JobProgress, JobTask, TaskOutcome
from astro_otf.models.base import BatchableApp
from astro_otf.models.registry import Registry, RegistryConfig
from astro_otf.service.events import JobEvents
from astro_otf.service.lifecycle import RunEnds, image_path, utcnow, worker_deaths
from astro_otf.service.metrics import Metrics
from astro_otf.service.progress import (
    LiveBatch,
    LiveJob,
    RateModel,
    WriteThrottle,
    isotime,
    queue_etas,
)
from astro_otf.service.threads import in_thread
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)

#: Seconds between two writes of a running job's progress to the store (a new stage is
#: written at once).
PROGRESS_WRITE_S = 1.0
#: While every worker is busy, the queue's places are worked out at most this often.
QUEUE_REFRESH_S = 0.5
#: A change of place in the queue is passed to ``on_progress`` for this many first jobs.
QUEUE_NOTIFY = 100


@dataclass
class _Run:
    """One batch while it runs: its jobs, their tokens, and which of them have reported."""

    batch: BatchTask
    jobs: list[Job]
    limit: int | None
    tokens: dict[str, str]
    #: jobs whose outcome the worker has reported (recorded, or being recorded)
    reported: set[str] = field(default_factory=set)
    #: the tasks recording those outcomes
    recordings: list[asyncio.Task[None]] = field(default_factory=list)
    task: asyncio.Task[list[TaskOutcome]] | None = None
    key: BatchKey | None = None
    tiles: int = 0
    #: its jobs' latest progress
    live: LiveBatch | None = None

    @property
    def unreported(self) -> list[Job]:
        return [job for job in self.jobs if job.job_id not in self.reported]


class Scheduler:
    """Runs the QUEUED jobs of this process (the leader's, with replicas) in the executor's
    workers, in batches, and keeps each job's live progress and place in the queue."""

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
        self.running: dict[str, asyncio.Task[list[TaskOutcome]]] = {}
        self._batches: set[asyncio.Task[list[TaskOutcome]]] = set()
        #: tasks recording how a batch ended (never cancelled but at shutdown)
        self._endings: set[asyncio.Task[None]] = set()
        #: the former's view of each QUEUED job, built once per job
        self._known: dict[str, QueuedJob] = {}
        self._wake = asyncio.Event()
        self._deadline: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._claiming: set[str] = set()
        self._cancelled: set[str] = set()
        #: job id -> the token of the run it was just claimed for (until its batch starts)
        self._tokens: dict[str, str] = {}
        #: Whether this process runs jobs: False on a replica that is not the leader.
        self.active = True
        #: Called (in the event loop) with (job id, progress) for every progress update of a
        #: running job, and for a queued job whose place changed (the first QUEUE_NOTIFY).
        self.on_progress: Callable[[str, dict[str, Any]], None] | None = None
        #: batch key -> the measured pace of its batches
        self._rates: dict[BatchKey, RateModel] = {}
        #: job id -> the running batch it is part of (until its outcome is recorded)
        self._live: dict[str, LiveBatch] = {}
        self._throttle = WriteThrottle(PROGRESS_WRITE_S)
        #: job id -> its progress write in flight; its trailing write; whether one is owed
        self._writing: dict[str, asyncio.Task[None]] = {}
        self._trailing: dict[str, asyncio.TimerHandle] = {}
        self._owed: set[str] = set()
        #: job id -> its place in the queue, and its estimated end, from the last pass
        self._places: dict[str, dict[str, Any]] = {}
        self._queue_ends: dict[str, datetime] = {}
        #: when each worker frees up after the known queue (seconds after _placed_at)
        self._free_after: list[float] = []
        self._placed_at = 0.0
        self._queue_refreshed = -math.inf
        # an executor written before progress reports (a test's) is not sent them
        self._send_progress = "progress" in inspect.signature(executor.run).parameters
        #: records how each run ended (its progress writes stopped first)
        self.ends = RunEnds(
            store,
            folders,
            events,
            end_live=self._end_live,
            running_here=self._live.__contains__,
            metrics=metrics,
        )

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the executor and the scheduling loop (in the running event loop)."""
        self.executor.start()
        self._task = asyncio.create_task(self._loop(), name="otf-scheduler")
        self.wake()

    async def stop(self) -> None:
        """Stop scheduling and every running batch; their jobs are queued again for the next
        start."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in self._batches:
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        # let the endings put the stopped jobs back in the queue for the next start
        await asyncio.gather(*list(self._endings), return_exceptions=True)
        for timer in self._trailing.values():
            timer.cancel()
        self._trailing.clear()
        await asyncio.gather(*list(self._writing.values()), return_exceptions=True)

    def wake(self) -> None:
        """Ask for a scheduling pass (a job was queued, a batch ended)."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """Whether the scheduling loop runs and the executor can take work (health check)."""
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
        if not self.active:
            self._places, self._queue_ends = {}, {}
            return
        free = self.executor.capacity - len(self._batches)
        if free <= 0:
            # no worker to fill: only the queue's places are worked out again, now and then
            wait = self._queue_refreshed + QUEUE_REFRESH_S - loop.time()
            if wait > 0:
                self._deadline = loop.time() + wait
            else:
                self._place(await self._refresh(loop))
            return
        if not self.executor.alive():  # e.g. the cluster is unreachable: jobs stay QUEUED
            self._deadline = loop.time() + 1.0
            return
        queue = await self._refresh(loop)
        batches = self.former.next_batches(
            queue, loop.time(), idle=free, workers=self.executor.capacity
        )
        for batch in batches:
            chosen = {q.job_id for q in batch.jobs}
            queue = [q for q in queue if q.job_id not in chosen]
            planned = self._rate(batch.key).estimate(batch.tiles)
            claimed = await self._claim([q.job_id for q in batch.jobs], planned)
            if claimed:
                weights = {q.job_id: q.tiles for q in batch.jobs}
                self._launch(batch.key, claimed, batch.tiles, weights, planned)
                free -= 1
            for job_id in chosen:
                self._known.pop(job_id, None)
                self.events.notify(job_id)
        self._place(queue)
        if free > 0 and queue:
            if len(batches) < free:  # nothing was ready (a caller with rules of its own)
                self._deadline = self.former.next_deadline(queue)
            else:  # a batch's jobs were moved meanwhile: its worker is still free
                self._wake.set()

    async def _refresh(self, loop: asyncio.AbstractEventLoop) -> list[QueuedJob]:
        """The QUEUED jobs as the former sees them. One light query per pass; whole jobs are
        read only the first time they are seen."""
        ids = await in_thread(self.store.queued_ids, 2000, frozenset(self.running))
        new = [job_id for job_id in ids if job_id not in self._known]
        for fresh in await in_thread(self.store.get_many, new):
            queued = await self._queued(fresh, loop.time())
            if queued is not None:
                self._known[fresh.job_id] = queued
        self._known = {job_id: self._known[job_id] for job_id in ids if job_id in self._known}
        self._queue_refreshed = loop.time()
        return list(self._known.values())

    # -- estimates -----------------------------------------------------------------------

    def _rate(self, key: BatchKey) -> RateModel:
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = RateModel.for_tiles(key.tile_shape)
        return rate

    def _busy(self, now: float) -> list[float]:
        """Seconds each running batch still needs."""
        out = []
        for live in {id(b): b for b in self._live.values()}.values():
            left = live.remaining(now)
            out.append(0.0 if left is None else left)
        return out

    def _place(self, queue: list[QueuedJob]) -> None:
        """Each queued job's place, in the order the jobs should run (priority, owner rounds,
        age: the former's order; batches of one key interleave), and its estimated end: list
        scheduling over the workers, from what each still has to do. A job that will share a
        batch adds its tiles and its share of the batch's overhead to the queue ahead of
        later jobs; its own end counts the whole overhead."""
        now = time.monotonic()
        wall = utcnow()
        workers = max(1, self.executor.capacity)
        busy = self._busy(now)
        idle = max(0, workers - len(busy))
        per_key: dict[BatchKey, int] = {}
        for q in queue:
            per_key[q.key] = per_key.get(q.key, 0) + 1
        order = fair_order(queue)
        plan = []
        for q in order:
            rate = self._rate(q.key)
            together = 1
            if q.batchable:
                together = max(1, min(self.former.rules.max_jobs, -(-per_key[q.key] // workers)))
            work = rate.per_tile * q.tiles
            plan.append((q.job_id, rate.overhead + work, rate.overhead / together + work))
        etas = queue_etas(busy, idle, plan)
        total = len(order)
        old = self._places
        places: dict[str, dict[str, Any]] = {}
        ends: dict[str, datetime] = {}
        for n, q in enumerate(order, start=1):
            end = wall + timedelta(seconds=etas[q.job_id][1])
            ends[q.job_id] = end
            places[q.job_id] = {"stage": "queued", "position": n, "of": total, "eta": isotime(end)}
        self._places, self._queue_ends = places, ends
        free = [max(0.0, b) for b in busy] + [0.0] * idle
        for _, _, share in plan:  # where a job queued next would start
            free.sort()
            free[0] += share
        self._free_after, self._placed_at = free, now
        if self.on_progress is not None:
            for q in order[:QUEUE_NOTIFY]:
                before = old.get(q.job_id)
                if before is None or before["position"] != places[q.job_id]["position"]:
                    self._tell(q.job_id, places[q.job_id])

    def queue_progress(self, job_id: str) -> dict[str, Any] | None:
        """A QUEUED job's place as of the last pass: {"stage": "queued", "position": N,
        "of": M, "eta": its estimated end}; None for a job this scheduler has not placed
        (not queued, not seen yet, or another replica runs the jobs)."""
        place = self._places.get(job_id)
        return None if place is None else dict(place)

    def estimate_end(self, job: Job) -> datetime | None:
        """When ``job`` should end: a running job's eta; a queued one's from its place; a job
        about to be queued, from the end of the queue as the last pass placed it plus its
        own run (this reads its image's header, well under a millisecond). None when this
        scheduler runs no jobs or cannot run the job's model."""
        if not self.active:
            return None
        now = time.monotonic()
        live = self._live.get(job.job_id)
        if live is not None:
            return live.eta(now)
        if job.job_id in self._queue_ends:
            return self._queue_ends[job.job_id]
        try:
            app = self.apps.get(job.model_id, job.model_version)
        except ParameterError:
            return None
        if isinstance(app, BatchableApp):
            key = app.batch_key(job.parameter_values().get("precision"))
            tiles = app.count_tiles(self._image_path(job), job)
        else:
            key, tiles = BatchKey(job.model_id, app.version, "", (0, 0)), 1
        if self._placed_at:  # after the queue as the last pass placed it
            start = max(0.0, min(self._free_after, default=0.0) - (now - self._placed_at))
        else:  # no pass yet: after the first batch to end, if no worker is idle
            busy = self._busy(now)
            start = min(busy) if len(busy) >= self.executor.capacity and busy else 0.0
        return utcnow() + timedelta(seconds=start + self._rate(key).estimate(tiles))

    def _tell(self, job_id: str, progress: dict[str, Any]) -> None:
        if self.on_progress is None:
            return
        try:
            self.on_progress(job_id, progress)
        except Exception:
            log.exception("the progress listener failed on job %s", job_id)

    async def _queued(self, job: Job, now: float) -> QueuedJob | None:
        """The former's view of a queued job: its batch key and tile count. None for a job
        whose model version is no longer installed: it ends in ERROR."""
        try:
            # the version stored at creation (None for older jobs: the default version)
            app = self.apps.get(job.model_id, job.model_version)
        except ParameterError as exc:
            await self.ends.unrunnable(job, exc)
            return None
        if "progress" in job.info:  # left by a run that ended without saying (a crash)
            await in_thread(self.ends.drop_progress, job.job_id)
        waited = (utcnow() - job.queue_time).total_seconds() if job.queue_time else 0.0
        if not isinstance(app, BatchableApp):  # a classical finder: runs alone
            key = BatchKey(job.model_id, app.version, "", (0, 0))
            return QueuedJob(job.job_id, key, job.owner, job.priority, now - waited, 1, False)
        tiles = await in_thread(app.count_tiles, self._image_path(job), job)
        key = app.batch_key(job.parameter_values().get("precision"))
        deaths = worker_deaths(job)
        if deaths["in_batch"] or deaths["alone"]:
            # a worker died running it: from now on it runs alone, so that a job that kills
            # its worker is found out and takes no one else down with it
            alone = BatchKey(key.model_id, key.version, f"{key.precision} alone", key.tile_shape)
            return QueuedJob(job.job_id, alone, job.owner, job.priority, now - waited, tiles, False)
        return QueuedJob(job.job_id, key, job.owner, job.priority, now - waited, tiles)

    async def _claim(self, ids: list[str], planned: float | None = None) -> list[Job]:
        """QUEUED -> EXECUTING for each job of a batch; the jobs as they are then, less any
        moved, aborted or deleted meanwhile. An ABORT landing while the batch is being
        claimed (between the awaits) is remembered in _cancelled, for every job of it.
        ``planned``: the seconds the batch should take; each job's quote is set from it."""
        self._claiming.update(ids)
        claimed: list[Job] = []
        try:
            for job_id in ids:
                token = secrets.token_hex(8)
                start = utcnow()
                quote = None if planned is None else start + timedelta(seconds=planned)
                try:
                    moved = await in_thread(
                        self.store.mark_executing,
                        job_id,
                        start_time=start,
                        run_token=token,
                        quote=quote,
                    )
                    if moved:
                        self._tokens[job_id] = token
                        claimed.append(await in_thread(self.store.get, job_id))
                except JobNotFound:
                    continue
        finally:
            self._claiming.difference_update(ids)
            cancelled = self._cancelled.intersection(ids)
            self._cancelled.difference_update(ids)
        kept = [
            job for job in claimed if job.job_id not in cancelled and job.phase == Phase.EXECUTING
        ]
        for job in claimed:
            if job not in kept:
                self._tokens.pop(job.job_id, None)
        claimed = kept
        for job in claimed:
            if self.metrics is not None and job.queue_time and job.start_time:
                wait = (job.start_time - job.queue_time).total_seconds()
                self.metrics.queue_wait.labels(job.model_id).observe(max(wait, 0.0))
        return claimed

    def _image_path(self, job: Job) -> str | None:
        return image_path(self.folders, job)

    def _launch(
        self,
        key: BatchKey,
        jobs: list[Job],
        tiles: int,
        weights: dict[str, int] | None = None,
        planned: float | None = None,
    ) -> None:
        tasks = tuple(
            JobTask(
                job_id=job.job_id,
                model_id=job.model_id,
                parameters=job.parameter_values(),
                image_path=self._image_path(job),
                job_dir=str(self.folders.job_dir(job.job_id)),
                owner=job.owner,
                registry=self.registry,
                run_token=self._tokens.pop(job.job_id),
                tiles=max(1, (weights or {}).get(job.job_id, 1)),
            )
            for job in jobs
        )
        batch = BatchTask(
            secrets.token_hex(6), key.model_id, tasks, self.registry, model_version=key.version
        )
        if self.metrics is not None:
            self.metrics.batch_jobs.labels(batch.model_id).observe(len(jobs))
            self.metrics.batch_tiles.labels(batch.model_id).observe(tiles)
        log.info("batch %s: %d job(s) of %s, %d tile(s)", batch.batch_id, len(jobs), key, tiles)
        limit = min(job.execution_duration or 0 for job in jobs) or None
        run = _Run(batch, jobs, limit, {t.job_id: t.run_token for t in tasks if t.run_token})
        run.key, run.tiles = key, tiles
        run.live = LiveBatch(
            batch.batch_id,
            time.monotonic(),
            utcnow(),
            planned,
            {job.job_id: LiveJob(weight=(weights or {}).get(job.job_id, 1)) for job in jobs},
        )
        for job in jobs:
            self._live[job.job_id] = run.live
        extra: dict[str, Any] = {}
        if self._send_progress:
            extra["progress"] = functools.partial(self._progress, run)
        # The run task only runs the batch; how it ended is recorded by a second task started
        # when it is done. Cancelling the run (ABORT, DELETE) can then never skip the
        # bookkeeping, even when it lands before the run task's first step.
        task = asyncio.create_task(
            self.executor.run(batch, limit, report=functools.partial(self._reported, run), **extra),
            name=f"otf-batch-{batch.batch_id}",
        )
        run.task = task
        self._batches.add(task)
        for job in jobs:
            self.running[job.job_id] = task
        task.add_done_callback(functools.partial(self._batch_done, run))

    def _reported(self, run: _Run, outcome: TaskOutcome) -> None:
        """A worker reported one job of its batch: record it now, while the batch goes on.
        From here on the job is no longer the batch's: stopping the batch leaves it alone."""
        job = next((j for j in run.jobs if j.job_id == outcome.job_id), None)
        if job is None or job.job_id in run.reported or (run.task and run.task.done()):
            return
        run.reported.add(job.job_id)
        if self.running.get(job.job_id) is run.task:
            del self.running[job.job_id]
        recording = asyncio.create_task(self.ends.reported(job, outcome, run.tokens))
        run.recordings.append(recording)
        self._endings.add(recording)
        recording.add_done_callback(self._endings.discard)

    # -- live progress ---------------------------------------------------------------------

    def _progress(self, run: _Run, report: JobProgress) -> None:
        """A worker's progress report of one job (in the event loop): kept in memory, passed
        to ``on_progress``, and written to the store now or a little later."""
        live = run.live
        if live is None or report.job_id in run.reported or (run.task and run.task.done()):
            return
        if self._live.get(report.job_id) is not live:
            return  # its outcome is being recorded
        if live.update(report.job_id, report.stage, report.tiles_done, report.tiles_total) is None:
            return
        self._tell(report.job_id, live.progress(report.job_id, time.monotonic()))
        self._offer_write(report.job_id)

    def _offer_write(self, job_id: str) -> None:
        """Write the job's progress now if it is due, else once it is (one write at a time
        per job; what comes meanwhile is written after)."""
        live = self._live.get(job_id)
        if live is None:
            return
        if job_id in self._writing:
            self._owed.add(job_id)
            return
        stage = live.jobs[job_id].stage
        wait = self._throttle.due(job_id, stage, time.monotonic())
        if wait > 0:
            if job_id not in self._trailing:
                loop = asyncio.get_running_loop()
                self._trailing[job_id] = loop.call_later(wait, self._trailing_write, job_id)
            return
        timer = self._trailing.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        now = time.monotonic()
        progress = live.progress(job_id, now)
        self._throttle.wrote(job_id, stage, now)
        task = asyncio.create_task(self._write_progress(job_id, progress, live.eta(now)))
        self._writing[job_id] = task
        task.add_done_callback(functools.partial(self._written, job_id))

    def _trailing_write(self, job_id: str) -> None:
        self._trailing.pop(job_id, None)
        self._offer_write(job_id)

    def _written(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._writing.get(job_id) is task:
            del self._writing[job_id]
        if job_id in self._owed:
            self._owed.discard(job_id)
            self._offer_write(job_id)

    async def _write_progress(
        self, job_id: str, progress: dict[str, Any], eta: datetime | None
    ) -> None:
        try:
            await in_thread(self._store_progress, job_id, progress, eta)
        except Exception:
            log.exception("could not store the progress of job %s", job_id)

    def _store_progress(self, job_id: str, progress: dict[str, Any], eta: datetime | None) -> None:
        """(In a thread.) ``jobInfo.progress`` and the quote of a running job, its other
        jobInfo kept."""
        try:
            job = self.store.get(job_id)
        except JobNotFound:
            return
        if job.phase != Phase.EXECUTING:
            return
        self.store.set_progress(job_id, {**job.info, "progress": progress}, quote=eta)

    async def _end_live(self, job_id: str) -> None:
        """The job's run is over (its outcome is being recorded): no more progress writes,
        and the one in flight has landed before the outcome is written."""
        live = self._live.pop(job_id, None)
        if live is not None and job_id in live.jobs:
            live.jobs[job_id].finished = True
        timer = self._trailing.pop(job_id, None)
        if timer is not None:
            timer.cancel()
        self._owed.discard(job_id)
        self._throttle.forget(job_id)
        writing = self._writing.get(job_id)
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)

    def cancel_soon(self, job_id: str | None = None) -> None:
        """Cancel one job's run (or, without ``job_id``, every run) from synchronous code; the
        task is kept until it is done."""
        chore = asyncio.create_task(self.cancel(job_id) if job_id else self.stop_all())
        self._endings.add(chore)
        chore.add_done_callback(self._endings.discard)

    async def stop_all(self) -> None:
        """Stop every batch this process runs (its jobs go back to the queue)."""
        for job_id in list(self.running):
            await self.cancel(job_id)

    async def cancel(self, job_id: str) -> None:
        """Stop a job's work: before it reaches a worker, or by stopping its batch's worker
        (the batch's other jobs go back to the queue)."""
        task = self.running.get(job_id)
        if task is not None:
            # Cancel once: a second request (the ABORT itself and, on PostgreSQL, its own
            # notification) must not interrupt the first while it waits for the worker to stop.
            if not task.cancelling():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif job_id in self._claiming:
            self._cancelled.add(job_id)

    # -- how a run ended (recorded by RunEnds) -------------------------------------------

    def _batch_done(self, run: _Run, task: asyncio.Task[list[TaskOutcome]]) -> None:
        ending = asyncio.create_task(self._finish(run, task))
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)

    async def _finish(self, run: _Run, task: asyncio.Task[list[TaskOutcome]]) -> None:
        batch, jobs = run.batch, run.jobs
        whole = not task.cancelled() and task.exception() is None
        if whole and run.live is not None and run.key is not None:
            # a whole run: its pace teaches the estimates
            seconds = time.monotonic() - run.live.started
            self._rate(run.key).learn(run.tiles, seconds)
        try:
            await self.ends.batch_ended(
                batch,
                run.unreported,
                run.tokens,
                task,
                limit=run.limit,
                alone=len(jobs) == 1,
            )
        except Exception:
            log.exception("could not record the end of batch %s", batch.batch_id)
        finally:
            # the jobs reported on the way are recorded by then too
            await asyncio.gather(*run.recordings, return_exceptions=True)
            self._batches.discard(task)
            for job in jobs:
                if self.running.get(job.job_id) is task:
                    del self.running[job.job_id]
                if self._live.get(job.job_id) is run.live:  # not recorded (a bug above)
                    await self._end_live(job.job_id)
            self.wake()
            for job in jobs:
                self.events.notify(job.job_id)
            await self.ends.observe(jobs)
