"""A per-job cache of job records and their rendered documents, so that polling clients
(GET /jobs/{id}, /phase) are answered without a database read or a rendering.

It is correct only where every write to the job rows goes through this process's
:class:`~astro_otf.store.repository.JobStore`, which invalidates an entry after each write
commits: the embedded SQLite deployment, where one server holds the data folder's lock and its
workers never write the database. PostgreSQL replicas write the same rows from other
processes and announce only some changes, so there the store runs without a cache.

A read that raced a write must not put the old state back: each reader takes a ticket (the
invalidation clock) before it reads the database, and its record is kept only if the job was
not invalidated after that ticket.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from astro_otf.domain.job import Job

__all__ = ["JobCache"]


class _Entry:
    __slots__ = ("docs", "job")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.docs: dict[str, bytes] = {}


class JobCache:
    """Job records by id (least recently used ones dropped beyond ``capacity``), each with
    the documents rendered from it. The records handed out are shared: callers must not
    change them. Safe to use from any thread."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._clock = 0
        #: job id -> clock value of its latest invalidation (pruned: see _floor)
        self._changed: dict[str, int] = {}
        #: readers whose ticket is older than this may not fill (their job's invalidation
        #: stamp may have been pruned)
        self._floor = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, job_id: str) -> Job | None:
        """The cached record of the job (shared: do not change it), now the most recently
        used; None when it is not cached."""
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None:
                return None
            self._entries.move_to_end(job_id)
            return entry.job

    def ticket(self) -> int:
        """Take before reading a job from the database; give to :meth:`fill` after."""
        with self._lock:
            return self._clock

    def fill(self, job: Job, ticket: int) -> None:
        """Keep ``job`` as read from the database after ``ticket`` was taken, unless it was
        invalidated since (then what was read may already be old)."""
        with self._lock:
            if ticket < self._floor or self._changed.get(job.job_id, -1) > ticket:
                return
            current = self._entries.get(job.job_id)
            if current is not None and current.job == job:
                return  # keep the documents already rendered from it
            self._entries[job.job_id] = _Entry(job)
            self._entries.move_to_end(job.job_id)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def invalidate(self, job_id: str) -> None:
        """The job's row changed (call after the change committed) or is about to."""
        with self._lock:
            self._clock += 1
            self._entries.pop(job_id, None)
            self._changed[job_id] = self._clock
            if len(self._changed) > 4 * self.capacity:
                self._changed.clear()
                self._floor = self._clock

    def document(self, job: Job, key: str, render: Callable[[], bytes]) -> bytes:
        """The document ``key`` rendered from ``job``: rendered once per cached record (and
        every time for a record that is not the cached one)."""
        with self._lock:
            entry = self._entries.get(job.job_id)
            if entry is not None and entry.job is job:
                doc = entry.docs.get(key)
                if doc is not None:
                    return doc
            else:
                entry = None
        doc = render()
        if entry is not None:
            with self._lock:
                if self._entries.get(job.job_id) is entry and len(entry.docs) < 16:
                    entry.docs[key] = doc
        return doc
