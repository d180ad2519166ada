"""The asynchronous face of the client, for asyncio programs (dashboards, notebooks, web
back ends) that must not block their event loop while a job uploads or a WAIT blocks.

Each call runs the synchronous :class:`~astro_otf.client.api.OTFClient` in a worker thread
(``asyncio.to_thread``): one implementation of the protocol (303s, WAIT, retries on 503 with
Retry-After, streamed uploads, bearer token), so the two faces cannot drift apart. httpx's
client is safe to share between threads, so concurrent calls use one connection pool.

Every public call of :class:`OTFClient` has an ``async`` twin here with the same parameters,
return type and errors (tests/unit/test_client_parity.py holds it to that). The exceptions,
by nature of asyncio: :meth:`AsyncOTFClient.aclose` stands for ``close``, and
:meth:`AsyncOTFClient.events` gives an async iterator of events instead of an
:class:`~astro_otf.client.events.EventStream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from astro_otf.client.api import Job, JobSummary, OTFClient, SavedResult
from astro_otf.client.events import Event


class AsyncOTFClient:
    """``await``-able versions of :class:`OTFClient`'s calls, with the same arguments.

    ``url``, ``token`` and ``options`` make the :class:`OTFClient` it runs (``sync``);
    :meth:`from_sync` runs one that exists already instead.
    """

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        #: The synchronous client every call runs in a worker thread.
        self.sync = OTFClient(url, token, **options)
        self._owns_sync = True

    @classmethod
    def from_sync(cls, client: OTFClient) -> Self:
        """The asynchronous face of an existing ``client``: same URL, token, retry settings
        and connection pool. :meth:`aclose` leaves ``client`` open (its owner closes it)."""
        self = cls.__new__(cls)
        self.sync = client
        self._owns_sync = False
        return self

    @property
    def url(self) -> str:
        """The service's base URL."""
        return self.sync.url

    async def aclose(self) -> None:
        """Release the connection pool (not that of a client given to :meth:`from_sync`)."""
        if self._owns_sync:
            await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def submit(
        self,
        image: Path | str,
        params: Mapping[str, str] | None = None,
        run: bool = True,
        run_id: str | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        nocache: bool = False,
    ) -> str:
        """Create a job for the FITS file (or ``upload:<id>``) ``image``; its id."""
        return await asyncio.to_thread(
            functools.partial(
                self.sync.submit, image, params, run, run_id, progress, nocache=nocache
            )
        )

    async def upload(
        self, path: Path, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Store a file on the service once, for jobs to name as ``upload:<id>``; its record."""
        return await asyncio.to_thread(self.sync.upload, path, progress)

    async def uploads(self) -> list[dict[str, Any]]:
        """The caller's stored uploads."""
        return await asyncio.to_thread(self.sync.uploads)

    async def upload_info(self, upload_id: str) -> dict[str, Any]:
        """One stored upload's record."""
        return await asyncio.to_thread(self.sync.upload_info, upload_id)

    async def delete_upload(self, upload_id: str) -> None:
        """Remove a stored upload (jobs that used it keep their inputs)."""
        await asyncio.to_thread(self.sync.delete_upload, upload_id)

    async def datasets(self) -> list[dict[str, Any]]:
        """The datasets the service offers (``name``, ``description``, ``pattern``)."""
        return await asyncio.to_thread(self.sync.datasets)

    async def dataset(self, name: str) -> dict[str, Any]:
        """One dataset with its ``images`` (each one's ``ref`` is for :meth:`submit`)."""
        return await asyncio.to_thread(self.sync.dataset, name)

    async def accounting(
        self,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """What was used over a period (``GET /accounting``): the caller's own figures, or
        an operator's choice of ``owner`` (every owner without it)."""
        return await asyncio.to_thread(self.sync.accounting, since, until, owner)

    async def log(self, job_id: str, tail: int | None = None) -> str:
        """The job's log text (its last ``tail`` lines when given)."""
        return await asyncio.to_thread(self.sync.log, job_id, tail)

    async def quote(self, job_id: str) -> datetime | None:
        """When the service expects the job to end (None when it cannot say)."""
        return await asyncio.to_thread(self.sync.quote, job_id)

    async def events(
        self,
        last_event_id: str | None = None,
        jobs: Sequence[str] | None = None,
        *,
        reconnect_delay: float = 1.0,
        max_reconnects: int = 5,
        idle_timeout: float = 60.0,
    ) -> AsyncGenerator[Event, None]:
        """The event stream (see :meth:`OTFClient.events`, same arguments) as an async
        iterator: a thread reads the stream, the event loop stays free. Leaving the
        ``async for`` (or closing the iterator) closes the stream."""
        stream = self.sync.events(
            last_event_id,
            jobs,
            reconnect_delay=reconnect_delay,
            max_reconnects=max_reconnects,
            idle_timeout=idle_timeout,
        )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | BaseException | None] = asyncio.Queue()

        def put(item: Event | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has gone
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def pump() -> None:
            try:
                for event in stream:
                    put(event)
            except BaseException as exc:  # handed to the consumer, raised there
                put(exc)
            finally:
                put(None)

        reader = threading.Thread(target=pump, name="otf-events", daemon=True)
        reader.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.close()

    async def job(self, job_id: str, wait: int | None = None) -> Job:
        """The job's document; with ``wait``, after at most that many seconds in which it
        stays in its active phase (UWS ``WAIT``, blocking a thread, not the loop)."""
        return await asyncio.to_thread(self.sync.job, job_id, wait)

    async def jobs(
        self,
        phases: Sequence[str] | None = None,
        after: datetime | str | None = None,
        last: int | None = None,
        *,
        run_id: str | Sequence[str] | None = None,
        image: str | Sequence[str] | None = None,
    ) -> list[JobSummary]:
        """The job list, optionally by phase, creation time, count, run id or image."""
        return await asyncio.to_thread(
            functools.partial(self.sync.jobs, phases, after, last, run_id=run_id, image=image)
        )

    async def wait(self, job_id: str, timeout: float | None = None, poll_wait: int = 60) -> Job:
        """Until the job leaves the active phases or ``timeout`` seconds pass (UWS WAIT in a
        thread, the loop stays free); the last job seen."""
        return await asyncio.to_thread(self.sync.wait, job_id, timeout, poll_wait)

    async def run(self, job_id: str) -> Job:
        """Start a PENDING job; its document afterwards."""
        return await asyncio.to_thread(self.sync.run, job_id)

    async def abort(self, job_id: str) -> Job:
        """Abort a job; its document afterwards."""
        return await asyncio.to_thread(self.sync.abort, job_id)

    async def delete(self, job_id: str) -> None:
        """Destroy a job and its results."""
        await asyncio.to_thread(self.sync.delete, job_id)

    async def rerun(
        self,
        job_id: str,
        overrides: Mapping[str, Any] | None = None,
        run: bool = True,
        run_id: str | None = None,
    ) -> str:
        """Replay a finished job with its recorded input, model and parameters but for
        ``overrides``; the new job's id."""
        return await asyncio.to_thread(self.sync.rerun, job_id, overrides, run, run_id)

    async def result(self, job_id: str, result_id: str = "result") -> bytes:
        """The bytes of one result (``result`` is the VOTable catalogue)."""
        return await asyncio.to_thread(self.sync.result, job_id, result_id)

    async def copy_result(self, job_id: str, sink: IO[bytes], result_id: str = "result") -> int:
        """Stream one result into the binary file object ``sink``; the byte count. ``sink``
        is written from a worker thread: leave it alone until this returns."""
        return await asyncio.to_thread(self.sync.copy_result, job_id, sink, result_id)

    async def download_result(self, job_id: str, result_id: str, dest: Path) -> int:
        """Stream one result to the file ``dest`` (never left partial); the byte count."""
        return await asyncio.to_thread(self.sync.download_result, job_id, result_id, dest)

    async def save_result(self, job_id: str, result_id: str, dest: Path) -> SavedResult:
        """Like :meth:`download_result`, but say what was written: path, byte count and the
        media type the service gave."""
        return await asyncio.to_thread(self.sync.save_result, job_id, result_id, dest)

    async def provenance(self, job_id: str, fmt: str = "json") -> bytes:
        """The job's provenance document in ``fmt`` (json, xml, provn, svg)."""
        return await asyncio.to_thread(self.sync.provenance, job_id, fmt)

    async def provenance_document(self, job_id: str, fmt: str = "json") -> tuple[bytes, str | None]:
        """:meth:`provenance` and the media type the service gave it."""
        return await asyncio.to_thread(self.sync.provenance_document, job_id, fmt)

    async def error(self, job_id: str) -> str:
        """The error message of a job that ended in ERROR."""
        return await asyncio.to_thread(self.sync.error, job_id)

    async def models(self) -> dict[str, Any]:
        """The model registry: ``{"default": id, "models": [description, ...]}``."""
        return await asyncio.to_thread(self.sync.models)

    async def model(self, model_id: str, version: str | None = None) -> dict[str, Any]:
        """One model's description: of its default version, or of ``version``."""
        return await asyncio.to_thread(self.sync.model, model_id, version)

    async def metrics(self) -> str:
        """The Prometheus exposition text of ``/metrics``."""
        return await asyncio.to_thread(self.sync.metrics)

    async def health(self) -> dict[str, Any]:
        """Liveness: ``{"status": "ok", "version": ...}``."""
        return await asyncio.to_thread(self.sync.health)

    async def ready(self) -> dict[str, Any]:
        """Readiness: the server's checks plus ``"ready"`` (a bool)."""
        return await asyncio.to_thread(self.sync.ready)
