"""Jobs that wait for their data (UWS phase HELD).

A job may name an input that is not there yet: a file of a dataset still to be copied in
(``IMAGE=dataset:<name>/<path>`` with ``HOLD``), or an upload to come (``IMAGE=pending:<name>``,
completed by ``POST /jobs/{id}/parameters`` with the file). Sent RUN, it is HELD, and it is
queued the moment its data arrives: an upload moves it at once (whichever replica receives
it); a dataset file is seen by one file-system watcher per dataset folder (watchfiles),
shared by every job waiting there, started when the first job waits and stopped when none
does, so that no process polls per job. A file still being written (fewer bytes than its
FITS header declares) is not taken. A job whose hold deadline (``HOLD``, capped at its
destruction time) passes first ends in ERROR saying what it waited for, since when, and what
to do; one timer serves every deadline, as the reaper's plan does.

Only the leading server (the one that runs jobs) watches folders and deadlines; at startup it
re-arms every HELD job, and a file that arrived while no server ran starts its job at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchfiles import awatch

from astro_otf.domain.errors import JobNotFound, ParameterError, PhaseConflict
from astro_otf.domain.job import ErrorSummary, ErrorType, Job, computation_key
from astro_otf.domain.phases import Phase
from astro_otf.imaging.identity import sanitise_filename
from astro_otf.service.datasets import DATASET_PREFIX, DatasetFile, Datasets, incomplete
from astro_otf.service.lifecycle import utcnow
from astro_otf.service.threads import in_thread
from astro_otf.store.repository import Arrival

if TYPE_CHECKING:
    from astro_otf.service.jobs import JobService

__all__ = ["Holds", "is_held_ref", "parse_hold"]

log = logging.getLogger(__name__)

PENDING_PREFIX = "pending:"
#: The longest the deadline timer sleeps (it is woken by an earlier deadline anyway).
MAX_SLEEP = 3600.0
#: watchfiles: ms without change before a batch is yielded, and most ms a batch may gather
#: (a job starts well within a second of its file's last write).
WATCH_STEP_MS = 50
WATCH_DEBOUNCE_MS = 300
#: Seconds between tries to watch a dataset folder that does not exist (yet).
RETRY_S = 5.0


def is_held_ref(ref: str) -> bool:
    """Whether an IMAGE value names data that may have to be waited for."""
    return ref.strip().lower().startswith((DATASET_PREFIX, PENDING_PREFIX))


def parse_hold(text: str, now: datetime) -> datetime:
    """HOLD: a number of seconds from now, or an ISO-8601 time (UTC unless it says)."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds <= 0:
            raise ParameterError("hold", f"{text[:64]!r}: give a positive number of seconds")
        return now + timedelta(seconds=min(seconds, 10 * 365 * 86400))
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ParameterError(
            "hold",
            f"{text[:64]!r} is neither a number of seconds nor an ISO-8601 time "
            "(e.g. 3600, or 2026-11-22T10:00:00Z)",
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    if when <= now:
        raise ParameterError("hold", f"{text[:64]!r} is in the past: give a later time")
    return when


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_iso(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass
class Taken:
    """What a job's IMAGE reference gave at creation: the image (already in the job's
    inputs) with what to record of its origin, or what it waits for."""

    image_name: str | None = None
    source: dict[str, Any] | None = None
    held: dict[str, Any] | None = None
    until: datetime | None = None


@dataclass
class Wait:
    """A HELD job the leader watches: the dataset file it waits for (None for an upload)
    and when its wait ends."""

    job_id: str
    path: Path | None
    root: Path | None
    until: datetime | None


class Holds:
    """The policy of waiting jobs (used by JobService) and, on the leading server, the
    watchers and the deadline timer."""

    def __init__(self, service: JobService, datasets: Datasets) -> None:
        self.service = service
        self.datasets = datasets
        self.active = False
        self._waits: dict[str, Wait] = {}
        self._watchers: dict[Path, tuple[asyncio.Task[None], asyncio.Event]] = {}
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._arriving: set[str] = set()
        service.events.listeners.append(self._notified)

    # -- creation and RUN ------------------------------------------------------------------

    async def take(self, job_id: str, ref: str, hold: str | None) -> Taken:
        """An IMAGE of ``dataset:`` or ``pending:``: the dataset file linked into the job's
        inputs when it is there and complete; else what the job waits for (only when the
        client asked to wait: HOLD, or ``pending:``)."""
        settings = self.service.settings
        now = utcnow()
        destruction = now + timedelta(days=settings.default_destruction_days)
        if ref.strip().lower().startswith(PENDING_PREFIX):
            name = ref.strip()[len(PENDING_PREFIX) :].strip()
            if not name or len(name) > 255 or any(ord(c) < 32 for c in name):
                raise ParameterError(
                    "image", "pending:<name> needs a name for the file to come (1-255 characters)"
                )
            default = now + timedelta(seconds=settings.pending_hold_seconds)
            until = parse_hold(hold, now) if hold is not None else default
            return self._waiting(
                "upload", ref.strip(), sanitise_filename(name), now, until, destruction
            )
        found = self.datasets.resolve(ref)
        why = await in_thread(incomplete, found.path)
        if why is None:
            await in_thread(self.service.prepare, job_id)
            await self._link(job_id, found)
            return Taken(image_name=found.path.name, source=_source(found))
        if hold is None:
            raise ParameterError(
                "image",
                f"{found.ref!r} cannot be taken: {why}. Give HOLD=<seconds or ISO-8601 time> "
                "to wait for it",
            )
        until = parse_hold(hold, now)
        return self._waiting("dataset", found.ref, found.path.name, now, until, destruction)

    @staticmethod
    def _waiting(
        kind: str, ref: str, name: str, now: datetime, until: datetime, destruction: datetime
    ) -> Taken:
        reason = "HOLD"
        if until >= destruction:
            until, reason = destruction, "DESTRUCTION"
        held = {
            "kind": kind,
            "ref": ref,
            "filename": name,
            "since": _iso(now),
            "until": _iso(until),
            "deadline": reason,
        }
        return Taken(image_name=name, held=held, until=until)

    async def cap(self, job: Job, destruction: datetime) -> None:
        """A HELD job's destruction moved before the end of its wait: the wait ends then,
        in ERROR saying so, rather than with the job deleted unannounced."""
        held = job.info.get("held")
        until = _parse_iso(held.get("until")) if isinstance(held, dict) else None
        if not isinstance(held, dict) or until is None or until <= destruction:
            return
        held = {**held, "until": _iso(destruction), "deadline": "DESTRUCTION"}
        moved = await in_thread(
            self.service.store.set_hold_until,
            job.job_id,
            destruction,
            info={**job.info, "held": held},
        )
        if moved:
            self.service.events.notify(job.job_id)
            self.watch_soon(job.job_id)

    async def _link(self, job_id: str, found: DatasetFile) -> None:
        from astro_otf.service.jobs import UPLOAD_NAMES, _copy

        target = self.service.folders.input_file(job_id, UPLOAD_NAMES["image"])

        def link() -> None:
            target.unlink(missing_ok=True)
            _copy(found.path, target)

        await in_thread(link)

    async def run(self, job: Job) -> None:
        """RUN of a PENDING job created waiting: queued if its data is there now, ERROR if
        its wait is already over, else HELD."""
        held = job.info["held"]
        if held.get("kind") == "dataset" and await self._try_dataset(job, Phase.PENDING):
            return
        until = _parse_iso(held.get("until"))
        if until is not None and until <= utcnow():
            await self._expire(job.job_id, Phase.PENDING)
            return
        moved = await in_thread(self.service.store.mark_held, job.job_id, until=until)
        if moved:
            await in_thread(
                self.service._journal, job.job_id, f"RUN: HELD, waiting for {held.get('ref')}"
            )
            self.service.events.notify(job.job_id)
            self.watch_soon(job.job_id)

    # -- arrival ---------------------------------------------------------------------------

    async def _try_dataset(self, job: Job, phase: Phase) -> bool:
        """Take the job's dataset file if it is there and complete; True when the job left
        ``phase`` for it."""
        held = job.info["held"]
        try:
            found = self.datasets.resolve(str(held.get("ref")))
        except ParameterError as exc:  # the dataset was removed from the configuration
            log.warning("HELD job %s: %s", job.job_id, exc.message)
            return False
        if await in_thread(incomplete, found.path) is not None:
            return False
        if job.job_id in self._arriving:
            return True
        self._arriving.add(job.job_id)
        try:
            await self._link(job.job_id, found)
            path = self.service.folders.input_file(job.job_id, "image.fits")
            identity = await in_thread(
                self.service._identify,
                job.job_id,
                path,
                found.path.name,
                None,
                None,
                source=_source(found),
            )
            return await self.arrive(job, phase, identity)
        finally:
            self._arriving.discard(job.job_id)

    async def fill(
        self, job: Job, fields: dict[str, str], files: list[str], image_name: str | None
    ) -> None:
        """``POST /jobs/{id}/parameters`` with IMAGE to a HELD job waiting for that upload:
        the file is checked, takes its place, and the job is queued at once."""
        held = job.info.get("held") or {}
        if held.get("kind") != "upload" or "image" not in files or fields:
            raise PhaseConflict(
                f"job {job.job_id} is HELD, waiting for "
                f"{held.get('ref', 'its data')}; only "
                + (
                    "the IMAGE file it waits for can be posted now"
                    if held.get("kind") == "upload"
                    else "the dataset file can start it (copy it into the dataset)"
                )
            )
        service = self.service
        staged = service._staged(job.job_id)
        await service._check_image(staged)
        identity = await in_thread(
            service._identify,
            job.job_id,
            staged,
            image_name or held.get("filename"),
            None,
            None,
            record=service._staged_identity(job.job_id),
        )
        await in_thread(service.commit_staged_upload, job.job_id)
        if not await self.arrive(job, Phase.HELD, identity):
            raise PhaseConflict(f"job {job.job_id} left HELD; its IMAGE was not taken")

    async def arrive(self, job: Job, phase: Phase, identity: dict[str, Any]) -> bool:
        """The job's data is in place (``identity`` says what it is): COMPLETED at once with
        the results of a completed job that computed the same thing, else QUEUED. False when
        the job had left ``phase`` meanwhile."""
        service = self.service
        _, _, _, values = service._check(job.parameter_values(), ["image"])
        held = job.info.get("held") or {}
        info = {k: v for k, v in job.info.items() if k != "held"}
        info["input"] = identity
        info["waited"] = {
            "ref": held.get("ref"),
            "since": held.get("since"),
            "arrived": _iso(utcnow()),
        }
        ready = Job(
            **{
                **job.__dict__,
                "info": info,
                "image_name": identity.get("filename"),
                "cache_key": computation_key({"image": identity["sha256"]}, values),
            }
        )
        arrival = Arrival(ready.image_name, ready.cache_key)
        reusable = await service._reusable(ready)
        now = utcnow()
        if reusable is not None:
            found, reused_info = reusable
            moved = await in_thread(
                service.store.mark_reused,
                job.job_id,
                [phase],
                list(found.results),
                info=reused_info,
                at=now,
                arrival=arrival,
            )
            if not moved:
                await in_thread(service.folders.clear_results, job.job_id)
        else:
            async with service._queue_lock:  # taken before: the queue's room is not checked
                moved = await in_thread(
                    service.store.mark_queued,
                    job.job_id,
                    [phase],
                    queue_time=now,
                    quote=service.scheduler.estimate_end(ready),
                    info=info,
                    arrival=arrival,
                )
        if not moved:
            return False
        await in_thread(
            service._journal,
            job.job_id,
            f"{held.get('ref')} arrived ({identity.get('bytes')} bytes, sha256 "
            f"{identity['sha256'][:12]}...): "
            + ("COMPLETED from reused results" if reusable else "queued"),
        )
        self.forget(job.job_id)
        service.events.notify(job.job_id)
        service.scheduler.wake()
        log.info(
            "job %s: its data arrived (%s); %s",
            job.job_id,
            held.get("ref"),
            "reused" if reusable else "queued",
        )
        return True

    async def _expire(self, job_id: str, phase: Phase = Phase.HELD) -> None:
        """The job's wait is over before its data came: ERROR, saying why."""
        service = self.service
        try:
            job = await in_thread(service.store.get, job_id)
        except JobNotFound:
            self.forget(job_id)
            return
        held = job.info.get("held") or {}
        if (
            held.get("kind") == "dataset"
            and job.phase == phase
            and await self._try_dataset(job, phase)  # it came at the last moment
        ):
            return
        message = self._expiry_message(job)
        moved = await in_thread(
            service.store.mark_failed,
            job_id,
            [phase],
            ErrorSummary(ErrorType.FATAL, message),
            end_time=utcnow(),
        )
        self.forget(job_id)
        if moved:
            await in_thread(service._journal, job_id, f"ERROR: {message}")
            service.events.notify(job_id)
            log.info("job %s: its wait ended before its data came", job_id)

    def _expiry_message(self, job: Job) -> str:
        held = job.info.get("held") or {}
        ref, since, until = held.get("ref"), held.get("since"), held.get("until")
        deadline = (
            "its destruction time" if held.get("deadline") == "DESTRUCTION" else "its HOLD deadline"
        )
        if held.get("kind") == "upload":
            return (
                f"IMAGE: the job waited from {since} for its image ({ref}), which was not "
                f"uploaded (POST /jobs/{job.job_id}/parameters with the file as IMAGE) before "
                f"{deadline} {until}; submit the job again and upload the image in time, or "
                "give a longer HOLD"
            )
        why = "was not there"
        try:
            found = self.datasets.resolve(str(ref))
            state = incomplete(found.path)
            if state is not None and found.path.exists():
                why = f"was still incomplete ({state})"
        except ParameterError as exc:
            why = f"could not be looked for ({exc.message})"
        return (
            f"IMAGE: the job waited from {since} for {ref}, which {why} at {deadline} "
            f"{until}; copy the complete file into the dataset (write it under another name, "
            "then rename it) and submit the job again, with a longer HOLD if it needs one"
        )

    # -- the leader's watchers and timer ---------------------------------------------------

    async def start(self) -> None:
        """This server leads: watch every HELD job (a file that arrived while no server
        ran starts its job now)."""
        self.active = True
        if self._timer is None or self._timer.done():
            self._timer = asyncio.create_task(self._deadlines(), name="otf-held-deadlines")
        for job_id, _ in await in_thread(self.service.store.held):
            await self.watch(job_id)

    async def stop(self) -> None:
        """Stop watching for data (every folder watcher and pending check ends)."""
        self.active = False
        me = asyncio.current_task()
        tasks = [t for t, _ in self._watchers.values()] + [t for t in self._tasks if t is not me]
        for _, stop in self._watchers.values():
            stop.set()
        if self._timer is not None:
            tasks.append(self._timer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        self._waits.clear()
        self._timer = None

    def stop_soon(self) -> None:
        """This server no longer leads: another one watches now."""
        self._spawn(self.stop())

    @property
    def waiting(self) -> int:
        """How many HELD jobs this server watches for."""
        return len(self._waits)

    @property
    def watched_folders(self) -> list[Path]:
        """The folders watched now, in order."""
        return sorted(self._watchers)

    def watch_soon(self, job_id: str) -> None:
        """A job became HELD (here or on another replica): watch it, if this server leads."""
        if self.active:
            self._spawn(self.watch(job_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def watch(self, job_id: str) -> None:
        """Watch a HELD job's data and deadline; take its file at once if it is there."""
        if not self.active:
            return
        try:
            job = await in_thread(self.service.store.get, job_id)
        except JobNotFound:
            return
        held = job.info.get("held")
        if job.phase != Phase.HELD or not isinstance(held, dict):
            self.forget(job_id)
            return
        until = _parse_iso(held.get("until"))
        path = root = None
        if held.get("kind") == "dataset":
            try:
                found = self.datasets.resolve(str(held.get("ref")))
                path, root = found.path, found.dataset.root
            except ParameterError as exc:
                log.warning("HELD job %s cannot be watched: %s", job_id, exc.message)
        self._waits[job_id] = Wait(job_id, path, root, until)
        if root is not None and root not in self._watchers:
            stop = asyncio.Event()
            task = asyncio.create_task(self._watch_folder(root, stop), name=f"otf-watch {root}")
            self._watchers[root] = (task, stop)
            log.info("watching dataset folder %s for HELD jobs", root)
        self._wake.set()
        if path is not None:
            await self._try_dataset(job, Phase.HELD)

    def forget(self, job_id: str) -> None:
        """Stop watching for the job's data (it left HELD); a folder no other job waits in
        is no longer watched."""
        wait = self._waits.pop(job_id, None)
        if wait is None or wait.root is None:
            return
        if any(w.root == wait.root for w in self._waits.values()):
            return
        watcher = self._watchers.pop(wait.root, None)
        if watcher is not None:
            watcher[1].set()
            watcher[0].cancel()
            log.info("no job waits in %s any more: not watched", wait.root)

    def _notified(self, job_id: str) -> None:
        """A job changed (here or on another replica): one that left HELD is forgotten."""
        if job_id in self._waits:
            self._spawn(self._recheck(job_id))

    async def _recheck(self, job_id: str) -> None:
        try:
            cached = self.service.store.cached(job_id)
            job = cached if cached is not None else await in_thread(self.service.store.get, job_id)
        except JobNotFound:
            self.forget(job_id)
            return
        if job.phase != Phase.HELD:
            self.forget(job_id)
        else:  # its deadline may have moved (DESTRUCTION set earlier, on another replica)
            await self.watch(job_id)

    async def _watch_folder(self, root: Path, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async for _changes in awatch(
                    root,
                    stop_event=stop,
                    debounce=WATCH_DEBOUNCE_MS,
                    step=WATCH_STEP_MS,
                    recursive=True,
                ):
                    await self._check_folder(root)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the folder is missing, or the watch failed
                log.warning("cannot watch dataset folder %s (%s); retrying", root, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RETRY_S)
                await self._check_folder(root)

    async def _check_folder(self, root: Path) -> None:
        """Something changed under ``root``: each job waiting there whose file is now there
        and complete is queued (a stat and a header read per waiting job)."""
        for wait in [w for w in self._waits.values() if w.root == root]:
            assert wait.path is not None
            if not await in_thread(os.path.exists, wait.path):
                continue
            try:
                job = await in_thread(self.service.store.get, wait.job_id)
            except JobNotFound:
                self.forget(wait.job_id)
                continue
            if job.phase != Phase.HELD:
                self.forget(wait.job_id)
                continue
            try:
                await self._try_dataset(job, Phase.HELD)
            except Exception:
                log.exception("taking the data of HELD job %s failed", wait.job_id)

    async def _deadlines(self) -> None:
        while True:
            try:
                now = utcnow()
                for wait in [w for w in self._waits.values() if w.until and w.until <= now]:
                    await self._expire(wait.job_id)
                upcoming = min((w.until for w in self._waits.values() if w.until), default=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking the deadlines of HELD jobs failed; retrying in 10 s")
                upcoming = utcnow() + timedelta(seconds=10)
            delay = MAX_SLEEP
            if upcoming is not None:
                delay = min(max((upcoming - utcnow()).total_seconds(), 0.0), MAX_SLEEP)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(delay, 0.05))


def _source(found: DatasetFile) -> dict[str, Any]:
    """What the job's identity records of a dataset image's origin."""
    return {"dataset": found.dataset.name, "dataset_path": found.relative}
