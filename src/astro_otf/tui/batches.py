"""The dashboard's batch view, read from the service's Prometheus metrics.

Kept apart from the Textual app because it is pure (text in, numbers out) and tested
without a screen: what the scheduler queued and batched per model, and how many jobs the
store holds per phase, as ``GET /metrics`` reports them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

#: Histogram samples the batch view reads: batches (per model), and jobs and tiles in them.
_BATCH_SAMPLES = {
    "otf_batch_jobs_count": "count",
    "otf_batch_jobs_sum": "jobs",
    "otf_batch_tiles_sum": "tiles",
}


@dataclass(frozen=True, slots=True)
class ModelBatches:
    """What the metrics say about one model's queue and batches."""

    model: str
    queued: int = 0
    batches: int = 0
    jobs: float = 0.0
    tiles: float = 0.0

    @property
    def mean_jobs(self) -> float | None:
        """Mean jobs per batch since the server started (None before the first batch)."""
        return self.jobs / self.batches if self.batches else None

    @property
    def mean_tiles(self) -> float | None:
        """Mean tiles per batch since the server started (None before the first batch)."""
        return self.tiles / self.batches if self.batches else None


@dataclass(frozen=True, slots=True)
class BatchStats:
    """The batch view: per-model queue depth and batch sizes, and jobs per phase."""

    models: dict[str, ModelBatches] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecentBatches:
    """Batches formed between two scrapes that saw new ones."""

    batches: int
    mean_jobs: float
    mean_tiles: float


def parse_batch_metrics(text: str, models: Iterable[str] = ()) -> BatchStats:
    """The batch view from Prometheus exposition ``text``.

    Reads ``otf_queue_depth{model}`` (gauge), the ``_count`` and ``_sum`` samples of the
    ``otf_batch_jobs{model}`` and ``otf_batch_tiles{model}`` histograms, and
    ``otf_jobs{phase}`` (gauge). ``models`` (e.g. the registry) get a row even when no
    metric names them yet, so an idle model shows a queue depth of 0. Raises
    ``ValueError`` when ``text`` is not exposition format.
    """
    queued: dict[str, float] = dict.fromkeys(models, 0.0)
    counts: dict[str, float] = {}
    job_sums: dict[str, float] = {}
    tile_sums: dict[str, float] = {}
    phases: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            model = sample.labels.get("model")
            if family.name == "otf_queue_depth" and model is not None:
                queued[model] = queued.get(model, 0.0) + sample.value
            elif family.name == "otf_jobs" and "phase" in sample.labels:
                phases[sample.labels["phase"]] = int(sample.value)
            elif model is not None and sample.name in _BATCH_SAMPLES:
                target = _BATCH_SAMPLES[sample.name]
                sums = counts if target == "count" else job_sums if target == "jobs" else tile_sums
                sums[model] = sums.get(model, 0.0) + sample.value
    names = sorted(set(queued) | set(counts) | set(job_sums) | set(tile_sums))
    return BatchStats(
        models={
            m: ModelBatches(
                model=m,
                queued=int(queued.get(m, 0.0)),
                batches=int(counts.get(m, 0.0)),
                jobs=job_sums.get(m, 0.0),
                tiles=tile_sums.get(m, 0.0),
            )
            for m in names
        },
        phases=phases,
    )


def recent_batches(
    before: ModelBatches | None, now: ModelBatches, previous: RecentBatches | None
) -> RecentBatches | None:
    """Mean size of the batches formed since ``before`` was scraped; ``previous`` when
    there were none (a counter that went down means a restarted server: all count)."""
    if before is None or now.batches < before.batches:
        before = ModelBatches(now.model)
    new = now.batches - before.batches
    if new <= 0:
        return previous
    return RecentBatches(
        batches=new,
        mean_jobs=(now.jobs - before.jobs) / new,
        mean_tiles=(now.tiles - before.tiles) / new,
    )
