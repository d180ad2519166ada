"""Live progress and time estimates: how far a running job has got, when it should end, and
where a queued job stands.

A worker reports each job's stage (and, during inference, tiles done of total); the scheduler
keeps the latest report of each running job here, in memory, and turns it into the
``jobInfo.progress`` a client sees: ``fraction`` of the whole job (each stage owns a fixed
share of 0..1, inference shared out by tiles) and ``eta``. Jobs of one batch share its forward
passes and end together, so a job's eta is its batch's: the batch's elapsed time over its
fraction done (tile-weighted over its jobs), blended with the estimate made before it started
while little is done yet.

That estimate comes from :class:`RateModel`, one per batch key: a batch's run time is taken
as ``overhead + per_tile * tiles``, both learned from the batches that ended (an exponentially
weighted least-squares fit, anchored by default figures so that it is sensible before any
batch and stays sensible while every batch has the same size). :func:`queue_etas` uses it to
place queued jobs on the workers.

Pure code: no I/O, no clock of its own (times are passed in).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "STAGES",
    "TRUST_FRACTION",
    "LiveBatch",
    "LiveJob",
    "RateModel",
    "WriteThrottle",
    "isotime",
    "job_fraction",
    "queue_etas",
    "remaining_seconds",
]

#: The stages of a run, in order, and the share of the job's 0..1 each takes (measured on
#: the shipped detectors: the forward passes are most of a job).
STAGES: dict[str, tuple[float, float]] = {
    "loading": (0.0, 0.02),
    "reading": (0.02, 0.07),
    "inference": (0.07, 0.90),
    "fitting": (0.90, 0.97),
    "writing": (0.97, 1.0),
}

#: Below this fraction done a batch's eta leans on its estimate made beforehand; above it,
#: on the measured pace only.
TRUST_FRACTION = 0.2

#: Seconds a batch of a model with no measurement yet is taken to spend outside its tiles,
#: and per tile pixel (a 528 x 528 tile: about 28 ms).
DEFAULT_OVERHEAD_S = 0.5
DEFAULT_PIXEL_S = 1e-7
#: An app that runs a job at a time (a classical finder, no tiles): seconds per job.
DEFAULT_JOB_S = 2.0


def isotime(value: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a ``Z`` (as the UWS documents)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def job_fraction(
    stage: str, tiles_done: int | None = None, tiles_total: int | None = None
) -> float:
    """How much of a job is done, 0..1, at ``stage`` (within it, ``tiles_done`` of
    ``tiles_total``). An unknown stage counts as just begun."""
    lo, hi = STAGES.get(stage, (0.0, 0.0))
    if tiles_total and tiles_done is not None and tiles_total > 0:
        return lo + (hi - lo) * min(1.0, max(0.0, tiles_done / tiles_total))
    return lo


def remaining_seconds(elapsed: float, fraction: float, planned: float | None) -> float | None:
    """Seconds left of a run ``elapsed`` seconds in and ``fraction`` done. The measured pace
    (elapsed / fraction) is trusted in full from TRUST_FRACTION on; before, it is blended
    with what was ``planned`` (the run's estimated total seconds), and with nothing done
    only the plan counts. None when there is neither."""
    fraction = min(1.0, max(0.0, fraction))
    plan = None if planned is None else max(0.0, planned - elapsed)
    if fraction <= 0.0:
        return plan
    measured = elapsed * (1.0 - fraction) / fraction
    if plan is None or fraction >= TRUST_FRACTION:
        return measured
    weight = fraction / TRUST_FRACTION
    return weight * measured + (1.0 - weight) * plan


@dataclass
class RateModel:
    """How long a batch of one key takes: ``overhead + per_tile * tiles`` seconds, learned
    from finished batches by exponentially weighted least squares (each new batch counts
    ``1 / decay`` times as much as the one before). The defaults enter the fit as two
    pseudo-batches (1 and ``anchor_tiles`` tiles) of weight ``prior_weight``: they alone
    give the estimate before any measurement, and they pin the split between overhead and
    per-tile time while every measured batch has the same size."""

    overhead: float = DEFAULT_OVERHEAD_S
    per_tile: float = DEFAULT_PIXEL_S * 256 * 256
    decay: float = 0.7
    prior_weight: float = 0.05
    anchor_tiles: float = 64.0
    batches: int = 0
    # decayed sums of w, w*n, w*n^2, w*t, w*n*t over measured batches
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5)
    _prior: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        self._prior = (self.overhead, self.per_tile)

    @classmethod
    def for_tiles(cls, tile_shape: tuple[int, int]) -> RateModel:
        """Defaults for a key: per-tile time by tile pixels; a key without tiles (0 x 0, a
        finder that runs one job at a time) counts a job as one tile of DEFAULT_JOB_S."""
        pixels = tile_shape[0] * tile_shape[1]
        if pixels <= 0:
            return cls(overhead=DEFAULT_OVERHEAD_S, per_tile=DEFAULT_JOB_S, anchor_tiles=4.0)
        return cls(per_tile=DEFAULT_PIXEL_S * pixels)

    def estimate(self, tiles: int) -> float:
        """Seconds a batch of ``tiles`` tiles should take."""
        return self.overhead + self.per_tile * max(0, tiles)

    def learn(self, tiles: int, seconds: float) -> None:
        """A batch of ``tiles`` tiles took ``seconds``: update the fit."""
        if seconds < 0 or tiles < 0:
            return
        n, t = float(tiles), float(seconds)
        s = [x * self.decay for x in self._sums]
        for i, v in enumerate((1.0, n, n * n, t, n * t)):
            s[i] += v
        self._sums = s
        self.batches += 1
        self._solve()

    def _solve(self) -> None:
        # the prior: pseudo-batches at 1 and anchor_tiles tiles, as the defaults predict
        o0, p0 = self._prior
        s0, s1, s2, t0, t1 = self._sums
        for n in (1.0, self.anchor_tiles):
            w = self.prior_weight
            t = o0 + p0 * n
            s0, s1, s2, t0, t1 = s0 + w, s1 + w * n, s2 + w * n * n, t0 + w * t, t1 + w * n * t
        det = s0 * s2 - s1 * s1
        if det <= 1e-12:
            return
        overhead = (t0 * s2 - s1 * t1) / det
        per_tile = (s0 * t1 - s1 * t0) / det
        if per_tile < 0:  # bigger batches no slower: all overhead
            overhead, per_tile = t0 / s0, 0.0
        elif overhead < 0:  # all in the tiles
            overhead, per_tile = 0.0, t1 / s2
        self.overhead, self.per_tile = overhead, per_tile


def queue_etas(
    busy: Iterable[float], idle: int, queued: Sequence[tuple[str, float, float]]
) -> dict[str, tuple[float, float]]:
    """Where queued jobs should start and end, in seconds from now: ``busy`` holds the
    seconds each busy worker still needs, ``idle`` counts the idle ones, and ``queued`` is
    (job id, seconds its run takes, seconds it adds to the queue ahead of later jobs), in
    the order the jobs will be taken. Each job goes to the worker free first (list
    scheduling); a job that will share a batch adds only its share to the queue. Returns
    job id -> (start, end)."""
    free = [max(0.0, b) for b in busy] + [0.0] * max(0, idle)
    if not free:
        free = [0.0]
    heapq.heapify(free)
    out: dict[str, tuple[float, float]] = {}
    for job_id, run, share in queued:
        start = heapq.heappop(free)
        out[job_id] = (start, start + run)
        heapq.heappush(free, start + share)
    return out


@dataclass
class LiveJob:
    """The latest report of one running job."""

    stage: str = "loading"
    tiles_done: int | None = None
    tiles_total: int | None = None
    #: tiles the scheduler counted for it before it ran (its weight in the batch)
    weight: int = 1
    finished: bool = False

    @property
    def fraction(self) -> float:
        """How much of the job is done, 0..1 (1 once it has finished)."""
        return 1.0 if self.finished else job_fraction(self.stage, self.tiles_done, self.tiles_total)


@dataclass
class LiveBatch:
    """A running batch: its jobs' latest reports, when it started (``started`` on the
    caller's monotonic clock, ``start_time`` the wall clock) and the seconds it was
    ``planned`` to take."""

    batch_id: str
    started: float
    start_time: datetime
    planned: float | None
    jobs: dict[str, LiveJob]

    @property
    def fraction(self) -> float:
        """Fraction done of the whole batch, weighted by each job's tiles."""
        total = sum(max(1, j.weight) for j in self.jobs.values())
        if total == 0:
            return 0.0
        return sum(max(1, j.weight) * j.fraction for j in self.jobs.values()) / total

    def remaining(self, now: float) -> float | None:
        """Seconds left of the batch at ``now`` (the caller's monotonic clock), blending its
        pace with its plan; None with neither."""
        return remaining_seconds(now - self.started, self.fraction, self.planned)

    def eta(self, now: float) -> datetime | None:
        """When the batch (and so each of its jobs) should end."""
        left = self.remaining(now)
        if left is None:
            return None
        return self.start_time + timedelta(seconds=(now - self.started) + left)

    def update(
        self, job_id: str, stage: str, tiles_done: int | None, tiles_total: int | None
    ) -> LiveJob | None:
        """Take a job's report; its LiveJob, or None for a job not of this batch."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        job.stage, job.tiles_done, job.tiles_total = stage, tiles_done, tiles_total
        return job

    def progress(self, job_id: str, now: float) -> dict[str, Any]:
        """``jobInfo.progress`` of one of its jobs."""
        job = self.jobs[job_id]
        eta = self.eta(now)
        return {
            "stage": job.stage,
            "tiles_done": job.tiles_done,
            "tiles_total": job.tiles_total,
            "fraction": round(job.fraction, 4),
            "eta": None if eta is None else isotime(eta),
            "batch_jobs": len(self.jobs),
            "batch_fraction": round(self.fraction, 4),
            "updated": isotime(self.start_time + timedelta(seconds=now - self.started)),
        }


@dataclass
class WriteThrottle:
    """When a job's progress may be written to the store: on a new stage at once, else at
    most once per ``interval`` seconds (the caller schedules a trailing write for what it
    held back)."""

    interval: float = 1.0
    _last: dict[str, tuple[str, float]] = field(default_factory=dict)

    def due(self, job_id: str, stage: str, now: float) -> float:
        """Seconds to wait before writing (0: write now)."""
        last = self._last.get(job_id)
        if last is None or last[0] != stage:
            return 0.0
        return max(0.0, last[1] + self.interval - now)

    def wrote(self, job_id: str, stage: str, now: float) -> None:
        """Note that the job's progress at ``stage`` was written at ``now``."""
        self._last[job_id] = (stage, now)

    def forget(self, job_id: str) -> None:
        """Drop what is known of the job (it ended): its next write is due at once."""
        self._last.pop(job_id, None)
