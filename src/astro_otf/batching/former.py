"""The batch former: groups QUEUED jobs that can share one model forward pass.

Jobs gather per batch key (model id, version, precision, tile shape). A key's batch is ready
when it reaches ``max_jobs`` jobs or ``max_tiles`` tiles (the memory budget of one forward), or
when its oldest job has waited ``max_wait`` seconds. Among ready keys the former goes
round-robin, so one busy model cannot starve another. Inside a batch, jobs are taken by
PRIORITY first, then in owner rounds (every owner's first job before anyone's second), then by
age: one owner's thousand jobs do not starve another owner's one.

Pure code: it sees snapshots of the queue and returns decisions; the scheduler does the I/O.
"""

from __future__ import annotations

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
    max_jobs: int = 32
    max_tiles: int = 256
    max_wait: float = 0.25  # seconds the oldest job may wait for company

    def __post_init__(self) -> None:
        if self.max_jobs < 1 or self.max_tiles < 1 or self.max_wait < 0:
            raise ValueError(f"invalid batch rules {self}")


@dataclass(frozen=True)
class Batch:
    key: BatchKey
    jobs: tuple[QueuedJob, ...]
    reason: str  # "jobs", "tiles" or "wait": what closed it

    @property
    def tiles(self) -> int:
        return sum(j.tiles for j in self.jobs)


@dataclass
class BatchFormer:
    rules: BatchRules = field(default_factory=BatchRules)
    _last_key: BatchKey | None = None  # round-robin position among keys

    def next_batch(self, queue: Iterable[QueuedJob], now: float) -> Batch | None:
        """The batch to run now, or None if no key is ready yet."""
        by_key: dict[BatchKey, list[QueuedJob]] = defaultdict(list)
        for job in queue:
            by_key[job.key].append(job)
        ready = {
            key: reason
            for key, jobs in by_key.items()
            if (reason := self._ready(jobs, now)) is not None
        }
        if not ready:
            return None
        key = self._round_robin(sorted(ready))
        self._last_key = key
        jobs = by_key[key]
        chosen = self._fill(jobs) if jobs[0].batchable else _fair_order(jobs)[:1]
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

    def _ready(self, jobs: Sequence[QueuedJob], now: float) -> str | None:
        if not jobs[0].batchable:
            return "alone"
        if len(jobs) >= self.rules.max_jobs:
            return "jobs"
        if sum(j.tiles for j in jobs) >= self.rules.max_tiles:
            return "tiles"
        if now - min(j.queued_at for j in jobs) >= self.rules.max_wait:
            return "wait"
        return None

    def _round_robin(self, keys: list[BatchKey]) -> BatchKey:
        if self._last_key is None:
            return keys[0]
        after = [k for k in keys if k > self._last_key]
        return after[0] if after else keys[0]

    def _fill(self, jobs: list[QueuedJob]) -> list[QueuedJob]:
        chosen: list[QueuedJob] = []
        tiles = 0
        for job in _fair_order(jobs):
            if len(chosen) >= self.rules.max_jobs:
                break
            if chosen and tiles + job.tiles > self.rules.max_tiles:
                continue  # a smaller job may still fit
            chosen.append(job)
            tiles += job.tiles
        return chosen


def _fair_order(jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
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
