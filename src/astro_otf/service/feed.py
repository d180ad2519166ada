"""The event stream behind ``GET /jobs/events``: phase and progress changes of jobs, kept in
a short ring so that a client that reconnects with ``Last-Event-ID`` misses nothing.

Why a feed of its own rather than polling the store: a page or a dashboard following fifty
jobs would otherwise read all fifty every second. Events are published in the event loop's
thread (by the service when a phase moves, by the scheduler when a worker reports progress)
and each subscriber waits on one asyncio.Event: nothing is polled.

Event ids are ``<boot>-<n>``: ``boot`` changes at each start of the server, so an id from an
earlier run (whose events are gone) is recognised and answered with a ``reset`` event, the
sign for a client to read the job list again.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FeedEvent", "JobFeed"]

#: Events kept for clients that reconnect (a few minutes of a busy service).
KEEP_EVENTS = 4096
#: The most subscribers at once (each holds a connection); more are refused with 503.
MAX_SUBSCRIBERS = 256


@dataclass(frozen=True)
class FeedEvent:
    """One change of a job as the feed sends it: ``number`` orders the feed, ``owner``
    decides who may see it, ``data`` is the event's JSON body."""

    number: int
    kind: str  # "phase", "progress", "deleted"; "reset" is made for one subscriber only
    job_id: str
    owner: str | None
    data: dict[str, Any] = field(default_factory=dict)


class JobFeed:
    """A ring of recent job events and the subscribers waiting for the next one.
    Every method must be called from the event loop's thread."""

    def __init__(self, keep: int = KEEP_EVENTS) -> None:
        self.boot = secrets.token_hex(4)
        self._events: deque[FeedEvent] = deque(maxlen=keep)
        self._next = 1
        self._changed = asyncio.Event()
        self.subscribers = 0

    def event_id(self, event: FeedEvent) -> str:
        """The SSE id of ``event``, which a client gives back as ``Last-Event-ID``."""
        return f"{self.boot}-{event.number}"

    def publish(self, kind: str, job_id: str, owner: str | None, data: dict[str, Any]) -> None:
        """Append an event (``phase``, ``progress`` or ``deleted``) of ``job_id`` to the ring
        and wake every subscriber."""
        self._events.append(FeedEvent(self._next, kind, job_id, owner, data))
        self._next += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def cursor(self) -> str:
        """The id of the newest event (``<boot>-0`` before any): a stream that starts from it
        gets every event published from now on. Taken when a request is answered, before its
        response's headers go out: a client that reads a job's state once its stream is open
        then misses no change in between."""
        return f"{self.boot}-{self._next - 1}"

    def _position(self, last_event_id: str | None) -> int | None:
        """The number of the first event to send after ``last_event_id``; None when the
        events after it are gone (another boot, or fallen out of the ring)."""
        if last_event_id is None or not last_event_id.strip():
            return self._next
        boot, _, number = last_event_id.strip().partition("-")
        if boot != self.boot or not number.isdigit():
            return None
        first = int(number) + 1
        if first > self._next:  # from the future: not from this feed
            return None
        oldest = self._events[0].number if self._events else self._next
        return first if first >= oldest else None

    async def follow(
        self,
        owner: str | None,
        *,
        check_owner: bool,
        last_event_id: str | None = None,
        jobs: Collection[str] = (),
        keep_alive: float = 15.0,
    ) -> AsyncIterator[FeedEvent | None]:
        """The events for ``owner``'s jobs (all jobs when not ``check_owner``), from after
        ``last_event_id``; ``None`` every ``keep_alive`` seconds without one (the caller sends
        a comment, so that proxies and clients see the connection alive)."""
        position = self._position(last_event_id)
        if position is None:
            yield FeedEvent(self._next - 1, "reset", "", owner, {})
            position = self._next
        wanted = set(jobs)
        while True:
            changed = self._changed
            if self._events and self._events[0].number > position:  # a slow reader lost some
                yield FeedEvent(self._next - 1, "reset", "", owner, {})
                position = self._next
            pending = [e for e in self._events if e.number >= position]
            for event in pending:
                position = event.number + 1
                if check_owner and event.owner != owner:
                    continue
                if wanted and event.job_id not in wanted:
                    continue
                yield event
            if pending:
                continue
            try:
                await asyncio.wait_for(changed.wait(), keep_alive)
            except TimeoutError:
                yield None
