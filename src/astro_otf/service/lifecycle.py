"""How a job's run ends and what a restart does with runs left behind: the policy that turns
a batch's outcome, or a crash, into phases and the messages a scientist reads.

:class:`RunEnds` records the end of every run the scheduler started: COMPLETED with its
results, ERROR with an errorSummary, ABORTED when its executionDuration ran out, or QUEUED
again when the batch was stopped because of another job (an ABORT, a shorter time limit, a
shutdown) or its worker died with company. Every move is made only while the run still owns
its job (its token): a run that lost its job changes nothing, and its staged files are thrown
away. :func:`recover` does the same for the runs a stopped server left behind.

A worker that dies blames no one at first: when it ran a batch of several jobs, nobody knows
which of them (if any) killed it, so every job of the batch is queued again and will run
alone; a job whose worker dies while it runs alone is queued again once, and ends in ERROR
only when its worker dies a second time while it runs alone (``LONE_DEATHS_LIMIT``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astro_otf.domain.errors import JobNotFound, ParameterError
from astro_otf.domain.job import ErrorSummary, ErrorType, Job, JobResult
from astro_otf.domain.phases import Phase
from astro_otf.execution.base import BatchInterrupted, JobCancelled, NoCapableWorker, WorkerDied
from astro_otf.execution.task import BatchTask, TaskOutcome
from astro_otf.service.events import JobEvents
from astro_otf.service.metrics import Metrics
from astro_otf.service.threads import in_thread
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore

__all__ = [
    "ORPHAN_MIN_AGE_S",
    "RunEnds",
    "image_path",
    "recover",
    "remove_orphans",
    "utcnow",
    "worker_deaths",
]

log = logging.getLogger(__name__)

#: A job ends in ERROR when the worker running it alone has died this many times.
LONE_DEATHS_LIMIT = 2

#: With replicas, a job folder without a database row is removed at recovery only once
#: nothing in it changed for this long: another replica may be creating that job right now
#: (its upload streaming in). A lone server (SQLite, holding the data folder's lock) recovers
#: before it takes any request, so every such folder it finds is an orphan.
ORPHAN_MIN_AGE_S = 900.0

#: The message of an unsuccessful outcome that gave none (no worker of this project does).
_NO_REASON = "the job failed without a message from its worker"


def utcnow() -> datetime:
    """Now, in UTC: the time every phase move records."""
    return datetime.now(UTC)


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


def image_path(folders: JobFolders, job: Job) -> str | None:
    """Where the job's uploaded image is (None: it has no image parameter)."""
    image = next((p for p in job.parameters if p.is_file and p.name == "image"), None)
    return str(folders.input_file(job.job_id, image.value)) if image else None


def _signal_name(exitcode: int | None) -> str:
    """A dead worker's exit, in words ("signal SIGKILL", "exit code 1")."""
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _size(path: str | None) -> str | None:
    """A file's size for a person to read ("1.2 GB"); None when there is no such file."""
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


def _without_progress(info: dict[str, Any]) -> dict[str, Any]:
    """A jobInfo less its ``progress`` (which only a running job has)."""
    return {k: v for k, v in info.items() if k != "progress"}


class RunEnds:
    """Records how each run the scheduler started ended, one phase move per job.

    Built by the scheduler with its hooks: ``end_live`` (awaited before a job's end is
    written: its progress writes stop and the one in flight lands first), ``running_here``
    (whether a job's batch runs in this process now: its progress is then not stale), and the
    ``metrics`` that count the jobs' ends."""

    def __init__(
        self,
        store: JobStore,
        folders: JobFolders,
        events: JobEvents,
        *,
        end_live: Callable[[str], Awaitable[None]],
        running_here: Callable[[str], bool],
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.folders = folders
        self.events = events
        self.metrics = metrics
        self._end_live = end_live
        self._running_here = running_here

    # -- a batch, a job ----------------------------------------------------------------------

    async def batch_ended(
        self,
        batch: BatchTask,
        jobs: list[Job],
        tokens: dict[str, str],
        task: asyncio.Task[list[TaskOutcome]],
        *,
        limit: int | None,
        alone: bool,
    ) -> None:
        """How the batch run by ``task`` ended, for each of ``jobs`` (those it had not
        reported on the way), whose runs hold ``tokens``. ``limit``: the seconds the batch
        was given; ``alone``: whether it ran one job. An error no ending is known for is
        raised again."""
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or isinstance(error, JobCancelled | BatchInterrupted):
            # ABORT or DELETE of one job (already moved), shutdown, or the cluster went away:
            # the rest run again
            if isinstance(error, BatchInterrupted):
                log.warning("batch interrupted, its jobs are queued again: %s", error)
            for job in jobs:
                await self.requeue(job, tokens[job.job_id])
        elif isinstance(error, NoCapableWorker):
            for job in jobs:
                await self._end_without_results(
                    job.job_id, tokens[job.job_id], ErrorSummary(ErrorType.FATAL, str(error))
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
                        job.job_id,
                        tokens[job.job_id],
                        ErrorSummary(ErrorType.FATAL, message),
                        aborted=True,
                    )
                else:  # stopped for a batch neighbour's shorter limit: run it again
                    await self.requeue(job, tokens[job.job_id])
        elif isinstance(error, WorkerDied):
            await self._worker_died(batch, jobs, tokens, error, alone=alone)
        elif error is not None:
            raise error
        else:
            outcomes = {outcome.job_id: outcome for outcome in task.result()}
            for job in jobs:
                await self.job_ended(job, outcomes[job.job_id], tokens[job.job_id])

    async def reported(self, job: Job, outcome: TaskOutcome, tokens: dict[str, str]) -> None:
        """A job its worker reported while the batch goes on: recorded now (a failure to
        record it is logged); its waiters are woken either way."""
        try:
            await self.job_ended(job, outcome, tokens[job.job_id])
        except Exception:
            log.exception("could not record the end of job %s", job.job_id)
        finally:
            self.events.notify(job.job_id)

    async def job_ended(self, job: Job, outcome: TaskOutcome, token: str) -> None:
        """The worker's outcome of one job of run ``token``: COMPLETED with its results (their
        files moved into place in the same transaction), else ERROR with its message."""
        job_id = job.job_id
        await self._end_live(job_id)
        info = _without_progress({**job.info, **outcome.info})
        if outcome.ok:
            results = [
                JobResult(r.result_id, r.filename, r.mime_type, r.size) for r in outcome.results
            ]
            try:
                # the files move into results/ inside the transaction that lists them
                moved = await in_thread(
                    self.store.mark_completed,
                    job_id,
                    results,
                    info=info,
                    end_time=utcnow(),
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
                moved = await self._fail(
                    job_id, token, info, ErrorSummary(ErrorType.TRANSIENT, message)
                )
        else:
            error = ErrorSummary(outcome.error_type, outcome.error_message or _NO_REASON)
            moved = await self._fail(job_id, token, info, error)
        if not moved:  # aborted or deleted meanwhile, or run again by another run
            log.info("job %s: run %s no longer owns the job; its outcome is dropped", job_id, token)
            await in_thread(self.drop_progress, job_id)
        await in_thread(self.folders.discard_run, job_id, token)

    async def requeue(self, job: Job, token: str, info: dict[str, Any] | None = None) -> None:
        """Back to QUEUED, if run ``token`` still owns the job (it keeps its place in the
        queue); what the run wrote (its progress included) is dropped. ``info`` (when given)
        becomes its jobInfo."""
        await self._end_live(job.job_id)
        moved = await in_thread(
            self._move_clean,
            job.job_id,
            info,
            lambda clean: self.store.requeue(job.job_id, owner_token=token, info=clean),
        )
        if not moved:  # aborted or deleted meanwhile: no progress stays behind
            await in_thread(self.drop_progress, job.job_id)
        await in_thread(self.folders.discard_run, job.job_id, token)

    async def unrunnable(self, job: Job, exc: ParameterError) -> None:
        """A QUEUED job whose model version is no longer installed: ERROR, saying so."""
        what = job.model_id
        if job.model_version is not None:
            what += f" version {job.model_version}"
        message = (
            f"this server can no longer run {what}, which the job was created with "
            f"({exc.message}). Create a new job to run an installed version."
        )
        log.warning("job %s cannot run: %s", job.job_id, exc.message)
        moved = await in_thread(
            self.store.mark_failed,
            job.job_id,
            [Phase.QUEUED],
            ErrorSummary(ErrorType.FATAL, message),
            end_time=utcnow(),
        )
        if moved:
            self.events.notify(job.job_id)

    def drop_progress(self, job_id: str) -> None:
        """(In a thread.) Remove a stale ``jobInfo.progress`` from a job not running here."""
        try:
            job = self.store.get(job_id)
        except JobNotFound:
            return
        if "progress" in job.info and not self._running_here(job.job_id):
            self.store.set_info(job_id, [job.phase], _without_progress(job.info))

    async def observe(self, jobs: list[Job]) -> None:
        """Count how the jobs ended (their phase as it is now) and how long they ran, when
        the scheduler keeps metrics."""
        if self.metrics is None:
            return
        for job in jobs:
            try:
                final = await in_thread(self.store.get, job.job_id)
            except JobNotFound:  # deleted meanwhile
                continue
            self.metrics.finished.labels(job.model_id, final.phase.value).inc()
            seconds = final.info.get("run_seconds")
            if isinstance(seconds, int | float):
                self.metrics.run_seconds.labels(job.model_id).observe(seconds)

    # -- the ways a run ends -------------------------------------------------------------

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
                    job.job_id, token, ErrorSummary(ErrorType.TRANSIENT, message), info=info
                )
            else:
                if alone:
                    log.warning(
                        "job %s: its worker died (%s) while it ran alone; it is queued again",
                        job.job_id,
                        cause,
                    )
                await self.requeue(job, token, info=info)

    async def _death_message(self, job: Job, error: WorkerDied, deaths: dict[str, Any]) -> str:
        """Why a job whose lone worker died LONE_DEATHS_LIMIT times is ERROR, and what the
        scientist may do about it."""
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
        size = await in_thread(_size, image_path(self.folders, job))
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

    async def _fail(
        self, job_id: str, token: str, info: dict[str, Any], error: ErrorSummary
    ) -> bool:
        """EXECUTING -> ERROR with ``error``, if run ``token`` still owns the job."""
        return bool(
            await in_thread(
                self.store.mark_failed,
                job_id,
                [Phase.EXECUTING],
                error,
                end_time=utcnow(),
                info=info,
                owner_token=token,
            )
        )

    async def _end_without_results(
        self,
        job_id: str,
        token: str,
        error: ErrorSummary,
        info: dict[str, Any] | None = None,
        *,
        aborted: bool = False,
    ) -> None:
        """EXECUTING -> ERROR (or, ``aborted``, ABORTED) with ``error``, if run ``token``
        still owns the job; what the run wrote is dropped."""
        await self._end_live(job_id)
        end_time = utcnow()

        def end(clean: dict[str, Any] | None) -> bool:
            if aborted:
                return self.store.mark_aborted(
                    job_id,
                    [Phase.EXECUTING],
                    end_time=end_time,
                    error=error,
                    info=clean,
                    owner_token=token,
                )
            return self.store.mark_failed(
                job_id,
                [Phase.EXECUTING],
                error,
                end_time=end_time,
                info=clean,
                owner_token=token,
            )

        moved = await in_thread(self._move_clean, job_id, info, end)
        if not moved:
            await in_thread(self.drop_progress, job_id)
        await in_thread(self.folders.discard_run, job_id, token)

    def _move_clean(
        self,
        job_id: str,
        info: dict[str, Any] | None,
        move: Callable[[dict[str, Any] | None], bool],
    ) -> bool:
        """(In a thread.) Make ``move`` with the jobInfo the job leaves EXECUTING with:
        ``info`` if given, else the job's own, without ``progress`` (None: the job's own has
        none, and is left as it is). False when the job is gone."""
        given = info is not None
        if info is None:
            try:
                info = self.store.get(job_id).info
            except JobNotFound:
                return False
        if "progress" in info:
            return bool(move(_without_progress(info)))
        return bool(move(info if given else None))


# -- after a restart -----------------------------------------------------------------------


def remove_orphans(store: JobStore, folders: JobFolders, min_age_s: float) -> int:
    """Remove job folders that have no database row (a creation cut short by a kill, a
    deletion cut between its row and its folder), untouched for ``min_age_s`` seconds."""
    idle = folders.idle_folders(min_age_s)
    known = store.existing_ids(idle)
    orphans = [name for name in idle if name not in known]
    for name in orphans:
        if name not in store.existing_ids([name]):  # created meanwhile? keep it
            log.info("removing the folder of job %s, which has no database row", name)
            folders.remove(name)
    return len(orphans)


def recover(
    store: JobStore, folders: JobFolders, orphan_min_age_s: float | None = None
) -> tuple[int, int]:
    """After a restart: jobs left EXECUTING run again (their runs lose the job: their tokens
    are cleared); a job whose input is gone is ERROR; with ``orphan_min_age_s``, job folders
    without a row that long are removed."""
    requeued = failed = 0
    for phase in (Phase.EXECUTING, Phase.QUEUED):
        for job_id in store.ids_in_phase(phase):
            job = store.get(job_id)
            missing = [
                p.name.upper()
                for p in job.parameters
                if p.is_file and not folders.input_file(job_id, p.value).is_file()
            ]
            if missing:
                message = (
                    f"the uploaded {', '.join(missing)} of this job was lost while the "
                    "service restarted; please submit the job again"
                )
                store.mark_failed(
                    job_id, [phase], ErrorSummary(ErrorType.FATAL, message), end_time=utcnow()
                )
                failed += 1
            elif phase == Phase.EXECUTING:
                folders.clear_results(job_id)
                store.requeue(job_id, queue_time=utcnow())
                requeued += 1
    if orphan_min_age_s is not None:
        removed = remove_orphans(store, folders, orphan_min_age_s)
        if removed:
            log.info("recovered: removed %d job folder(s) without a database row", removed)
    return requeued, failed
