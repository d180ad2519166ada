"""The reaper: deletes each job and its folder when its destruction time comes.

It sleeps until the earliest destruction time in the store (or at most an hour), and is woken
early when a destruction time changes, so a job is removed within moments of its time. Each
pass also removes the stored uploads whose time is up (within the hour).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from astro_otf.service.jobs import JobService
from astro_otf.service.lifecycle import utcnow
from astro_otf.service.threads import in_thread

__all__ = ["Reaper"]

log = logging.getLogger(__name__)

MAX_SLEEP = 3600.0


class Reaper:
    """Removes each job (and the stored uploads) whose time is up: one task in the event
    loop."""

    def __init__(self, service: JobService) -> None:
        self.service = service
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        service.on_destruction_change = self.wake

    def wake(self) -> None:
        """A destruction time changed: look again now."""
        self._wake.set()

    def start(self) -> None:
        """Start the reaper's task (in the running event loop)."""
        self._task = asyncio.create_task(self._loop(), name="otf-reaper")

    async def stop(self) -> None:
        """Stop the reaper's task and wait for it."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def alive(self) -> bool:
        """Whether the reaper's task runs (health check)."""
        return self._task is not None and not self._task.done()

    async def _loop(self) -> None:
        while True:
            try:
                removed = await self.service.destroy_expired()
                if removed:
                    log.info("reaper removed %d expired job(s)", removed)
                if self.service.uploads is not None:
                    gone = await self.service.uploads.expire()
                    if gone:
                        log.info("reaper removed %d expired upload(s)", gone)
                upcoming = await in_thread(self.service.store.next_destruction)
            except Exception:
                log.exception("reaper pass failed; retrying in 60 s")
                upcoming = None
                delay = 60.0
            else:
                delay = MAX_SLEEP
                if upcoming is not None:
                    delay = min(max((upcoming - utcnow()).total_seconds(), 0.0), MAX_SLEEP)
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
