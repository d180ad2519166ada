"""In-process notification of job changes, so that a blocking WAIT holds no thread and
returns as soon as the phase moves (no sleep-polling)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["JobEvents"]


class JobEvents:
    """One asyncio.Event per watched job, replaced after each notification.

    Call :meth:`watch` *before* reading the job's state and await the returned event after:
    a change that lands between the read and the await is then not missed.
    Every method must be called from the event loop's thread.
    """

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        #: Called with the job id at each notification (the event feed reads the new phase).
        self.listeners: list[Callable[[str], None]] = []

    def watch(self, job_id: str) -> asyncio.Event:
        """The event set at the job's next change (shared by everyone watching it); see the
        class's docstring for when to call it."""
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        return event

    def notify(self, job_id: str) -> None:
        """The job changed: wake its waiters and tell the listeners."""
        self.forget(job_id)
        for listener in self.listeners:
            listener(job_id)

    def forget(self, job_id: str) -> None:
        """Wake the job's waiters, if any (and leave no watch behind), telling no one else."""
        event = self._events.pop(job_id, None)
        if event is not None:
            event.set()

    @property
    def watched(self) -> int:
        """How many jobs have a watch now (each is dropped when its job next changes)."""
        return len(self._events)
