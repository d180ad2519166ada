"""JobService: the policy of the UWS job life cycle.

Handlers in uws/ only parse and render; every decision (who may see a job, which parameters a
model takes, what a phase allows, how long a job may run and live) is made here, and every
read or write goes to the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from astro_otf.config import Settings
from astro_otf.domain.errors import (
    JobNotFound,
    NotAcceptable,
    NotFound,
    ParameterError,
    ParameterTooLarge,
    PhaseConflict,
    QueueFull,
)
from astro_otf.domain.job import Job, JobParameter, JobSummary, is_job_id, new_job_id
from astro_otf.domain.parameters import check_run_id, check_texts, validate
from astro_otf.domain.phases import ACTIVE_PHASES, FINAL_PHASES, Phase
from astro_otf.imaging.fits import UploadRefused, check_upload
from astro_otf.models.registry import Registry
from astro_otf.results.preview import PreviewCache, PreviewUnavailable, is_plan
from astro_otf.results.provenance import ProvenanceUnavailable, convert
from astro_otf.service.events import JobEvents
from astro_otf.service.scheduler import Scheduler, utcnow
from astro_otf.service.threads import in_thread
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore

log = logging.getLogger(__name__)

#: Previews drawn on their first request (one per process: its locks are per preview file).
PREVIEWS = PreviewCache()

#: The server's name for each uploaded file parameter; the client's file name is never used.
UPLOAD_NAMES = {"image": "image.fits"}
#: The most jobs one listing may ask for with LAST (a bigger number is a client mistake,
#: not a database error).
MAX_LIST_LAST = 1_000_000
#: The longest the reaper sleeps between passes (reaper.MAX_SLEEP): a new job destroyed
#: later than this needs no re-planning (each one costs the reaper two queries).
REAPER_HORIZON = timedelta(hours=1)


def _copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (inputs are never written again), else a
    copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class JobService:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        folders: JobFolders,
        registry: Registry,
        events: JobEvents,
        scheduler: Scheduler,
    ) -> None:
        self.settings = settings
        self.store = store
        self.folders = folders
        self.registry = registry
        self.events = events
        self.scheduler = scheduler
        self._check_owner = settings.auth_mode == "token"
        #: Counting the queue and adding to it happen under this lock, so that RUNs arriving
        #: together cannot overfill it (one process; replicas need a database lock).
        self._queue_lock = asyncio.Lock()
        #: Called when a destruction time may have moved earlier (the reaper re-plans).
        self.on_destruction_change: Callable[[], None] | None = None

    # -- creation ------------------------------------------------------------------------

    @staticmethod
    def new_job_id() -> str:
        return new_job_id()

    def prepare(self, job_id: str) -> None:
        """Make the job's folder before its upload streams in."""
        self.folders.create(job_id)

    def open_upload(self, job_id: str, name: str) -> IO[bytes]:
        """A file to stream the upload of parameter ``name`` into (server-chosen path)."""
        filename = UPLOAD_NAMES.get(name)
        if filename is None:
            raise ParameterError(name, "is not a file parameter; only IMAGE is uploaded")
        return self.folders.input_file(job_id, filename).open("wb")

    def _staged(self, job_id: str) -> Path:
        return self.folders.input_file(job_id, UPLOAD_NAMES["image"] + ".new")

    def open_staged_upload(self, job_id: str) -> IO[bytes]:
        """A replacement IMAGE streams here; it takes the image's place only once the new
        parameter set is accepted (:meth:`commit_staged_upload`)."""
        return self._staged(job_id).open("wb")

    def commit_staged_upload(self, job_id: str) -> None:
        os.replace(self._staged(job_id), self.folders.input_file(job_id, UPLOAD_NAMES["image"]))

    def drop_staged_upload(self, job_id: str) -> None:
        self._staged(job_id).unlink(missing_ok=True)

    async def discard(self, job_id: str) -> None:
        """Forget a job whose creation failed: nothing of it stays on disk."""
        await in_thread(self.folders.remove, job_id)

    async def create(
        self,
        job_id: str,
        owner: str | None,
        fields: Mapping[str, str],
        files: Collection[str],
        *,
        run_id: str | None = None,
        start: bool = False,
    ) -> Job:
        """Validate and record a new job; ``files`` are the uploaded parameters' names, whose
        files are already in the job's folder."""
        if run_id is not None:
            check_run_id(run_id)
        model_id, params, priority = self._check(fields, files)
        if "image" in files:
            await self._check_image(self.folders.input_file(job_id, UPLOAD_NAMES["image"]))
        now = utcnow()
        job = Job(
            job_id=job_id,
            owner=owner,
            run_id=run_id,
            phase=Phase.PENDING,
            model_id=model_id,
            priority=priority,
            creation_time=now,
            start_time=None,
            end_time=None,
            execution_duration=min(
                self.settings.default_execution_duration, self.settings.max_execution_duration
            ),
            destruction_time=now + timedelta(days=self.settings.default_destruction_days),
            parameters=params,
        )
        if start:  # born QUEUED, so that a refused start stores nothing
            async with self._queue_lock:
                await self._check_queue_room()
                job.phase = Phase.QUEUED
                job.queue_time = utcnow()
                stored = await in_thread(self._record, job)
            self.scheduler.wake()
        else:
            stored = await in_thread(self._record, job)
        log.info("job %s created (model %s, owner %s)", job_id, model_id, owner)
        if job.destruction_time is not None and job.destruction_time - now <= REAPER_HORIZON:
            self._destruction_changed()  # else the reaper wakes before it anyway
        return stored

    def _record(self, job: Job) -> Job:
        """The job's folder (if its upload has not made it already), then its row."""
        self.prepare(job.job_id)
        return self.store.create(job)

    async def rerun(
        self, job_id: str, owner: str | None, new_id: str, *, start: bool, run_id: str | None
    ) -> Job:
        """A new job with the recorded inputs, model, model version and parameters of
        finished job ``job_id`` (its uploaded files are copied). Refused (409) when the job
        has not finished, or when the model version it ran is no longer installed, since the
        replay would then not be the same computation."""
        old = await self.get(job_id, owner)
        if old.phase not in FINAL_PHASES:
            raise PhaseConflict(
                f"job {job_id} is {old.phase.value}; only a finished job can be run again"
            )
        # the version stored at creation; for a job stored before versions were, the one
        # its worker recorded; for one that never ran a model, the default
        recorded = old.model_version or old.info.get("model_version")
        version = None if recorded is None else str(recorded)
        installed = self.registry.versions(old.model_id)
        try:
            app = self.registry.get(old.model_id, version)
        except ParameterError:
            raise PhaseConflict(
                f"job {job_id} ran {old.model_id} version {version}, but this server now has "
                f"only version(s) {', '.join(installed)}: the replay would not be the same "
                "computation"
            ) from None
        files = [p for p in old.parameters if p.is_file]
        await in_thread(self.prepare, new_id)
        try:
            for p in files:
                source = self.folders.input_file(job_id, p.value)
                if not await in_thread(source.is_file):
                    raise PhaseConflict(
                        f"the uploaded {p.name.upper()} of job {job_id} is no longer on the "
                        "server; it cannot be run again"
                    )
                await in_thread(_copy, source, self.folders.input_file(new_id, p.value))
            return await self.create(
                new_id,
                owner,
                {**old.parameter_values(), "model_version": app.version},
                [p.name for p in files],
                run_id=run_id if run_id is not None else old.run_id,
                start=start,
            )
        except BaseException:
            await self.discard(new_id)
            raise

    async def _check_image(self, path: Path) -> None:
        """An uploaded IMAGE, from its header, before its job is accepted: a compressed
        stream is inflated under the upload limit; an image over ``max_image_pixels`` is
        refused (413), and so is one whose header declares more data than the file holds
        (400), so that no job is planned, queued or batched on a size the file does not
        have."""
        try:
            await in_thread(
                check_upload,
                path,
                max_pixels=self.settings.max_image_pixels,
                max_bytes=self.settings.max_upload_bytes,
            )
        except UploadRefused as exc:
            if exc.too_large:
                raise ParameterTooLarge("image", exc.message) from None
            raise ParameterError("image", exc.message) from None

    def _check(
        self, fields: Mapping[str, str], files: Collection[str]
    ) -> tuple[str, list[JobParameter], int]:
        check_texts(fields)  # before any of them is looked up or echoed
        app = self.registry.get(fields.get("model"), fields.get("model_version"))
        checked = validate(
            fields,
            files,
            app.parameters,
            precisions=app.precisions,
            model_id=app.model_id,
            image_required=app.needs_image,
        )
        checked.stored["model"] = app.model_id
        # always the resolved version: the job keeps it even if a newer one is installed
        checked.stored["model_version"] = app.version
        params = [JobParameter(k, v) for k, v in sorted(checked.stored.items())]
        params += [JobParameter(name, UPLOAD_NAMES[name], is_file=True) for name in sorted(files)]
        return app.model_id, params, int(checked.values.get("priority", 0))

    # -- reading -------------------------------------------------------------------------

    async def get(self, job_id: str, owner: str | None) -> Job:
        """The job, or :class:`JobNotFound`; an id that cannot be a job id is not looked up."""
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        job = self.store.cached(job_id)  # no thread hop and no database read
        if job is not None:
            if self._check_owner and job.owner != owner:
                raise JobNotFound(job_id)  # the same answer as an unknown id
            return job
        return await in_thread(self.store.get, job_id, owner, check_owner=self._check_owner)

    def document(self, job: Job, key: str, render: Callable[[], bytes]) -> bytes:
        """A document rendered from ``job`` (``key`` names the kind and everything else it
        depends on), rendered once per cached job record. The records :meth:`get` returns
        are shared: they must not be changed."""
        return self.store.document(job, key, render)

    async def list(
        self,
        owner: str | None,
        phases: Collection[Phase] | None,
        after: datetime | None,
        last: int | None,
    ) -> list[JobSummary]:
        if last is not None and not 1 <= last <= MAX_LIST_LAST:
            raise ParameterError(
                "last", f"{last} is out of range: give a number of jobs from 1 to {MAX_LIST_LAST}"
            )
        return await in_thread(
            self.store.list_jobs,
            owner=owner,
            check_owner=self._check_owner,
            phases=phases,
            after=after,
            last=last,
        )

    async def wait(
        self, job_id: str, owner: str | None, timeout: float, phase: Phase | None = None
    ) -> Job:
        """UWS blocking WAIT: return when the job leaves its current active phase (or the
        ``phase`` given), or after ``timeout`` seconds; at once if it is not active."""
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        deadline = asyncio.get_running_loop().time() + min(timeout, self.settings.max_wait)
        while True:
            event = self.events.watch(job_id)
            try:
                job = await self.get(job_id, owner)
            except JobNotFound:
                self.events.notify(job_id)  # no watch is left behind for an unknown id
                raise
            if job.phase not in ACTIVE_PHASES or (phase is not None and job.phase != phase):
                return job
            start_phase = job.phase
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return job
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return job
            job = await self.get(job_id, owner)
            if job.phase != start_phase:
                return job

    def result_file(self, job: Job, result_id: str) -> tuple[Path, str]:
        for r in job.results:
            if r.result_id == result_id:
                return self.folders.result_file(job.job_id, r.filename), r.mime_type
        known = ", ".join(r.result_id for r in job.results) or "none yet"
        raise NotFound(f"job {job.job_id} has no result {result_id!r} (results: {known})")

    async def result_download(self, job: Job, result_id: str) -> tuple[Path, str]:
        """The file to send for a result and its media type: the listed file, except for a
        preview listed by its plan, whose PNG is drawn on this first request (once, in a
        thread; see PreviewCache) and kept. A preview that cannot be drawn is a 404 saying
        why; nothing else of the job is touched."""
        path, mime = self.result_file(job, result_id)
        if not is_plan(path.name):
            return path, mime
        image = next((p for p in job.parameters if p.is_file and p.name == "image"), None)
        if image is None:
            raise NotFound(f"the preview of job {job.job_id} cannot be drawn: no input image")
        started = asyncio.get_running_loop().time()
        try:
            png = await PREVIEWS.png(path, self.folders.input_file(job.job_id, image.value))
        except PreviewUnavailable as exc:
            raise NotFound(f"the preview of job {job.job_id} cannot be drawn: {exc}") from None
        except Exception as exc:  # a drawing bug must not become a 500 or harm the job
            log.exception("drawing the preview of job %s failed", job.job_id)
            raise NotFound(
                f"the preview of job {job.job_id} cannot be drawn ({type(exc).__name__}: "
                f"{exc}); the catalogue and other results are unaffected"
            ) from None
        log.debug(
            "preview of job %s ready in %.3f s",
            job.job_id,
            asyncio.get_running_loop().time() - started,
        )
        return png, mime

    async def provenance(self, job_id: str, owner: str | None, fmt: str) -> bytes:
        """The job's provenance document in ``fmt`` (a key of PROV_FORMATS)."""
        job = await self.get(job_id, owner)
        if not any(r.result_id == "provenance" for r in job.results):
            raise NotFound(
                f"job {job_id} has no provenance (phase {job.phase.value}): it is written "
                "when a job completes"
            )
        path, _ = self.result_file(job, "provenance")
        try:
            text = await in_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(f"the provenance file of job {job_id} is missing") from None
        if fmt == "json":
            return text
        try:
            return await in_thread(convert, text, fmt)
        except ProvenanceUnavailable as exc:
            raise NotAcceptable(str(exc)) from None

    def parameter_file(self, job: Job, name: str) -> Path:
        for p in job.parameters:
            if p.name == name.lower() and p.is_file:
                return self.folders.input_file(job.job_id, p.value)
        raise NotFound(f"job {job.job_id} has no uploaded file parameter {name!r}")

    # -- phase changes -------------------------------------------------------------------

    async def _check_queue_room(self) -> None:
        queued = await in_thread(self.store.count, Phase.QUEUED)
        if queued >= self.settings.max_queued_jobs:
            raise QueueFull(
                f"the queue is full ({queued} jobs waiting); try again later", retry_after=30
            )

    async def run(self, job_id: str, owner: str | None) -> None:
        job = await self.get(job_id, owner)
        if job.phase in (Phase.QUEUED, Phase.EXECUTING):
            return  # already on its way: RUN is idempotent
        if job.phase != Phase.PENDING:
            raise PhaseConflict(
                f"job {job_id} is {job.phase.value}; only a PENDING job can be run "
                "(create a new job to run again)"
            )
        async with self._queue_lock:
            await self._check_queue_room()
            moved = await in_thread(
                self.store.transition, job_id, [Phase.PENDING], Phase.QUEUED, queue_time=utcnow()
            )
        if moved:
            self.events.notify(job_id)
            self.scheduler.wake()

    async def abort(self, job_id: str, owner: str | None) -> None:
        job = await self.get(job_id, owner)
        if job.phase == Phase.ABORTED:
            return
        if job.phase in FINAL_PHASES:
            raise PhaseConflict(f"job {job_id} is already {job.phase.value}; it cannot be aborted")
        moved = await in_thread(
            self.store.transition, job_id, list(ACTIVE_PHASES), Phase.ABORTED, end_time=utcnow()
        )
        if moved:
            await self.scheduler.cancel(job_id)
            self.events.notify(job_id)
            log.info("job %s aborted", job_id)
        else:  # it finished meanwhile: report what it is now
            job = await self.get(job_id, owner)
            if job.phase != Phase.ABORTED:
                raise PhaseConflict(
                    f"job {job_id} is already {job.phase.value}; it cannot be aborted"
                )

    async def delete(self, job_id: str, owner: str | None) -> None:
        job = await self.get(job_id, owner)
        await self._destroy(job)

    async def _destroy(self, job: Job) -> None:
        if job.phase in ACTIVE_PHASES:
            await in_thread(
                self.store.transition,
                job.job_id,
                list(ACTIVE_PHASES),
                Phase.ABORTED,
                end_time=utcnow(),
            )
            await self.scheduler.cancel(job.job_id)
        await in_thread(self.store.delete, job.job_id)
        await in_thread(self.folders.remove, job.job_id)
        self.events.notify(job.job_id)
        log.info("job %s deleted", job.job_id)

    async def destroy_expired(self) -> int:
        """Delete every job whose destruction time has passed (the reaper's work)."""
        ids = await in_thread(self.store.expired, utcnow())
        for job_id in ids:
            try:
                job = await in_thread(self.store.get, job_id)
            except JobNotFound:
                continue
            await self._destroy(job)
        return len(ids)

    # -- settable job properties ---------------------------------------------------------

    async def set_execution_duration(self, job_id: str, owner: str | None, seconds: int) -> None:
        """Set the run-time limit; 0 (unlimited) and values over the cap become the cap."""
        job = await self.get(job_id, owner)
        if job.phase != Phase.PENDING:
            raise PhaseConflict(
                f"job {job_id} is {job.phase.value}; EXECUTIONDURATION can only be changed "
                "while the job is PENDING"
            )
        if seconds < 0:
            raise ParameterError("executionduration", f"{seconds} is negative")
        cap = self.settings.max_execution_duration
        value = cap if seconds == 0 else min(seconds, cap)
        if not await in_thread(
            self.store.update_fields, job_id, [Phase.PENDING], execution_duration=value
        ):
            raise PhaseConflict(f"job {job_id} left PENDING; EXECUTIONDURATION was not changed")

    async def set_destruction(self, job_id: str, owner: str | None, when: datetime) -> None:
        """Set the destruction time, clamped between now and the configured maximum."""
        job = await self.get(job_id, owner)
        now = utcnow()
        latest = now + timedelta(days=self.settings.max_destruction_days)
        value = min(max(when, now), latest)
        await in_thread(self.store.update_fields, job_id, list(Phase), destruction_time=value)
        self._destruction_changed()
        log.info("job %s destruction set to %s", job.job_id, value.isoformat())

    async def update_parameters(
        self, job_id: str, owner: str | None, fields: Mapping[str, str], files: Collection[str]
    ) -> None:
        """Change parameters of a PENDING job; the whole resulting set is validated again."""
        job = await self.get(job_id, owner)
        if job.phase != Phase.PENDING:
            raise PhaseConflict(
                f"job {job_id} is {job.phase.value}; parameters can only be changed while "
                "the job is PENDING"
            )
        merged = {**job.parameter_values(), **fields}
        if (  # another MODEL takes its own default version, not the old model's
            "model" in fields
            and "model_version" not in fields
            and self.registry.get(fields["model"]).model_id != job.model_id
        ):
            merged.pop("model_version", None)
        have_files = {p.name for p in job.parameters if p.is_file} | set(files)
        model_id, params, priority = self._check(merged, have_files)
        if "image" in files:
            await self._check_image(self._staged(job_id))
        if not await in_thread(
            self.store.replace_parameters, job_id, params, priority=priority, model_id=model_id
        ):
            raise PhaseConflict(f"job {job_id} left PENDING; parameters were not changed")

    def _destruction_changed(self) -> None:
        if self.on_destruction_change is not None:
            self.on_destruction_change()
