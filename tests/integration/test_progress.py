"""Live progress through the real service: a job on a big image shows its stage and tiles
while it runs, a quote, and no progress once done; jobs queued behind it know their place."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration.test_uws_api import create, job_json, sleep_job, wait_final
from tests.products import point_source_field


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("otf-progress"), None, workers="1")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def big_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4096 x 4096 noise field with a few sources: 64 tiles of the radio detector."""
    return point_source_field(tmp_path_factory.mktemp("big") / "big.fits", 4096, 30, seed=7)


def test_running_job_shows_progress_and_queued_jobs_their_place(
    one_worker: ServerProcess, big_image: Path
) -> None:
    with httpx.Client(base_url=one_worker.url, timeout=60) as client:
        big = create(client, {"MODEL": "radio-detector", "PHASE": "RUN"}, big_image)
        # queued behind it on the only worker
        behind = [sleep_job(client, 0.1, run=True) for _ in range(2)]
        seen: list[dict] = []
        places: dict[str, list[dict]] = {job_id: [] for job_id in behind}
        quotes: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            doc = job_json(client, big)
            if doc["phase"] == "COMPLETED":
                break
            if doc["phase"] == "EXECUTING":
                if doc["jobInfo"].get("progress"):
                    seen.append(doc["jobInfo"]["progress"])
                quote = client.get(f"/jobs/{big}/quote").text
                if quote:
                    quotes.append(quote)
                for job_id in behind:
                    other = job_json(client, job_id)
                    if other["phase"] == "QUEUED" and other["jobInfo"].get("progress"):
                        places[job_id].append(other["jobInfo"]["progress"])
            time.sleep(0.03)
        final = wait_final(client, big, timeout=60)
        assert final["phase"] == "COMPLETED", final["errorSummary"]

        # while it ran: its stage, tiles done of total, a fraction and an eta
        assert seen, "no progress was seen while the job ran"
        stages = {p["stage"] for p in seen}
        assert stages <= {"loading", "reading", "inference", "fitting", "writing"}
        tiled = [p for p in seen if p["stage"] == "inference"]
        assert tiled, stages
        assert any(p["tiles_done"] < p["tiles_total"] for p in tiled)
        assert {p["tiles_total"] for p in tiled} == {64}
        fractions = [p["fraction"] for p in seen]
        assert all(0.0 <= f <= 1.0 for f in fractions) and fractions == sorted(fractions)
        assert all(p["eta"] and p["eta"].endswith("Z") for p in seen)
        assert all(p["batch_jobs"] == 1 and p["updated"] for p in seen)
        # a quote: an estimated end, after the start
        assert quotes
        start = datetime.fromisoformat(final["startTime"].replace("Z", "+00:00"))
        assert datetime.fromisoformat(quotes[-1].replace("Z", "+00:00")) > start
        # done: no stale progress, in the document or the list
        assert "progress" not in final["jobInfo"] or final["jobInfo"]["progress"] is None
        assert client.get(f"/jobs/{big}/quote").text  # the last estimate stays

        # the jobs behind it knew their place in the queue
        first, second = (places[job_id] for job_id in behind)
        assert first and second, places
        assert all(p["stage"] == "queued" for p in first + second)
        # (a place read before the scheduler's pass after the second job's creation may say
        # "1 of 1": places are recomputed on each pass, not at each creation)
        assert first[-1]["of"] == second[-1]["of"] == 2, places
        assert {p["position"] for p in first} == {1} and {p["position"] for p in second} == {2}
        assert first[-1]["eta"] and first[-1]["eta"] <= second[-1]["eta"]
        for job_id in behind:
            assert wait_final(client, job_id, timeout=30)["phase"] == "COMPLETED"
            assert "progress" not in job_json(client, job_id)["jobInfo"]


def test_dask_batches_send_their_progress_too(tmp_path: Path, big_image: Path) -> None:
    """A Dask task logs its jobs' progress as worker events; the executor passes them on."""
    distributed = pytest.importorskip("distributed")

    from astro_otf.execution.dask_executor import DaskExecutor
    from astro_otf.execution.task import BatchTask, JobProgress, JobTask
    from astro_otf.models.registry import RegistryConfig

    async def scenario() -> tuple[bool, list[JobProgress]]:
        async with distributed.LocalCluster(
            n_workers=1, processes=False, asynchronous=True, dashboard_address=None
        ) as cluster:
            executor = DaskExecutor(cluster.scheduler_address, 1, RegistryConfig())
            executor.start()
            try:
                for _ in range(100):
                    if executor.alive():
                        break
                    await asyncio.sleep(0.1)
                got: list[JobProgress] = []
                task = JobTask("job1", "matched-filter", {}, str(big_image), str(tmp_path), None)
                batch = BatchTask("dask1", "matched-filter", (task,))
                outcomes = await executor.run(batch, 120, progress=got.append)
                return outcomes[0].ok, got
            finally:
                await executor.shutdown()

    ok, got = asyncio.run(scenario())
    assert ok
    stages = [p.stage for p in got]
    assert "loading" in stages and "inference" in stages, stages
    tiled = [p for p in got if p.stage == "inference"]
    assert all(p.job_id == "job1" and p.tiles_total and p.tiles_total > 1 for p in tiled)
