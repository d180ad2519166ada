"""Prometheus metrics: what an operator watches (queue depth, waits, run times, outcomes).

Gauges that describe the queue are read from the store at scrape time, so they are right
whoever changed the jobs; timings and outcomes are observed by the scheduler as they happen.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from astro_otf.domain.phases import Phase
from astro_otf.store.repository import JobStore
from astro_otf.store.usage import UsageStore

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _QueueCollector(Collector):
    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        phases = GaugeMetricFamily("otf_jobs", "Jobs in the store, by phase.", labels=["phase"])
        counts = self.store.counts_by_phase()
        for phase in Phase:
            phases.add_metric([phase.value], counts.get(phase.value, 0))
        yield phases
        depth = GaugeMetricFamily("otf_queue_depth", "QUEUED jobs, by model.", labels=["model"])
        for model, n in sorted(self.store.queued_by_model().items()):
            depth.add_metric([model], n)
        yield depth


#: The ``owner`` label of anonymous callers' jobs (anonymous mode: every caller).
ANONYMOUS = "(anonymous)"


def _owner_label(owner: str | None) -> str:
    return ANONYMOUS if owner is None else owner


class _OwnerCollector(Collector):
    """Per-owner accounting from the ledger and the live jobs, read at scrape time (so every
    replica reports the same figures). Labelled by owner only (and the final phase, three
    values): one series per owner, not per job or model."""

    def __init__(self, usage: UsageStore) -> None:
        self.usage = usage

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cpu = CounterMetricFamily(
            "otf_owner_cpu_seconds", "CPU seconds used by the owner's jobs.", labels=["owner"]
        )
        wall = CounterMetricFamily(
            "otf_owner_wall_seconds",
            "Wall seconds (start to end) of the owner's jobs.",
            labels=["owner"],
        )
        ended = CounterMetricFamily(
            "otf_owner_jobs_ended",
            "The owner's jobs that reached a final phase, by phase (deleted ones included).",
            labels=["owner", "phase"],
        )
        sums: dict[str, tuple[float, float]] = {}
        for owner, phase, n, cpu_s, wall_s in self.usage.totals():
            name = _owner_label(owner)
            ended.add_metric([name, phase], n)
            before = sums.get(name, (0.0, 0.0))
            sums[name] = (before[0] + cpu_s, before[1] + wall_s)
        for name, (cpu_s, wall_s) in sorted(sums.items()):
            cpu.add_metric([name], cpu_s)
            wall.add_metric([name], wall_s)
        yield cpu
        yield wall
        yield ended
        stored = GaugeMetricFamily(
            "otf_owner_stored_bytes",
            "Bytes the owner's live jobs hold (input images and results).",
            labels=["owner"],
        )
        for owner, size in sorted(self.usage.stored_bytes().items(), key=lambda kv: str(kv[0])):
            stored.add_metric([_owner_label(owner)], size)
        yield stored
        active = GaugeMetricFamily(
            "otf_owner_active_jobs",
            "The owner's jobs QUEUED, EXECUTING or HELD.",
            labels=["owner"],
        )
        for owner, n in sorted(self.usage.active_counts().items(), key=lambda kv: str(kv[0])):
            active.add_metric([_owner_label(owner)], n)
        yield active


class Metrics:
    """The service's Prometheus metrics for ``GET /metrics``: histograms and counters the
    scheduler feeds as batches start and jobs end, and collectors that read the queue and each
    owner's usage from the store at each scrape."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        self.queue_wait = Histogram(
            "otf_queue_wait_seconds",
            "Time from QUEUED to EXECUTING.",
            ["model"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "otf_run_seconds",
            "Time the work of a run took in its worker.",
            ["model"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.batch_jobs = Histogram(
            "otf_batch_jobs",
            "Jobs per batch sent to a worker.",
            ["model"],
            buckets=_COUNTS,
            registry=self.registry,
        )
        self.batch_tiles = Histogram(
            "otf_batch_tiles",
            "Tiles per batch sent to a worker.",
            ["model"],
            buckets=_COUNTS,
            registry=self.registry,
        )
        self.finished = Counter(
            "otf_jobs_finished",
            "Jobs that ended, by model and final phase.",
            ["model", "phase"],
            registry=self.registry,
        )
        self.registry.register(_QueueCollector(store))
        self.registry.register(_OwnerCollector(UsageStore(store.engine)))

    def render(self) -> bytes:
        """The exposition text (reads the store: call it off the event loop)."""
        return generate_latest(self.registry)
