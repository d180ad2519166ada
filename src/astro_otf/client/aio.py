"""The asynchronous face of the client, for asyncio programs (dashboards, notebooks, web
back ends) that must not block their event loop while a job uploads or a WAIT blocks.

Each call runs the synchronous :class:`~astro_otf.client.api.OTFClient` in a worker thread
(``asyncio.to_thread``): one implementation of the protocol (303s, WAIT, retries on 503 with
Retry-After, streamed uploads, bearer token), so the two faces cannot drift apart. httpx's
client is safe to share between threads, so concurrent calls use one connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from astro_otf.client.api import Job, JobSummary, OTFClient, SavedResult
from astro_otf.client.events import Event


class AsyncOTFClient:
    """``await``-able versions of :class:`OTFClient`'s calls, with the same arguments."""

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self.sync = OTFClient(url, token, **options)

    @property
    def url(self) -> str:
        return self.sync.url

    async def aclose(self) -> None:
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
        return await asyncio.to_thread(
            functools.partial(
                self.sync.submit, image, params, run, run_id, progress, nocache=nocache
            )
        )

    async def upload(
        self, path: Path, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.upload, path, progress)

    async def uploads(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.sync.uploads)

    async def upload_info(self, upload_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.upload_info, upload_id)

    async def delete_upload(self, upload_id: str) -> None:
        await asyncio.to_thread(self.sync.delete_upload, upload_id)

    async def log(self, job_id: str, tail: int | None = None) -> str:
        return await asyncio.to_thread(self.sync.log, job_id, tail)

    async def quote(self, job_id: str) -> datetime | None:
        return await asyncio.to_thread(self.sync.quote, job_id)

    async def events(
        self,
        last_event_id: str | None = None,
        jobs: Sequence[str] | None = None,
        **options: Any,
    ) -> AsyncIterator[Event]:
        """The event stream (see :meth:`OTFClient.events`) as an async iterator: a thread
        reads the stream, the event loop stays free. Leaving the ``async for`` (or
        closing the iterator) closes the stream."""
        stream = self.sync.events(last_event_id, jobs, **options)
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

    async def job(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.sync.job, job_id)

    async def jobs(
        self,
        phases: Sequence[str] | None = None,
        after: datetime | str | None = None,
        last: int | None = None,
        *,
        run_id: str | Sequence[str] | None = None,
        image: str | Sequence[str] | None = None,
    ) -> list[JobSummary]:
        return await asyncio.to_thread(
            functools.partial(self.sync.jobs, phases, after, last, run_id=run_id, image=image)
        )

    async def wait(self, job_id: str, timeout: float | None = None, poll_wait: int = 60) -> Job:
        return await asyncio.to_thread(self.sync.wait, job_id, timeout, poll_wait)

    async def run(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.sync.run, job_id)

    async def abort(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.sync.abort, job_id)

    async def delete(self, job_id: str) -> None:
        await asyncio.to_thread(self.sync.delete, job_id)

    async def rerun(
        self,
        job_id: str,
        overrides: Mapping[str, Any] | None = None,
        run: bool = True,
        run_id: str | None = None,
    ) -> str:
        return await asyncio.to_thread(self.sync.rerun, job_id, overrides, run, run_id)

    async def result(self, job_id: str, result_id: str = "result") -> bytes:
        return await asyncio.to_thread(self.sync.result, job_id, result_id)

    async def download_result(self, job_id: str, result_id: str, dest: Path) -> int:
        return await asyncio.to_thread(self.sync.download_result, job_id, result_id, dest)

    async def save_result(self, job_id: str, result_id: str, dest: Path) -> SavedResult:
        return await asyncio.to_thread(self.sync.save_result, job_id, result_id, dest)

    async def provenance(self, job_id: str, fmt: str = "json") -> bytes:
        return await asyncio.to_thread(self.sync.provenance, job_id, fmt)

    async def provenance_document(self, job_id: str, fmt: str = "json") -> tuple[bytes, str | None]:
        return await asyncio.to_thread(self.sync.provenance_document, job_id, fmt)

    async def error(self, job_id: str) -> str:
        return await asyncio.to_thread(self.sync.error, job_id)

    async def models(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.models)

    async def model(self, model_id: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.model, model_id)

    async def metrics(self) -> str:
        return await asyncio.to_thread(self.sync.metrics)

    async def health(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.health)

    async def ready(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.ready)
