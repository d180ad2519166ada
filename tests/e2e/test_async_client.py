"""The asyncio client against a real server: concurrent submissions and WAITs, with the
event loop left free while a WAIT blocks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from astro_otf.client import AsyncOTFClient, OTFClientError
from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("otf-async") / "data", None)
    proc.start()
    yield proc
    proc.stop()


def test_concurrent_jobs_and_a_free_event_loop(server: ServerProcess, real_data: Path) -> None:
    image = real_data / "aegean" / "synthetic_test.fits"

    async def scenario() -> tuple[list[str], int, list[str]]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        async with AsyncOTFClient(server.url) as otf:
            clock = asyncio.create_task(ticker())
            sent: list[int] = []
            ids = await asyncio.gather(
                *(
                    otf.submit(image, {"MODEL": m}, progress=sent.append)
                    for m in ("sep", "matched-filter")
                )
            )
            jobs = await asyncio.gather(*(otf.wait(job_id) for job_id in ids))
            sleeper = await otf.run(await _sleep_job(otf))
            done = await otf.wait(sleeper.job_id)  # blocks about 1 s in a thread
            clock.cancel()
            assert sum(sent) == 2 * image.stat().st_size  # upload progress, every byte
            with pytest.raises(OTFClientError) as refused:
                await otf.abort(done.job_id)
            assert refused.value.status_code == 409
            return [j.phase for j in jobs] + [done.phase], ticks, [j.job_id for j in jobs]

    phases, ticks, ids = asyncio.run(scenario())
    assert phases == ["COMPLETED", "COMPLETED", "COMPLETED"]
    assert len(set(ids)) == 2
    assert ticks >= 10  # the loop kept running while the WAITs blocked


async def _sleep_job(otf: AsyncOTFClient) -> str:
    """A PENDING sleep job (the client's submit needs an image; this one has none)."""
    async with httpx.AsyncClient(base_url=otf.url) as http:
        r = await http.post("/jobs", data={"MODEL": "sleep", "DURATION": "1"})
    return r.headers["location"].rsplit("/", 1)[-1]


def test_async_upload_events_log_and_rerun(server: ServerProcess, real_data: Path) -> None:
    """Upload once, follow a job by the event stream, read its log, rerun it changed."""
    image = real_data / "aegean" / "synthetic_test.fits"

    async def scenario() -> None:
        async with AsyncOTFClient(server.url) as otf:
            record = await otf.upload(image)
            assert record["filename"] == image.name and record["bytes"] == image.stat().st_size
            job_id = await otf.submit(
                f"upload:{record['upload_id']}",
                {"MODEL": "sleep", "DURATION": "0.5"},
                run=False,
                run_id="async-events",
            )
            seen: list[tuple[str, str | None]] = []

            async def listen() -> None:
                async for event in otf.events(jobs=[job_id]):
                    seen.append((event.event, event.phase))
                    if event.phase == "COMPLETED":
                        return

            listener = asyncio.create_task(listen())
            await asyncio.sleep(0.5)  # the stream is open before the job starts
            await otf.run(job_id)
            await asyncio.wait_for(listener, 30)
            phases = [p for kind, p in seen if kind == "phase"]
            assert phases[-1] == "COMPLETED" and "EXECUTING" in phases, seen
            job = await otf.job(job_id)
            assert job.input["upload_id"] == record["upload_id"] and job.image == image.name
            assert "sleeping" in await otf.log(job_id)
            assert len((await otf.log(job_id, tail=1)).splitlines()) == 1
            listed = await otf.jobs(run_id="async-events")
            assert [j.job_id for j in listed] == [job_id] and listed[0].image == image.name

            again = await otf.rerun(job_id, {"DURATION": 0})
            done = await otf.wait(again)
            assert done.phase == "COMPLETED" and done.parameters["duration"] == "0"
            assert done.input["sha256"] == job.input["sha256"]

    asyncio.run(scenario())
