"""Per-owner quotas: how many jobs one owner may have active, how many bytes its jobs may
hold, and how fast it may create jobs (as OPUS limits the active jobs of each user).

* ``max_active_jobs``: jobs QUEUED, EXECUTING or HELD. A RUN (or a creation with PHASE=RUN)
  beyond it is refused with 429 and a Retry-After from the earliest estimated end (quote)
  of the owner's active jobs. The count is read from the database under the JobService's
  queue lock, so RUNs arriving together cannot overshoot it in one process (with replicas,
  two RUNs landing on two replicas at the same instant may: the lock is per process).
* ``max_stored_bytes``: the owner's live jobs' input images and result files (see
  :mod:`astro_otf.store.usage`). A new job that would go over it is refused with 413:
  waiting does not free storage, deleting jobs does, and the message says so.
* ``job_creation_rate``: jobs per minute, a token bucket holding ``job_creation_burst``
  tokens; a creation without a token is refused with 429 and a Retry-After saying when the
  next token comes. The buckets live in this process's memory: with replicas each one
  allows the rate (an operator divides it by the number of replicas).

Operators are not exempt: their jobs take the same workers and disk. In anonymous mode every
caller is the same owner (None), so the quotas are the whole service's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from astro_otf.config import Settings
from astro_otf.domain.errors import QuotaExceeded, StorageQuotaExceeded
from astro_otf.service.threads import in_thread
from astro_otf.store.usage import UsageStore

__all__ = ["Quotas", "TokenBucket"]

#: Retry-After (seconds) for a refused RUN when no active job of the owner has an estimated
#: end in the future.
ACTIVE_RETRY_S = 5
#: The longest Retry-After a refused RUN is given (a quote hours away is no useful advice).
MAX_RETRY_S = 3600
#: Buckets kept before the full (idle) ones are forgotten.
MAX_BUCKETS = 10_000


@dataclass
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` tokens a second; one token per job created."""

    rate: float
    burst: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: int, now: float) -> TokenBucket:
        """A bucket holding all its ``burst`` tokens at ``now`` (an owner not seen before)."""
        return cls(rate, burst, float(burst), now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is there now); takes nothing."""
        self._refill(now)
        if self.tokens >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> float:
        """Take a token: 0.0 when taken, else the seconds until one is there (nothing
        taken)."""
        wait = self.wait(now)
        if wait == 0.0:
            self.tokens -= 1.0
        return wait

    def is_full(self, now: float) -> bool:
        """Whether the bucket is back to ``burst`` tokens at ``now``: its owner has been idle
        long enough for the bucket to be forgotten without changing any answer."""
        self._refill(now)
        return self.tokens >= self.burst


def _mib(size: int) -> str:
    return f"{size} bytes ({size / 1024**2:.1f} MiB)"


def _who(owner: str | None) -> str:
    return "anonymous callers (who share one quota)" if owner is None else f"owner {owner}"


class Quotas:
    """The checks, and each owner's standing for ``GET /accounting``."""

    def __init__(
        self,
        settings: Settings,
        usage: UsageStore,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.usage = usage
        self._clock = clock
        self._buckets: dict[str | None, TokenBucket] = {}

    # -- job creation rate ---------------------------------------------------------------

    @property
    def rate_per_s(self) -> float:
        """The configured job creation rate, per second (it is set per minute)."""
        return self.settings.job_creation_rate / 60.0

    def _bucket(self, owner: str | None, now: float) -> TokenBucket:
        bucket = self._buckets.get(owner)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets = {k: b for k, b in self._buckets.items() if not b.is_full(now)}
            bucket = self._buckets[owner] = TokenBucket.full(
                self.rate_per_s, self.settings.job_creation_burst, now
            )
        return bucket

    def check_rate(self, owner: str | None, *, take: bool) -> None:
        """Refuse (429) a job creation beyond ``job_creation_rate``; with ``take`` the
        creation uses a token, without it only looks (before an upload streams in)."""
        if self.settings.job_creation_rate <= 0:
            return
        now = self._clock()
        bucket = self._bucket(owner, now)
        wait = bucket.take(now) if take else bucket.wait(now)
        if wait > 0:
            retry = math.ceil(wait)
            raise QuotaExceeded(
                f"too many jobs created: {_who(owner)} may create "
                f"{self.settings.job_creation_rate:g} job(s) per minute "
                f"(job_creation_rate), {self.settings.job_creation_burst} at once "
                f"(job_creation_burst); the next job can be created in {retry} s",
                retry_after=retry,
            )

    def rate_left(self, owner: str | None) -> float | None:
        """Jobs the owner may create at once now (None: no rate limit)."""
        if self.settings.job_creation_rate <= 0:
            return None
        now = self._clock()
        bucket = self._buckets.get(owner) or TokenBucket.full(
            self.rate_per_s, self.settings.job_creation_burst, now
        )
        bucket.wait(now)
        return math.floor(bucket.tokens)

    # -- active jobs ---------------------------------------------------------------------

    async def check_active(self, owner: str | None) -> None:
        """Refuse (429) one more active job beyond ``max_active_jobs``. Call it under the
        queue lock, with the move to QUEUED in the same critical section."""
        limit = self.settings.max_active_jobs
        if limit <= 0:
            return
        active = await in_thread(self.usage.active_jobs, owner)
        if len(active) < limit:
            return
        now = datetime.now(UTC)
        ends = [q for _, q in active if q is not None and q > now]
        retry = ACTIVE_RETRY_S
        if ends:
            retry = min(MAX_RETRY_S, max(1, math.ceil((min(ends) - now).total_seconds())))
        raise QuotaExceeded(
            f"{_who(owner)} has {len(active)} active job(s) (QUEUED, EXECUTING or HELD), "
            f"the most allowed (max_active_jobs = {limit}), so this job is not queued. Try "
            f"again when one of them has ended (in about {retry} s), or abort one",
            retry_after=retry,
        )

    # -- stored bytes --------------------------------------------------------------------

    async def check_storage(self, owner: str | None, adding: int = 0) -> None:
        """Refuse (413) a new job whose ``adding`` bytes of input would take the owner's
        jobs over ``max_stored_bytes`` (with ``adding`` 0: refuse when the owner is at or
        over it already)."""
        limit = self.settings.max_stored_bytes
        if limit <= 0:
            return
        held = (await in_thread(self.usage.stored_bytes, [owner])).get(owner, 0)
        if (held + adding <= limit) if adding else (held < limit):
            return
        new = f" and this job's input takes {_mib(adding)}" if adding else ""
        raise StorageQuotaExceeded(
            f"storage quota: the jobs of {_who(owner)} hold {_mib(held)} of input images and "
            f"results{new}, over the quota of {_mib(limit)} (max_stored_bytes). Delete jobs "
            "you no longer need (DELETE /jobs/{job_id}, or otf delete ID...; their "
            "accounting is kept), then create the job again"
        )

    # -- standing ------------------------------------------------------------------------

    def standing(self, owner: str | None, active: int, stored: int) -> dict[str, Any]:
        """The owner's use of each quota, for ``GET /accounting``."""
        s = self.settings
        return {
            "active_jobs": {"used": active, "limit": s.max_active_jobs or None},
            "stored_bytes": {"used": stored, "limit": s.max_stored_bytes or None},
            "creation_rate": {
                "per_minute": s.job_creation_rate or None,
                "burst": s.job_creation_burst if s.job_creation_rate else None,
                "available": self.rate_left(owner),
            },
        }
