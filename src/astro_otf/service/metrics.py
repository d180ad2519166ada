"""Prometheus metrics: what an operator watches (queue depth, waits, run times, outcomes).

Gauges that describe the queue are read from the store at scrape time, so they are right
whoever changed the jobs; timings and outcomes are observed by the scheduler as they happen.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from astro_otf.domain.phases import Phase
from astro_otf.store.repository import JobStore

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


class Metrics:
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

    def render(self) -> bytes:
        """The exposition text (reads the store: call it off the event loop)."""
        return generate_latest(self.registry)
