"""Several API replicas on one PostgreSQL database: who runs jobs, and how the others hear
about them.

A site runs more than one ``otf serve`` behind a load balancer, all on one database and one
shared data folder. Any replica takes requests; exactly one, the leader, forms batches and
runs them, so that no job runs twice. Leadership is a PostgreSQL session advisory lock held
by a dedicated connection: when the leader dies its connection closes, the lock is freed, and
the next replica to try (every second) takes over. The new leader first queues again the
jobs the old one left EXECUTING (:func:`astro_otf.service.lifecycle.recover`), then runs the queue.

Every phase change is announced with NOTIFY on :data:`JOB_CHANNEL` (see the store). Each
replica LISTENs: a change wakes the replica's WAIT requests on that job, a newly QUEUED job
wakes the leader's scheduler, and an ABORT or DELETE received by another replica stops the
leader's run of that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from astro_otf.store.repository import JOB_CHANNEL

__all__ = ["Replicas"]

log = logging.getLogger(__name__)

#: The advisory lock whose holder leads (any fixed 64-bit number; "otf-lead").
LEADER_LOCK = 0x6F74662D6C656164
#: Seconds between a follower's tries for the lock and the leader's checks of its connection.
RETRY_S = 1.0


class Replicas:
    """Leader election and change notifications for the replicas sharing one database."""

    def __init__(
        self,
        dsn: str,
        *,
        on_change: Callable[[str, str], None],
        on_lead: Callable[[], Awaitable[None]],
        on_follow: Callable[[], None],
    ) -> None:
        self.dsn = dsn
        self.on_change = on_change
        self.on_lead = on_lead
        self.on_follow = on_follow
        self.leader = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start listening for job changes and trying for the lead (tasks in the event loop,
        both retrying every second after a failure)."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="otf-listen"),
            asyncio.create_task(self._lead(), name="otf-lead"),
        ]

    async def stop(self) -> None:
        """Stop listening and leading; closing the leader's connection frees the lock for
        the next replica."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def alive(self) -> bool:
        """True while both background tasks run (``/health/ready``)."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {JOB_CHANNEL}")
                    async for note in conn.notifies():
                        job_id, _, what = note.payload.partition(" ")
                        try:
                            self.on_change(job_id, what)
                        except Exception:
                            log.exception("handling the change %r failed", note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listening for job changes failed (%s); retrying in 1 s", exc)
                await asyncio.sleep(RETRY_S)

    async def _lead(self) -> None:
        conn: Any = None
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                    if not self.leader:
                        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
                        row = await cur.fetchone()
                        if row is not None and row[0]:
                            self.leader = True
                            log.info("this replica leads: it forms batches and runs jobs")
                            await self.on_lead()
                    else:  # still holding it? A lost connection lost the lock too.
                        await conn.execute("SELECT 1")
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if self.leader:
                        log.error("lost the leader's database connection (%s): following", exc)
                        self.leader = False
                        self.on_follow()
                    with contextlib.suppress(Exception):
                        if conn is not None:
                            await conn.close()
                    conn = None
                await asyncio.sleep(RETRY_S)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()  # frees the lock for the next leader
