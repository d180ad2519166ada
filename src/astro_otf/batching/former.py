"""The batch former: groups QUEUED jobs that can share one model forward pass.

Jobs gather per batch key (model id, version, precision, tile shape). While a worker is idle
every key with a queued job is ready at once: nobody waits for company that may never come.
Only with no idle worker (a caller asking anyway) does a key wait until it reaches
``max_jobs`` jobs or ``max_tiles`` tiles (the memory budget of one forward), or until its
oldest job has waited ``max_wait`` seconds. Among ready keys the former goes round-robin, so
one busy model cannot starve another.

A batch keeps every worker fed: it takes at most its share of its key's queue, about
``ceil(N / workers)`` of the key's N queued jobs (and of their tiles), still bounded by
``max_jobs`` and ``max_tiles``, so that a burst is spread over all the workers rather than
run as one long batch on one of them while the others sit idle. Shares are taken from the
queue as it was when the scheduler's pass began (:meth:`BatchFormer.next_batches`): two idle
workers and 32 queued jobs make two batches of 16; a worker freed while the other is busy
takes half of what waits and leaves the rest for the other. Inside a batch, jobs are taken by
PRIORITY first, then in owner rounds (every owner's first job before anyone's second), then by
age: one owner's thousand jobs do not starve another owner's one.

Pure code: it sees snapshots of the queue and returns decisions; the scheduler does the I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class BatchKey:
    """What jobs must share to run in one forward pass."""

    model_id: str
    version: str
    precision: str
    tile_shape: tuple[int, int]

    def __str__(self) -> str:
        h, w = self.tile_shape
        return f"{self.model_id}/{self.version}/{self.precision}/{h}x{w}"


@dataclass(frozen=True)
class QueuedJob:
    """One QUEUED job as the former sees it: its batch key, owner, priority, age and size."""

    job_id: str
    key: BatchKey
    owner: str | None
    priority: int
    queued_at: float  # seconds, on the scheduler's monotonic clock
    tiles: int
    #: False for apps that run one job at a time (classical finders): such a key is always
    #: ready, and its batch is its first job in fair order (priority, owner rounds, age).
    batchable: bool = True


@dataclass(frozen=True)
class BatchRules:
    """When a key's batch is closed without an idle worker: by job count, by tiles (the memory
    budget of one forward) or by the oldest job's wait."""

    max_jobs: int = 32
    max_tiles: int = 256
    max_wait: float = 0.25  # seconds the oldest job may wait for company

    def __post_init__(self) -> None:
        if self.max_jobs < 1 or self.max_tiles < 1 or self.max_wait < 0:
            raise ValueError(f"invalid batch rules {self}")


@dataclass(frozen=True)
class Batch:
    """The jobs chosen to run together in one forward pass, and what closed the batch."""

    key: BatchKey
    jobs: tuple[QueuedJob, ...]
    reason: str  # "jobs", "tiles", "wait", "idle" or "alone": what closed it

    @property
    def tiles(self) -> int:
        """The tiles of all its jobs: what the forward pass must hold."""
        return sum(j.tiles for j in self.jobs)


@dataclass
class BatchFormer:
    """Chooses the next batches from a snapshot of the queue (see the module's docstring); it
    remembers only its round-robin position among keys."""

    rules: BatchRules = field(default_factory=BatchRules)
    _last_key: BatchKey | None = None  # round-robin position among keys

    def next_batches(
        self, queue: Iterable[QueuedJob], now: float, *, idle: int, workers: int
    ) -> list[Batch]:
        """The batches to start now on ``idle`` idle workers (of ``workers`` in all): at most
        one per idle worker, each holding at most its key's share of the queue as it is now
        (see the module's docstring)."""
        left = list(queue)
        shares = _shares(left, max(1, workers))
        batches: list[Batch] = []
        while len(batches) < idle and left:
            batch = self._next(left, now, idle=idle - len(batches), shares=shares)
            if batch is None:
                break
            batches.append(batch)
            chosen = {j.job_id for j in batch.jobs}
            left = [j for j in left if j.job_id not in chosen]
        return batches

    def next_batch(
        self, queue: Iterable[QueuedJob], now: float, *, idle: int = 0, workers: int = 1
    ) -> Batch | None:
        """The batch to run now, or None if no key is ready yet. With ``idle`` > 0 every key
        with a queued job is ready; ``workers`` sets the batch's share of its key's queue."""
        jobs = list(queue)
        return self._next(jobs, now, idle=idle, shares=_shares(jobs, max(1, workers)))

    def _next(
        self,
        queue: list[QueuedJob],
        now: float,
        *,
        idle: int,
        shares: dict[BatchKey, tuple[int, int]],
    ) -> Batch | None:
        by_key: dict[BatchKey, list[QueuedJob]] = defaultdict(list)
        for job in queue:
            by_key[job.key].append(job)
        ready = {
            key: reason
            for key, jobs in by_key.items()
            if (reason := self._ready(jobs, now, idle)) is not None
        }
        if not ready:
            return None
        key = self._round_robin(sorted(ready))
        self._last_key = key
        jobs = by_key[key]
        if jobs[0].batchable:
            most_jobs, most_tiles = shares.get(key, (self.rules.max_jobs, self.rules.max_tiles))
            chosen = self._fill(jobs, most_jobs, most_tiles)
        else:
            chosen = fair_order(jobs)[:1]
        return Batch(key, tuple(chosen), ready[key])

    def next_deadline(self, queue: Iterable[QueuedJob]) -> float | None:
        """When the earliest waiting key becomes ready by age (for the scheduler's sleep)."""
        oldest: dict[BatchKey, float] = {}
        for job in queue:
            if not job.batchable:
                return min(job.queued_at for job in queue)
            oldest[job.key] = min(oldest.get(job.key, job.queued_at), job.queued_at)
        if not oldest:
            return None
        return min(oldest.values()) + self.rules.max_wait

    def _ready(self, jobs: Sequence[QueuedJob], now: float, idle: int = 0) -> str | None:
        if not jobs[0].batchable:
            return "alone"
        if len(jobs) >= self.rules.max_jobs:
            return "jobs"
        if sum(j.tiles for j in jobs) >= self.rules.max_tiles:
            return "tiles"
        if idle > 0:
            return "idle"  # a worker is idle: waiting for company would only waste it
        if now - min(j.queued_at for j in jobs) >= self.rules.max_wait:
            return "wait"
        return None

    def _round_robin(self, keys: list[BatchKey]) -> BatchKey:
        if self._last_key is None:
            return keys[0]
        after = [k for k in keys if k > self._last_key]
        return after[0] if after else keys[0]

    def _fill(self, jobs: list[QueuedJob], most_jobs: int, most_tiles: int) -> list[QueuedJob]:
        max_jobs = min(self.rules.max_jobs, most_jobs)
        max_tiles = min(self.rules.max_tiles, most_tiles)
        chosen: list[QueuedJob] = []
        tiles = 0
        for job in fair_order(jobs):
            if len(chosen) >= max_jobs:
                break
            if chosen and tiles + job.tiles > max_tiles:
                continue  # a smaller job may still fit
            chosen.append(job)
            tiles += job.tiles
        return chosen


def _shares(queue: Sequence[QueuedJob], workers: int) -> dict[BatchKey, tuple[int, int]]:
    """Each key's share of the queue per worker: ceil(jobs / workers), ceil(tiles / workers)."""
    jobs: dict[BatchKey, int] = defaultdict(int)
    tiles: dict[BatchKey, int] = defaultdict(int)
    for job in queue:
        jobs[job.key] += 1
        tiles[job.key] += job.tiles
    return {key: (math.ceil(jobs[key] / workers), math.ceil(tiles[key] / workers)) for key in jobs}


def fair_order(jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    """Priority first; then each owner's n-th job (oldest first) in round n; then age."""
    per_owner: dict[str | None, list[QueuedJob]] = defaultdict(list)
    for job in sorted(jobs, key=lambda j: (-j.priority, j.queued_at, j.job_id)):
        per_owner[job.owner].append(job)
    rank = {
        job.job_id: (-job.priority, n)
        for owned in per_owner.values()
        for n, job in enumerate(owned)
    }
    return sorted(jobs, key=lambda j: (*rank[j.job_id], j.queued_at, j.job_id))
