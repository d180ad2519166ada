"""The client's event stream against a real ``otf serve``: phase and progress events of
the caller's jobs, resuming after ``Last-Event-ID`` without losing any, and ``reset`` when
the events asked for are gone."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from astro_otf.client import Event, OTFClient
from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("events") / "data", None)
    proc.start()
    yield proc
    proc.stop()


def collect(client: OTFClient, until: str, **options: object) -> tuple[list[Event], str | None]:
    """Events (of any job) until a COMPLETED phase event of job ``until``."""
    got: list[Event] = []
    with client.events(**options) as stream:  # type: ignore[arg-type]
        timer = threading.Timer(30, stream.close)  # never hang the suite
        timer.start()
        try:
            for event in stream:
                got.append(event)
                if event.job_id == until and event.phase == "COMPLETED":
                    break
        finally:
            timer.cancel()
        return got, stream.last_event_id


def test_events_of_a_job_and_a_resume_that_misses_nothing(
    server: ServerProcess, real_data: Path
) -> None:
    image = real_data / "aegean" / "synthetic_test.fits"
    with OTFClient(server.url) as client:
        first = client.submit(image, {"MODEL": "sleep", "DURATION": "0.3"}, run=False)
        got: list[Event] = []
        done = threading.Event()
        with client.events(jobs=[first]) as stream:

            def read() -> None:
                for event in stream:
                    got.append(event)
                    if event.phase == "COMPLETED":
                        break
                done.set()

            threading.Thread(target=read, daemon=True).start()
            assert stream.wait_receiving(10)
            client.run(first)
            assert done.wait(30), got
            resume_at = stream.last_event_id
        assert {e.job_id for e in got} == {first}
        assert [e.phase for e in got if e.event == "phase"][-1] == "COMPLETED"
        assert all(e.id and e.id.count("-") >= 1 for e in got)
        assert resume_at == got[-1].id

        # a job that runs while nobody listens: a resumed stream gets all of its events
        second = client.submit(image, {"MODEL": "sleep", "DURATION": "0.2"}, nocache=True)
        assert client.wait(second, timeout=30).phase == "COMPLETED"
        missed, _ = collect(client, second, last_event_id=resume_at)
        assert missed[0].event != "reset"
        assert "COMPLETED" in [e.phase for e in missed if e.job_id == second]

        # events from an earlier boot of the service are gone: reset first
        third = client.submit(image, {"MODEL": "sleep", "DURATION": "0.1"}, run=False)
        with client.events(last_event_id="0000-1", jobs=[third]) as stream:
            assert next(iter(stream)).event == "reset"
