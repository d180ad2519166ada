"""The scheduler: forms batches of QUEUED jobs, runs each in a free worker, and records how
every job of it ended.

It is woken when a job is queued or a batch ends (no polling). The batch former decides what
runs together: jobs of one ONNX model, precision and tile shape share forward passes; a
classical finder's job runs alone. While a worker is idle nothing waits for company: a lone
job starts at once, and a batch takes only its share of the queue (about ceil(N / workers)
of its key's N jobs) so that every worker stays busy until the queue is empty.

Each job ends when its own work ends: a local worker reports every job of its batch as soon
as that job's results are staged, and the job is recorded then (the Dask executor reports a
batch's jobs together at its end). A job once reported is out of its batch's hands: a later
death, time limit or ABORT of the batch concerns only the jobs it had not reported.
Every way a run can end becomes one phase change per job: COMPLETED with its results, ERROR
with an errorSummary, ABORTED when its executionDuration ran out, or QUEUED again when the
batch was stopped because of another job (an ABORT, or a shorter time limit).

Each run owns its job through a token, set when the job is claimed (QUEUED -> EXECUTING) and
cleared when it is queued again: the end of a run is recorded, and its result files are moved
from ``staging/<token>/`` into ``results/`` (in the same transaction), only while the token is
still the job's. A run that lost its job (a restarted server or a new leader queued it again)
changes nothing and its files are thrown away.

A worker that dies blames no one at first: when it ran a batch of several jobs, nobody knows
which of them (if any) killed it, so every job of the batch is queued again and will run
alone; a job whose worker dies while it runs alone is queued again once, and ends in ERROR
only when its worker dies a second time while it runs alone (``LONE_DEATHS_LIMIT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astro_otf.batching.former import BatchFormer, BatchKey, BatchRules, QueuedJob
from astro_otf.domain.errors import JobNotFound, ParameterError
from astro_otf.domain.job import Job, JobResult
from astro_otf.domain.phases import Phase
from astro_otf.execution.base import (
    BatchInterrupted,
    Executor,
    JobCancelled,
    NoCapableWorker,
    WorkerDied,
)
from astro_otf.execution.task import BatchTask, JobTask, TaskOutcome
from astro_otf.models.base import BatchableApp
from astro_otf.models.registry import Registry, RegistryConfig
from astro_otf.service.events import JobEvents
from astro_otf.service.metrics import Metrics
from astro_otf.service.threads import in_thread
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore

log = logging.getLogger(__name__)

#: A job ends in ERROR when the worker running it alone has died this many times.
LONE_DEATHS_LIMIT = 2


def utcnow() -> datetime:
    return datetime.now(UTC)


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def worker_deaths(job: Job) -> dict[str, Any]:
    """What the job's jobInfo says about workers that died running it: ``in_batch`` (deaths
    while it ran in a batch of several jobs), ``alone`` (while it ran alone), ``how`` (each
    death, in words)."""
    stored = job.info.get("worker_deaths")
    stored = stored if isinstance(stored, dict) else {}
    counts = {k: stored.get(k) for k in ("in_batch", "alone")}
    return {
        **{k: v if isinstance(v, int) else 0 for k, v in counts.items()},
        "how": str(stored.get("how") or ""),
    }


def _size(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        size = float(Path(path).stat().st_size)
    except OSError:
        return None
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return None  # pragma: no cover


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

    @property
    def unreported(self) -> list[Job]:
        return [job for job in self.jobs if job.job_id not in self.reported]


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
        # let the endings put the stopped jobs back in the queue for the next start
        await asyncio.gather(*list(self._endings), return_exceptions=True)

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
        if free <= 0 or not self.active:
            return
        if not self.executor.alive():  # e.g. the cluster is unreachable: jobs stay QUEUED
            self._deadline = loop.time() + 1.0
            return
        # One light query per pass; whole jobs are read only the first time they are seen.
        ids = await in_thread(self.store.queued_ids, 2000, frozenset(self.running))
        new = [job_id for job_id in ids if job_id not in self._known]
        for fresh in await in_thread(self.store.get_many, new):
            queued = await self._queued(fresh, loop.time())
            if queued is not None:
                self._known[fresh.job_id] = queued
        self._known = {job_id: self._known[job_id] for job_id in ids if job_id in self._known}
        queue = list(self._known.values())
        batches = self.former.next_batches(
            queue, loop.time(), idle=free, workers=self.executor.capacity
        )
        for batch in batches:
            chosen = {q.job_id for q in batch.jobs}
            queue = [q for q in queue if q.job_id not in chosen]
            claimed = await self._claim([q.job_id for q in batch.jobs])
            if claimed:
                self._launch(batch.key, claimed, batch.tiles)
                free -= 1
            for job_id in chosen:
                self._known.pop(job_id, None)
                self.events.notify(job_id)
        if free > 0 and queue:
            if len(batches) < free:  # nothing was ready (a caller with rules of its own)
                self._deadline = self.former.next_deadline(queue)
            else:  # a batch's jobs were moved meanwhile: its worker is still free
                self._wake.set()

    async def _queued(self, job: Job, now: float) -> QueuedJob | None:
        """The former's view of a queued job: its batch key and tile count. None for a job
        whose model version is no longer installed: it ends in ERROR."""
        try:
            # the version stored at creation (None for older jobs: the default version)
            app = self.apps.get(job.model_id, job.model_version)
        except ParameterError as exc:
            await self._unrunnable(job, exc)
            return None
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

    async def _unrunnable(self, job: Job, exc: ParameterError) -> None:
        what = job.model_id
        if job.model_version is not None:
            what += f" version {job.model_version}"
        message = (
            f"this server can no longer run {what}, which the job was created with "
            f"({exc.message}). Create a new job to run an installed version."
        )
        log.warning("job %s cannot run: %s", job.job_id, exc.message)
        moved = await in_thread(
            self.store.transition,
            job.job_id,
            [Phase.QUEUED],
            Phase.ERROR,
            end_time=utcnow(),
            error_type="fatal",
            error_message=message,
        )
        if moved:
            self.events.notify(job.job_id)

    async def _claim(self, ids: list[str]) -> list[Job]:
        """QUEUED -> EXECUTING for each job of a batch; the jobs as they are then, less any
        moved, aborted or deleted meanwhile. An ABORT landing while the batch is being
        claimed (between the awaits) is remembered in _cancelled, for every job of it."""
        self._claiming.update(ids)
        claimed: list[Job] = []
        try:
            for job_id in ids:
                token = secrets.token_hex(8)
                try:
                    moved = await in_thread(
                        self.store.transition,
                        job_id,
                        [Phase.QUEUED],
                        Phase.EXECUTING,
                        start_time=utcnow(),
                        run_token=token,
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
                run_token=self._tokens.pop(job.job_id),
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
        # The run task only runs the batch; how it ended is recorded by a second task started
        # when it is done. Cancelling the run (ABORT, DELETE) can then never skip the
        # bookkeeping, even when it lands before the run task's first step.
        task = asyncio.create_task(
            self.executor.run(batch, limit, report=functools.partial(self._reported, run)),
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
        recording = asyncio.create_task(self._record_reported(job, outcome, run.tokens))
        run.recordings.append(recording)
        self._endings.add(recording)
        recording.add_done_callback(self._endings.discard)

    async def _record_reported(
        self, job: Job, outcome: TaskOutcome, tokens: dict[str, str]
    ) -> None:
        try:
            await self._record_outcome(job, outcome, tokens[job.job_id])
        except Exception:
            log.exception("could not record the end of job %s", job.job_id)
        finally:
            self.events.notify(job.job_id)

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

    # -- how a run ended -----------------------------------------------------------------

    def _batch_done(self, run: _Run, task: asyncio.Task[list[TaskOutcome]]) -> None:
        ending = asyncio.create_task(self._finish(run, task))
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)

    async def _finish(self, run: _Run, task: asyncio.Task[list[TaskOutcome]]) -> None:
        batch, jobs = run.batch, run.jobs
        try:
            await self._record(run, task)
        except Exception:
            log.exception("could not record the end of batch %s", batch.batch_id)
        finally:
            # the jobs reported on the way are recorded by then too
            await asyncio.gather(*run.recordings, return_exceptions=True)
            self._batches.discard(task)
            for job in jobs:
                if self.running.get(job.job_id) is task:
                    del self.running[job.job_id]
            self.wake()
            for job in jobs:
                self.events.notify(job.job_id)
            if self.metrics is not None:
                for job in jobs:
                    await self._observe_end(job)

    async def _record(self, run: _Run, task: asyncio.Task[list[TaskOutcome]]) -> None:
        """How the batch ended, for each job it had not reported on the way."""
        batch, limit, tokens = run.batch, run.limit, run.tokens
        jobs = run.unreported
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or isinstance(error, JobCancelled | BatchInterrupted):
            # ABORT or DELETE of one job (already moved), shutdown, or the cluster went away:
            # the rest run again
            if isinstance(error, BatchInterrupted):
                log.warning("batch interrupted, its jobs are queued again: %s", error)
            for job in jobs:
                await self._requeue(job, tokens[job.job_id])
        elif isinstance(error, NoCapableWorker):
            for job in jobs:
                await self._end_without_results(
                    job.job_id, tokens[job.job_id], Phase.ERROR, "fatal", str(error)
                )
        elif isinstance(error, TimeoutError):
            for job in jobs:
                if job.execution_duration and job.execution_duration <= (limit or 0):
                    message = (
                        f"the job ran longer than its executionDuration of "
                        f"{job.execution_duration} s and was stopped. Ask for a longer "
                        "EXECUTIONDURATION, or search a smaller region with RA, DEC, WIDTH "
                        "and HEIGHT."
                    )
                    await self._end_without_results(
                        job.job_id, tokens[job.job_id], Phase.ABORTED, "fatal", message
                    )
                else:  # stopped for a batch neighbour's shorter limit: run it again
                    await self._requeue(job, tokens[job.job_id])
        elif isinstance(error, WorkerDied):
            await self._worker_died(batch, jobs, tokens, error, alone=len(run.jobs) == 1)
        elif error is not None:
            raise error
        else:
            outcomes = {outcome.job_id: outcome for outcome in task.result()}
            for job in jobs:
                await self._record_outcome(job, outcomes[job.job_id], tokens[job.job_id])

    async def _worker_died(
        self,
        batch: BatchTask,
        jobs: list[Job],
        tokens: dict[str, str],
        error: WorkerDied,
        *,
        alone: bool,
    ) -> None:
        """A worker died running the batch. With several jobs in it no one is blamed: those
        it had not reported are all queued again, to run alone (the reported ones stay as
        recorded). A job that ran alone is queued again until its worker has died
        LONE_DEATHS_LIMIT times while it ran alone; then it is ERROR."""
        cause = error.reason or _signal_name(error.exitcode)
        if not jobs:
            log.warning("batch %s: its worker died (%s) after its last job", batch.batch_id, cause)
            return
        if not alone:
            log.warning(
                "batch %s: its worker died (%s) with %d job(s) of %d unfinished; they are "
                "queued again and each will run alone",
                batch.batch_id,
                cause,
                len(jobs),
                len(batch.tasks),
            )
        for job in jobs:
            deaths = worker_deaths(job)
            if alone:
                deaths["alone"] += error.deaths
                what = f"{cause} (ran alone)"
            else:
                deaths["in_batch"] += 1
                what = f"{cause} (batch {batch.batch_id} of {len(batch.tasks)} jobs)"
            deaths["how"] = "; ".join(x for x in (deaths["how"], what) if x)
            info = {**job.info, "worker_deaths": deaths}
            token = tokens[job.job_id]
            if alone and deaths["alone"] >= LONE_DEATHS_LIMIT:
                message = await self._death_message(job, error, deaths)
                log.warning("job %s: %s", job.job_id, message)
                await self._end_without_results(
                    job.job_id, token, Phase.ERROR, "transient", message, info=info
                )
            else:
                if alone:
                    log.warning(
                        "job %s: its worker died (%s) while it ran alone; it is queued again",
                        job.job_id,
                        cause,
                    )
                await self._requeue(job, token, info=info)

    async def _death_message(self, job: Job, error: WorkerDied, deaths: dict[str, Any]) -> str:
        if error.reason and error.deaths >= LONE_DEATHS_LIMIT:
            what = error.reason  # e.g. the Dask worker was lost, and again on Dask's retry
        else:
            lone = [
                part.removesuffix(" (ran alone)")
                for part in deaths["how"].split("; ")
                if part.endswith(" (ran alone)")
            ]
            times = "twice" if len(lone) == 2 else f"{len(lone)} times"
            what = (
                f"the worker process running this job died {times} while the job ran alone "
                f"({', then '.join(lone)})"
            )
        size = await in_thread(_size, self._image_path(job))
        if size is not None:
            likely = (
                f"Since it ran alone, the job itself most likely killed it: with a very large "
                f"image (this job's is {size}) that usually means running out of memory, so "
                "try a smaller region (RA, DEC, WIDTH, HEIGHT)."
            )
        else:
            likely = (
                "Since it ran alone, the job itself most likely killed it (running out of "
                "memory does this)."
            )
        return (
            f"{what}. {likely} If that does not explain it, report job {job.job_id} to the "
            "service operators."
        )

    async def _requeue(self, job: Job, token: str, info: dict[str, Any] | None = None) -> None:
        """Back to QUEUED, if this run still owns the job; what the run wrote is dropped."""
        fields: dict[str, Any] = {} if info is None else {"info": info}
        await in_thread(
            self.store.transition,
            job.job_id,
            [Phase.EXECUTING],
            Phase.QUEUED,
            owner_token=token,
            start_time=None,
            run_token=None,
            **fields,
        )
        await in_thread(self.folders.discard_run, job.job_id, token)

    async def _record_outcome(self, job: Job, outcome: TaskOutcome, token: str) -> None:
        job_id = job.job_id
        info = {**job.info, **outcome.info}
        if outcome.ok:
            results = [
                JobResult(r.result_id, r.filename, r.mime_type, r.size) for r in outcome.results
            ]
            try:
                # the files move into results/ inside the transaction that lists them
                moved = await in_thread(
                    self.store.transition,
                    job_id,
                    [Phase.EXECUTING],
                    Phase.COMPLETED,
                    results=results,
                    end_time=utcnow(),
                    info=info,
                    owner_token=token,
                    publish=functools.partial(
                        self.folders.publish, job_id, token, [r.filename for r in results]
                    ),
                )
            except OSError as exc:
                log.error("job %s: its results could not be moved into place: %s", job_id, exc)
                await in_thread(self.folders.clear_results, job_id)
                message = (
                    f"the job ran, but its result files could not be stored ({exc}). "
                    f"Please report job {job_id} to the service operators."
                )
                moved = await self._fail(job_id, token, info, "transient", message)
        else:
            moved = await self._fail(job_id, token, info, outcome.error_type, outcome.error_message)
        if not moved:  # aborted or deleted meanwhile, or run again by another run
            log.info("job %s: run %s no longer owns the job; its outcome is dropped", job_id, token)
        await in_thread(self.folders.discard_run, job_id, token)

    async def _fail(
        self,
        job_id: str,
        token: str,
        info: dict[str, Any],
        error_type: str | None,
        message: str | None,
    ) -> bool:
        """EXECUTING -> ERROR with its summary, if run ``token`` still owns the job."""
        return bool(
            await in_thread(
                self.store.transition,
                job_id,
                [Phase.EXECUTING],
                Phase.ERROR,
                end_time=utcnow(),
                info=info,
                owner_token=token,
                error_type=error_type,
                error_message=message,
            )
        )

    async def _end_without_results(
        self,
        job_id: str,
        token: str,
        phase: Phase,
        error_type: str,
        message: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        fields: dict[str, Any] = {} if info is None else {"info": info}
        await in_thread(
            self.store.transition,
            job_id,
            [Phase.EXECUTING],
            phase,
            owner_token=token,
            end_time=utcnow(),
            error_type=error_type,
            error_message=message,
            **fields,
        )
        await in_thread(self.folders.discard_run, job_id, token)

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
