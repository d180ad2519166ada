"""Prometheus /metrics: parsed with prometheus_client's own parser, values follow the jobs,
on SQLite and PostgreSQL.

The service runs in the test's process (tests/inprocess.py), its sleep jobs emulated: the
figures are the scheduler's and the store's, which are the real ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inprocess import InProcessService
from tests.integration.test_uws_api import sleep_job, wait_final, wait_phase


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The service in anonymous mode, once on SQLite and once on PostgreSQL (the phase
    counts are SQL)."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_databases").create()
    with InProcessService(
        tmp_path_factory.mktemp(f"otf-metrics-{request.param}") / "data", database_url=url
    ) as service:
        yield service


@pytest.fixture(scope="module")
def client(server: InProcessService) -> Iterator[httpx.Client]:
    """A client of the module's service."""
    with server.client(timeout=60) as c:
        yield c


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_follow_jobs(client: httpx.Client) -> None:
    before = scrape(client)
    done = [sleep_job(client, 0.05, run=True) for _ in range(3)]
    for job_id in done:
        assert wait_final(client, job_id)["phase"] == "COMPLETED"
    pending = sleep_job(client, 1)
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("otf_jobs_finished_total", model="sleep", phase="COMPLETED") == 3
    assert delta("otf_jobs", phase="COMPLETED") == 3
    assert delta("otf_jobs", phase="PENDING") == 1
    assert delta("otf_queue_wait_seconds_count", model="sleep") == 3
    assert delta("otf_run_seconds_count", model="sleep") == 3
    assert delta("otf_run_seconds_sum", model="sleep") >= 0.15
    assert delta("otf_batch_jobs_count", model="sleep") == 3
    client.post(f"/jobs/{pending}/phase", data={"PHASE": "ABORT"})


def test_queue_depth_per_model(client: httpx.Client) -> None:
    busy = [sleep_job(client, 30, run=True) for _ in range(2)]
    for job_id in busy:
        wait_phase(client, job_id, "EXECUTING")
    queued = [sleep_job(client, 30, run=True) for _ in range(2)]
    try:
        for job_id in queued:
            assert client.get(f"/jobs/{job_id}/phase").text == "QUEUED"
        samples = scrape(client)
        assert samples[("otf_queue_depth", (("model", "sleep"),))] == 2
    finally:
        for job_id in busy + queued:
            client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
