"""The asynchronous face of the client, for asyncio programs (dashboards, notebooks, web
back ends) that must not block their event loop while a job uploads or a WAIT blocks.

Each call runs the synchronous :class:`~astro_otf.client.api.OTFClient` in a worker thread
(``asyncio.to_thread``): one implementation of the protocol (303s, WAIT, retries on 503 with
Retry-After, streamed uploads, bearer token), so the two faces cannot drift apart. httpx's
client is safe to share between threads, so concurrent calls use one connection pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from astro_otf.client.api import Job, JobSummary, OTFClient


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
        image: Path,
        params: Mapping[str, str] | None = None,
        run: bool = True,
        run_id: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        return await asyncio.to_thread(self.sync.submit, image, params, run, run_id, progress)

    async def job(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.sync.job, job_id)

    async def jobs(
        self,
        phases: Sequence[str] | None = None,
        after: datetime | str | None = None,
        last: int | None = None,
    ) -> list[JobSummary]:
        return await asyncio.to_thread(self.sync.jobs, phases, after, last)

    async def wait(self, job_id: str, timeout: float | None = None, poll_wait: int = 60) -> Job:
        return await asyncio.to_thread(self.sync.wait, job_id, timeout, poll_wait)

    async def run(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.sync.run, job_id)

    async def abort(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.sync.abort, job_id)

    async def delete(self, job_id: str) -> None:
        await asyncio.to_thread(self.sync.delete, job_id)

    async def rerun(self, job_id: str, run: bool = True, run_id: str | None = None) -> str:
        return await asyncio.to_thread(self.sync.rerun, job_id, run, run_id)

    async def result(self, job_id: str, result_id: str = "result") -> bytes:
        return await asyncio.to_thread(self.sync.result, job_id, result_id)

    async def download_result(self, job_id: str, result_id: str, dest: Path) -> int:
        return await asyncio.to_thread(self.sync.download_result, job_id, result_id, dest)

    async def provenance(self, job_id: str, fmt: str = "json") -> bytes:
        return await asyncio.to_thread(self.sync.provenance, job_id, fmt)

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
