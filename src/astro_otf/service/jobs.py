"""JobService: the policy of the UWS job life cycle.

Handlers in uws/ only parse and render; every decision (who may see a job, which parameters a
model takes, what a phase allows, how long a job may run and live) is made here, and every
read or write goes to the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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
from astro_otf.domain.job import (
    Job,
    JobParameter,
    JobSummary,
    computation_key,
    is_job_id,
    new_job_id,
    sees_every_owner,
)
from astro_otf.domain.parameters import NATIVE_BY_NAME, check_run_id, check_texts, validate
from astro_otf.domain.phases import ACTIVE_PHASES, FINAL_PHASES, Phase
from astro_otf.imaging.fits import UploadRefused, check_upload
from astro_otf.imaging.identity import describe_image, sanitise_filename
from astro_otf.models.registry import Registry
from astro_otf.results.formats import write_atomically
from astro_otf.results.preview import PreviewCache, PreviewUnavailable, is_plan
from astro_otf.results.products import IDENTITY_FILE
from astro_otf.results.provenance import ProvenanceUnavailable, convert, reuse_provenance
from astro_otf.serverlog import REQUEST_ID
from astro_otf.service.datasets import Datasets
from astro_otf.service.events import JobEvents
from astro_otf.service.feed import JobFeed
from astro_otf.service.held import Holds, is_held_ref
from astro_otf.service.lifecycle import utcnow
from astro_otf.service.scheduler import Scheduler
from astro_otf.service.threads import in_thread
from astro_otf.service.webhooks import WebhookSender, check_webhook
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore

if TYPE_CHECKING:
    from astro_otf.service.quotas import Quotas
    from astro_otf.service.uploads import UploadService

__all__ = ["MAX_LIST_LAST", "UPLOAD_NAMES", "HashingWriter", "JobService"]

log = logging.getLogger(__name__)

#: Previews drawn on their first request (one per process: its locks are per preview file).
PREVIEWS = PreviewCache()

#: The server's name for each uploaded file parameter; the client's file name is never used
#: as a path (it is kept, cleaned, as the job's ``image_name``).
UPLOAD_NAMES = {"image": "image.fits"}
#: Jobs whose owner and last published phase the event feed remembers.
FEED_MEMORY = 50_000
#: The most jobs one listing may ask for with LAST (a bigger number is a client mistake,
#: not a database error).
MAX_LIST_LAST = 1_000_000
#: The longest the reaper sleeps between passes (reaper.MAX_SLEEP): a new job destroyed
#: later than this needs no re-planning (each one costs the reaper two queries).
REAPER_HORIZON = timedelta(hours=1)


def file_sha256(path: Path) -> str:
    """The file's sha256 in hex, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class HashingWriter:
    """A file an upload streams into, hashed on the way (no second read of the file)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        """Write ``data`` to the file, hashing it on the way."""
        self.digest.update(data)
        return self.raw.write(data)

    def close(self) -> None:
        """Close the file (the digest stays readable)."""
        self.raw.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def _copy(source: Path, target: Path) -> None:
    """A hard link where the file system allows (inputs are never written again), else a
    copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


#: The most of a job log one request reads from its end (a log grows with every run).
MAX_LOG_BYTES = 8 << 20


def _read_log(path: Path, tail: int | None) -> str:
    """The log's text (its last MAX_LOG_BYTES), or its last ``tail`` lines."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - MAX_LOG_BYTES))
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    if size > MAX_LOG_BYTES:
        text = text.split("\n", 1)[-1]  # the first line may be cut
    if tail is None:
        return text
    lines = text.splitlines(keepends=True)
    return "".join(lines[-tail:]) if tail else ""


class JobService:
    """What the HTTP layer asks of jobs: create, read, run, abort, delete and change them,
    each decision made here (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        folders: JobFolders,
        registry: Registry,
        events: JobEvents,
        scheduler: Scheduler,
        *,
        feed: JobFeed | None = None,
        uploads: UploadService | None = None,
        quotas: Quotas | None = None,
        datasets: Datasets | None = None,
    ) -> None:
        self.settings = settings
        #: Per-owner quotas (active jobs, stored bytes, creation rate); None: no quotas.
        self.quotas = quotas
        self.feed = feed or JobFeed()
        self.uploads = uploads
        #: job id -> (owner, last phase published on the feed), newest last
        self._seen: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self._announcing: set[str] = set()
        self._announce_again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        events.listeners.append(self.job_changed)
        self.webhooks = WebhookSender()
        self.store = store
        self.folders = folders
        self.registry = registry
        self.events = events
        self.scheduler = scheduler
        #: Whether jobs are seen only by their owners (token and OIDC modes), operators aside.
        self._check_owner = settings.auth_mode != "anonymous"
        #: Counting the queue and adding to it happen under this lock, so that RUNs arriving
        #: together cannot overfill it (one process; replicas need a database lock).
        self._queue_lock = asyncio.Lock()
        #: Called when a destruction time may have moved earlier (the reaper re-plans).
        self.on_destruction_change: Callable[[], None] | None = None
        #: Jobs that wait for their data (HELD); the datasets they may name.
        self.holds = Holds(self, datasets or Datasets(settings.datasets))

    def checks(self, owner: str | None) -> bool:
        """Whether ``owner`` sees only its own jobs (not in anonymous mode, not an operator)."""
        return self._check_owner and not sees_every_owner(owner)

    # -- creation ------------------------------------------------------------------------

    @staticmethod
    def new_job_id() -> str:
        """A fresh job id, for a job whose upload streams in before it is created."""
        return new_job_id()

    def prepare(self, job_id: str) -> None:
        """Make the job's folder before its upload streams in."""
        self.folders.create(job_id)

    def open_upload(self, job_id: str, name: str) -> HashingWriter:
        """A file to stream the upload of parameter ``name`` into (server-chosen path),
        hashed while it streams (its ``digest`` goes to :meth:`create`)."""
        filename = UPLOAD_NAMES.get(name)
        if filename is None:
            raise ParameterError(name, "is not a file parameter; only IMAGE is uploaded")
        return HashingWriter(self.folders.input_file(job_id, filename).open("wb"))

    def _staged(self, job_id: str) -> Path:
        return self.folders.input_file(job_id, UPLOAD_NAMES["image"] + ".new")

    def open_staged_upload(self, job_id: str) -> IO[bytes]:
        """A replacement IMAGE streams here; it takes the image's place only once the new
        parameter set is accepted (:meth:`commit_staged_upload`)."""
        return self._staged(job_id).open("wb")

    def _staged_identity(self, job_id: str) -> Path:
        return self.folders.input_file(job_id, IDENTITY_FILE + ".new")

    def commit_staged_upload(self, job_id: str) -> None:
        """The replacement IMAGE, and what it is, take the old one's place (done already
        when the IMAGE was a HELD job's: service.held)."""
        if not self._staged(job_id).exists():
            return
        os.replace(self._staged(job_id), self.folders.input_file(job_id, UPLOAD_NAMES["image"]))
        staged_identity = self._staged_identity(job_id)
        if staged_identity.exists():
            os.replace(staged_identity, self.folders.input_file(job_id, IDENTITY_FILE))

    def drop_staged_upload(self, job_id: str) -> None:
        """Remove an upload staged for the job (and its recorded identity), if any."""
        self._staged(job_id).unlink(missing_ok=True)
        self._staged_identity(job_id).unlink(missing_ok=True)

    async def admit(self, owner: str | None) -> None:
        """Before a new job's upload streams in: refuse at once an owner over its creation
        rate (429) or its storage quota (413). Takes nothing: :meth:`create` decides."""
        if self.quotas is not None:
            self.quotas.check_rate(owner, take=False)
            await self.quotas.check_storage(owner)

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
        image_name: str | None = None,
        digests: Mapping[str, str] | None = None,
        reuse: bool = True,
    ) -> Job:
        """Validate and record a new job; ``files`` are the uploaded parameters' names, whose
        files are already in the job's folder (``digests``: their sha256, when hashed while
        they streamed in; ``image_name``: the client's name for the image). An IMAGE field
        naming a stored upload (``upload:<id>``, ``sha256:<hex>``) is linked in as the
        image. Started with ``start`` and not ``reuse``-refused (NOCACHE), a job whose
        computation a completed job of the same owner already made is COMPLETED at once
        with that job's results."""
        if self.quotas is not None:  # a creation refused for its rate costs no work
            self.quotas.check_rate(owner, take=True)
        if run_id is not None:
            check_run_id(run_id)
        fields = dict(fields)
        files = list(files)
        digests = dict(digests or {})
        upload_id = None
        hold = fields.pop("hold", None)
        taken = None  # an IMAGE of dataset: or pending: (service.held)
        if "image" in fields:
            if "image" in files:
                raise ParameterError("image", "is given twice: as a file part and as a field")
            ref = fields.pop("image")
            if is_held_ref(ref):
                taken = await self.holds.take(job_id, ref, hold)
                image_name = image_name or taken.image_name
            else:
                upload = await self._link_upload(job_id, owner, ref)
                digests["image"] = upload.sha256
                image_name = image_name or upload.filename
                upload_id = upload.upload_id
            files.append("image")
        if hold is not None and taken is None:
            raise ParameterError(
                "hold", "applies only to an IMAGE=dataset:<name>/<path> or IMAGE=pending:<name>"
            )
        held = None if taken is None else taken.held
        model_id, params, priority, values = self._check(fields, files)
        identity: dict[str, Any] | None = None
        inputs: dict[str, str] = {}
        if "image" in files and held is None:
            path = self.folders.input_file(job_id, UPLOAD_NAMES["image"])
            await self._check_image(path)
            identity = await in_thread(
                self._identify,
                job_id,
                path,
                image_name,
                digests.get("image"),
                upload_id,
                source=None if taken is None else taken.source,
            )
            inputs["image"] = identity["sha256"]
        if self.quotas is not None:
            await self.quotas.check_storage(owner, int((identity or {}).get("bytes") or 0))
        now = utcnow()
        job = Job(
            job_id=job_id,
            owner=None if owner is None else str(owner),  # the name, not an Operator
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
            info={"held": held} if held else {} if identity is None else {"input": identity},
            image_name=(taken.image_name if held and taken else None)
            if identity is None
            else identity["filename"],
            # only a job with an input is reused: one without (a diagnostic app) is run for
            # the running's sake
            cache_key=computation_key(inputs, values) if inputs else None,
        )
        reused = None
        if start and reuse and held is None:
            reused = await self._reuse(job)
        if held is not None and taken is not None:  # waits for its data: PENDING, or HELD
            if start:
                async with self._queue_lock:  # a HELD job counts as active (quotas)
                    await self._check_active(job.owner)
                job.phase = Phase.HELD
            stored = await in_thread(self._record, job, taken.until)
            if start:
                self.holds.watch_soon(job_id)
        elif reused is not None:
            stored = reused
        elif start:  # born QUEUED, so that a refused start stores nothing
            async with self._queue_lock:
                await self._check_queue_room()
                await self._check_active(job.owner)
                job.phase = Phase.QUEUED
                job.queue_time = utcnow()
                job.quote = self.scheduler.estimate_end(job)
                stored = await in_thread(self._record, job)
            self.scheduler.wake()
        else:
            stored = await in_thread(self._record, job)
        log.info("job %s created (model %s, owner %s)", job_id, model_id, owner)
        self.job_changed(job_id)
        if job.destruction_time is not None and job.destruction_time - now <= REAPER_HORIZON:
            self._destruction_changed()  # else the reaper wakes before it anyway
        return stored

    async def _link_upload(self, job_id: str, owner: str | None, ref: str) -> Any:
        """The stored upload ``ref`` names, linked in as the job's image."""
        if self.uploads is None:
            raise ParameterError("image", "this service keeps no uploads; send the file itself")
        upload = await self.uploads.resolve(owner, ref)
        await in_thread(self.prepare, job_id)
        await in_thread(_copy, upload.path, self.folders.input_file(job_id, UPLOAD_NAMES["image"]))
        return upload

    def _identify(
        self,
        job_id: str,
        path: Path,
        image_name: str | None,
        sha256: str | None,
        upload_id: str | None,
        *,
        record: Path | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """What the job's image at ``path`` is, for people (file name, object, telescope,
        frequency, shape) and for reuse (its sha256); written at ``record`` (default: the
        identity file beside the job's image) for the worker to put in the catalogue."""
        identity: dict[str, Any] = {
            "filename": sanitise_filename(image_name or UPLOAD_NAMES["image"]),
            "sha256": sha256 or file_sha256(path),
            "bytes": path.stat().st_size,
            "upload_id": upload_id,
            **(source or {}),  # a dataset image: its dataset and path there
        }
        try:
            identity.update(describe_image(path))
        except Exception as exc:  # the image was checked already: its header is only a label
            log.warning("job %s: cannot describe its image (%s)", job_id, exc)
        target = record or self.folders.input_file(job_id, IDENTITY_FILE)
        write_atomically(target, json.dumps(identity).encode())
        return identity

    async def _reusable(self, job: Job) -> tuple[Job, dict[str, Any]] | None:
        """The newest completed job of ``job``'s owner that computed the same thing, its
        result files already linked into ``job``'s folder, and the info ``job`` takes from
        it; None when there is none, NOCACHE is set, or its files are gone."""
        if job.cache_key is None:
            return None
        nocache = job.parameter_values().get("nocache")
        if nocache is not None and NATIVE_BY_NAME["nocache"].parse(nocache):
            return None
        found = await in_thread(
            self.store.find_computed, job.cache_key, job.owner, check_owner=self._check_owner
        )
        if found is None or not found.results:
            return None
        try:
            await in_thread(self._link_results, found, job)
        except OSError as exc:
            log.info("job %s: results of job %s not reusable (%s)", job.job_id, found.job_id, exc)
            await in_thread(self.folders.clear_results, job.job_id)
            return None
        kept = ("n_sources", "model_version", "rms", "threshold")
        info = {
            **job.info,
            **{k: found.info[k] for k in kept if k in found.info},
            # the job that computed them (``found`` may itself be a copy)
            "cached_from": found.info.get("cached_from") or found.job_id,
            "run_seconds": 0.0,
            "cpu_seconds": 0.0,  # nothing ran for it (its accounting says so)
        }
        return found, info

    async def _reuse(self, job: Job) -> Job | None:
        """``job`` recorded as COMPLETED with the results of a completed job that computed
        the same thing (:meth:`_reusable`), or None when it must run."""
        reusable = await self._reusable(job)
        if reusable is None:
            return None
        found, job.info = reusable
        job.phase = Phase.COMPLETED
        job.start_time = job.end_time = utcnow()
        job.results = list(found.results)
        stored = await in_thread(self._record, job)
        self.events.notify(job.job_id)
        log.info("job %s: COMPLETED from the results of job %s", job.job_id, found.job_id)
        return stored

    def _link_results(self, found: Job, job: Job) -> None:
        """The result files of ``found`` in ``job``'s results folder (hard links; a copy
        where the file system has none), its provenance rewritten to say so."""
        self.prepare(job.job_id)
        source = self.folders.results(found.job_id)
        target = self.folders.results(job.job_id)
        target.mkdir(parents=True, exist_ok=True)
        listed = {r.filename for r in found.results}
        for path in source.iterdir():
            if path.is_file() and (path.name in listed or path.suffix == ".png"):
                if path.name == "provenance.json":
                    continue
                _copy(path, target / path.name)
        missing = [name for name in listed if not (target / name).is_file()]
        if "provenance.json" in listed:
            original = (source / "provenance.json").read_bytes()
            document = reuse_provenance(
                original,
                job_id=job.job_id,
                cached_from=found.job_id,
                owner=job.owner,
                when=utcnow(),
            )
            write_atomically(target / "provenance.json", document)
            missing = [name for name in missing if name != "provenance.json"]
        if missing:
            raise FileNotFoundError(f"result file(s) {', '.join(sorted(missing))} missing")
        origin = found.info.get("cached_from") or found.job_id
        self._journal(
            job.job_id,
            f"job {job.job_id}: nothing run; the results of job {origin} are reused (the "
            "same input bytes, model version and parameters). NOCACHE=true runs the job "
            "anyway.",
        )

    def _record(self, job: Job, hold_until: datetime | None = None) -> Job:
        """The job's folder (if its upload has not made it already), then its row."""
        self.prepare(job.job_id)
        stored = self.store.create(job, hold_until=hold_until)
        self._journal(
            job.job_id,
            f"job {job.job_id} created as {job.phase.value} (model {job.model_id}, owner "
            f"{job.owner or 'anonymous'}, image {job.image_name or '-'})",
        )
        return stored

    def _journal(self, job_id: str, message: str) -> None:
        """A line in the job's log about what a request did to it, with the request's id
        (the server log's line for that request carries the same id)."""
        path = self.folders.logs(job_id) / "job.log"
        stamp = utcnow().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        try:
            with path.open("a", encoding="utf-8") as f:
                f.write(f"{stamp} INFO [request {REQUEST_ID.get()}] {message}\n")
        except OSError as exc:  # a log line is never worth failing the request
            log.warning("cannot write the log of job %s: %s", job_id, exc)

    async def rerun(
        self,
        job_id: str,
        owner: str | None,
        new_id: str,
        *,
        start: bool,
        run_id: str | None,
        overrides: Mapping[str, str] | None = None,
    ) -> Job:
        """A new job with the recorded inputs, model, model version and parameters of
        finished job ``job_id`` (its uploaded files are linked, not sent again), with
        ``overrides`` to some parameters (a threshold to try, say). Refused (409) when the
        job has not finished, or when the model version it ran is no longer installed, since
        the replay would then not be the same computation. A replay without overrides of a
        COMPLETED job is run again, not answered with reused results: asking for it is asking
        for the computation."""
        old = await self.get(job_id, owner)
        if old.phase not in FINAL_PHASES:
            raise PhaseConflict(
                f"job {job_id} is {old.phase.value}; only a finished job can be run again"
            )
        overrides = dict(overrides or {})
        for name in ("model", "image"):
            if name in overrides:
                raise ParameterError(
                    name, "cannot be changed by a rerun (it replays the same model and input)"
                )
        # the version stored at creation; for a job stored before versions were, the one
        # its worker recorded; for one that never ran a model, the default
        recorded = old.model_version or old.info.get("model_version")
        version = None if recorded is None else str(recorded)
        if "model_version" in overrides:
            version = overrides.pop("model_version")
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
            recorded_input = old.info.get("input") or {}
            digest = recorded_input.get("sha256") if isinstance(recorded_input, dict) else None
            return await self.create(
                new_id,
                owner,
                {**old.parameter_values(), **overrides, "model_version": app.version},
                [p.name for p in files],
                run_id=run_id if run_id is not None else old.run_id,
                start=start,
                image_name=old.image_name,
                digests={"image": digest} if isinstance(digest, str) else None,
                reuse=bool(overrides),
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
    ) -> tuple[str, list[JobParameter], int, dict[str, str]]:
        """The model, the parameters to store, the priority, and every value the run will
        use (defaults filled, as strings: what the job computes)."""
        check_texts(fields)  # before any of them is looked up or echoed
        if "notify" in fields:
            check_webhook(fields["notify"], self.settings.webhook_hosts)
        app = self.registry.get(fields.get("model"), fields.get("model_version"))
        self.registry.check_runnable(app)  # a command app whose environment is missing
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
        values = {k: str(v) for k, v in checked.values.items()}
        values.update(model=app.model_id, model_version=app.version)
        return app.model_id, params, int(checked.values.get("priority", 0)), values

    # -- reading -------------------------------------------------------------------------

    async def get(self, job_id: str, owner: str | None) -> Job:
        """The job, or :class:`JobNotFound`; an id that cannot be a job id is not looked up."""
        if not is_job_id(job_id):
            raise JobNotFound(job_id)
        job = self.store.cached(job_id)  # no thread hop and no database read
        if job is not None:
            if self.checks(owner) and job.owner != owner:
                raise JobNotFound(job_id)  # the same answer as an unknown id
        else:
            job = await in_thread(self.store.get, job_id, owner, check_owner=self.checks(owner))
        return self._with_queue_place(job)

    def _with_queue_place(self, job: Job) -> Job:
        """A QUEUED job with its place in the queue in ``info["progress"]`` (a copy: the
        records the store returns are shared). The place lives in the scheduler's memory,
        not the store: it changes for every queued job each time a batch starts."""
        if job.phase != Phase.QUEUED:
            return job
        place = self.scheduler.queue_progress(job.job_id)
        if not place:
            return job
        return Job(**{**job.__dict__, "info": {**job.info, "progress": place}})

    def document(self, job: Job, key: str, render: Callable[[], bytes]) -> bytes:
        """A document rendered from ``job`` (``key`` names the kind and everything else it
        depends on), rendered once per cached job record. The records :meth:`get` returns
        are shared: they must not be changed."""
        if job.phase == Phase.QUEUED and "progress" in job.info:
            return render()  # its place in the queue is not part of the cached record
        return self.store.document(job, key, render)

    async def list(
        self,
        owner: str | None,
        phases: Collection[Phase] | None,
        after: datetime | None,
        last: int | None,
        *,
        run_ids: Collection[str] = (),
        image_names: Collection[str] = (),
        details: bool = False,
    ) -> list[JobSummary]:
        """The jobs ``owner`` may see, newest first, filtered as UWS's job list allows;
        ``last`` outside 1..MAX_LIST_LAST is refused."""
        if last is not None and not 1 <= last <= MAX_LIST_LAST:
            raise ParameterError(
                "last", f"{last} is out of range: give a number of jobs from 1 to {MAX_LIST_LAST}"
            )
        return await in_thread(
            self.store.list_jobs,
            owner=owner,
            check_owner=self.checks(owner),
            phases=phases,
            after=after,
            last=last,
            run_ids=run_ids,
            image_names=image_names,
            details=details,
        )

    def queue_place(self, summary: JobSummary) -> dict[str, Any] | None:
        """A listed job's progress: its place in the queue while QUEUED, else what its row
        holds."""
        if summary.phase == Phase.QUEUED:
            return self.scheduler.queue_progress(summary.job_id)
        return summary.progress

    async def log_text(self, job_id: str, owner: str | None, tail: int | None) -> str:
        """The job's log (what its runs wrote), or its last ``tail`` lines."""
        await self.get(job_id, owner)
        path = self.folders.logs(job_id) / "job.log"
        try:
            return await in_thread(_read_log, path, tail)
        except FileNotFoundError:
            return ""

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
                self.events.forget(job_id)  # no watch is left behind for an unknown id
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
        """The file and media type of the job's result ``result_id`` (NotFound if it lists
        none such)."""
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
        """The uploaded file of the job's file parameter ``name`` (NotFound if it has none)."""
        for p in job.parameters:
            if p.name == name.lower() and p.is_file:
                return self.folders.input_file(job.job_id, p.value)
        raise NotFound(f"job {job.job_id} has no uploaded file parameter {name!r}")

    # -- phase changes -------------------------------------------------------------------

    async def _check_active(self, owner: str | None) -> None:
        """Under the queue lock: refuse (429) one more active job beyond the owner's
        ``max_active_jobs``."""
        if self.quotas is not None:
            await self.quotas.check_active(owner)

    async def _check_queue_room(self) -> None:
        queued = await in_thread(self.store.count, Phase.QUEUED)
        if queued >= self.settings.max_queued_jobs:
            raise QueueFull(
                f"the queue is full ({queued} jobs waiting); try again later", retry_after=30
            )

    async def run(self, job_id: str, owner: str | None) -> None:
        """PHASE=RUN: a PENDING job is queued (or HELD while its data is not there, or
        COMPLETED at once with reused results); a job already on its way is left alone."""
        job = await self.get(job_id, owner)
        if job.phase in (Phase.QUEUED, Phase.EXECUTING, Phase.HELD):
            return  # already on its way: RUN is idempotent
        if job.phase != Phase.PENDING:
            raise PhaseConflict(
                f"job {job_id} is {job.phase.value}; only a PENDING job can be run "
                "(create a new job to run again)"
            )
        if isinstance(job.info.get("held"), dict):  # its data is not there yet, or just came
            async with self._queue_lock:  # HELD or QUEUED, it counts as active (quotas)
                await self._check_active(job.owner)
            await self.holds.run(job)
            return
        if await self._reuse_pending(job):
            return
        async with self._queue_lock:
            await self._check_queue_room()
            await self._check_active(job.owner)
            moved = await in_thread(
                self.store.mark_queued,
                job_id,
                [Phase.PENDING],
                queue_time=utcnow(),
                quote=self.scheduler.estimate_end(job),
            )
        if moved:
            await in_thread(self._journal, job_id, "RUN: queued")
            self.events.notify(job_id)
            self.scheduler.wake()

    async def _reuse_pending(self, job: Job) -> bool:
        """A PENDING job sent RUN whose computation a completed job already made: COMPLETED
        now with its results (:meth:`_reusable`). False when it must run."""
        reusable = await self._reusable(job)
        if reusable is None:
            return False
        found, info = reusable
        now = utcnow()
        moved = await in_thread(
            self.store.mark_reused,
            job.job_id,
            [Phase.PENDING],
            list(found.results),
            info=info,
            at=now,
        )
        if not moved:
            await in_thread(self.folders.clear_results, job.job_id)
            return False
        self.events.notify(job.job_id)
        log.info("job %s: COMPLETED from the results of job %s", job.job_id, found.job_id)
        return True

    async def abort(self, job_id: str, owner: str | None) -> None:
        """PHASE=ABORT: an active job is ABORTED and its run stopped; a finished one is a
        PhaseConflict (an ABORTED one is left as it is)."""
        job = await self.get(job_id, owner)
        if job.phase == Phase.ABORTED:
            return
        if job.phase in FINAL_PHASES:
            raise PhaseConflict(f"job {job_id} is already {job.phase.value}; it cannot be aborted")
        moved = await in_thread(
            self.store.mark_aborted, job_id, list(ACTIVE_PHASES), end_time=utcnow()
        )
        if moved:
            await self.scheduler.cancel(job_id)
            await in_thread(self._journal, job_id, "ABORT: aborted")
            self.events.notify(job_id)
            log.info("job %s aborted", job_id)
        else:  # it finished meanwhile: report what it is now
            job = await self.get(job_id, owner)
            if job.phase != Phase.ABORTED:
                raise PhaseConflict(
                    f"job {job_id} is already {job.phase.value}; it cannot be aborted"
                )

    async def delete(self, job_id: str, owner: str | None) -> None:
        """DELETE: the job is stopped if it runs, then its rows and folder are removed."""
        job = await self.get(job_id, owner)
        await self._destroy(job)

    async def _destroy(self, job: Job) -> None:
        if job.phase in ACTIVE_PHASES:
            await in_thread(
                self.store.mark_aborted, job.job_id, list(ACTIVE_PHASES), end_time=utcnow()
            )
            await self.scheduler.cancel(job.job_id)
        await in_thread(self.store.delete, job.job_id)
        await in_thread(self.folders.remove, job.job_id)
        self.events.notify(job.job_id)
        self._seen.pop(job.job_id, None)
        self.feed.publish(
            "deleted",
            job.job_id,
            job.owner,
            {"job_id": job.job_id, "phase": None, "run_id": job.run_id, "time": _now_iso()},
        )
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
        if not await in_thread(self.store.set_execution_duration, job_id, value):
            raise PhaseConflict(f"job {job_id} left PENDING; EXECUTIONDURATION was not changed")

    async def set_destruction(self, job_id: str, owner: str | None, when: datetime) -> None:
        """Set the destruction time, clamped between now and the configured maximum."""
        job = await self.get(job_id, owner)
        now = utcnow()
        latest = now + timedelta(days=self.settings.max_destruction_days)
        value = min(max(when, now), latest)
        await in_thread(self.store.set_destruction, job_id, value)
        if job.phase == Phase.HELD:  # its wait ends no later than the job
            await self.holds.cap(job, value)
        self._destruction_changed()
        log.info("job %s destruction set to %s", job.job_id, value.isoformat())

    async def update_parameters(
        self,
        job_id: str,
        owner: str | None,
        fields: Mapping[str, str],
        files: Collection[str],
        *,
        image_name: str | None = None,
    ) -> None:
        """Change parameters of a PENDING job; the whole resulting set is validated again."""
        job = await self.get(job_id, owner)
        if job.phase == Phase.HELD:  # the upload it waits for (IMAGE=pending:<name>)
            await self.holds.fill(job, dict(fields), list(files), image_name)
            return
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
        model_id, params, priority, values = self._check(merged, have_files)
        identity = job.info.get("input") if isinstance(job.info.get("input"), dict) else None
        if "image" in files:
            staged = self._staged(job_id)
            await self._check_image(staged)
            identity = await in_thread(
                self._identify,
                job_id,
                staged,
                image_name or (identity or {}).get("filename"),
                None,
                None,
                record=self._staged_identity(job_id),
            )
        inputs = {"image": identity["sha256"]} if identity and "sha256" in identity else {}
        if not await in_thread(
            self.store.replace_parameters,
            job_id,
            params,
            priority=priority,
            model_id=model_id,
            cache_key=computation_key(inputs, values) if inputs else None,
            # an IMAGE sent to a job created waiting for it: it waits no more
            info={**{k: v for k, v in job.info.items() if k != "held"}, "input": identity}
            if identity
            else None,
            image_name=identity.get("filename") if identity else None,
        ):
            raise PhaseConflict(f"job {job_id} left PENDING; parameters were not changed")
        changed = ", ".join(sorted({*fields, *files}))
        await in_thread(self._journal, job_id, f"parameters changed: {changed}")

    def _destruction_changed(self) -> None:
        if self.on_destruction_change is not None:
            self.on_destruction_change()

    # -- the event stream ----------------------------------------------------------------

    def job_changed(self, job_id: str) -> None:
        """A job's row may have changed (JobEvents calls this for every notification): its
        phase is read and, if it moved, published on the feed. Reads are coalesced: one at a
        time per job, and one more if it changed again meanwhile."""
        if job_id in self._announcing:
            self._announce_again.add(job_id)
            return
        self._announcing.add(job_id)
        task = asyncio.get_running_loop().create_task(self._announce(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _announce(self, job_id: str) -> None:
        try:
            while True:
                self._announce_again.discard(job_id)
                try:
                    cached = self.store.cached(job_id)
                    job = cached if cached is not None else await in_thread(self.store.get, job_id)
                except JobNotFound:
                    self._seen.pop(job_id, None)  # deleted: _destroy published it
                else:
                    known = self._seen.pop(job_id, None)
                    self._seen[job_id] = (job.owner, job.phase.value)
                    if len(self._seen) > FEED_MEMORY:
                        self._seen.popitem(last=False)
                    if known is None or known[1] != job.phase.value:
                        data = self._event_data(job)
                        self.feed.publish("phase", job_id, job.owner, data)
                        if job.phase in FINAL_PHASES and self.scheduler.active:
                            self._call_webhook(job, data)
                if job_id not in self._announce_again:
                    return
        except Exception:  # a failed read must not end the feed; the next change retries
            log.exception("publishing the change of job %s failed", job_id)
        finally:
            self._announcing.discard(job_id)

    def _event_data(self, job: Job) -> dict[str, Any]:
        data: dict[str, Any] = {
            "job_id": job.job_id,
            "phase": job.phase.value,
            "run_id": job.run_id,
            "image": job.image_name,
            "model_id": job.model_id,
            "progress": self._with_queue_place(job).info.get("progress")
            if job.phase in (Phase.QUEUED, Phase.EXECUTING)
            else None,
            "time": _now_iso(),
        }
        if job.phase == Phase.COMPLETED:
            data["sources"] = job.info.get("n_sources")
            if "cached_from" in job.info:
                data["cached_from"] = job.info["cached_from"]
        if job.error is not None:
            data["error"] = job.error.message
        return data

    def _call_webhook(self, job: Job, data: dict[str, Any]) -> None:
        """The job's NOTIFY webhook, if it has one and its host is still allowed (the
        leading server calls it; in the background: a slow receiver delays nothing)."""
        url = job.parameter_values().get("notify")
        if not url:
            return
        try:
            check_webhook(url, self.settings.webhook_hosts)
        except ParameterError as exc:
            log.warning("job %s: webhook not called: %s", job.job_id, exc.message)
            return
        base = self.settings.base_url
        note = {**data, "href": f"{base.rstrip('/')}/jobs/{job.job_id}" if base else None}
        self.webhooks.send(url, note)

    def progress_changed(self, job_id: str, progress: dict[str, Any]) -> None:
        """The scheduler's news of a running job: published on the feed as it comes (the
        store gets it at most once a second, from the scheduler)."""
        seen = self._seen.get(job_id)
        if seen is not None:
            owner = seen[0]
        else:
            job = self.store.cached(job_id)
            if job is None:
                return  # unknown here yet: its phase event (being read) comes first
            owner = job.owner
        self.feed.publish(
            "progress",
            job_id,
            owner,
            {
                "job_id": job_id,
                "phase": (
                    Phase.QUEUED if progress.get("stage") == "queued" else Phase.EXECUTING
                ).value,
                "progress": progress,
                "time": _now_iso(),
            },
        )

    async def close(self) -> None:
        """Stop the feed's pending reads and the webhooks still trying (at shutdown)."""
        await self.webhooks.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _now_iso() -> str:
    return utcnow().isoformat(timespec="milliseconds").replace("+00:00", "Z")
