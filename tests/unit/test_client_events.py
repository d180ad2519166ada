"""The client's Server-Sent Events reader and progress model.

The parser is checked on text (the wire format's corner cases); the stream's reconnection
with ``Last-Event-ID`` and its close from another thread against the stand-in service of
tests/fake_uws.py, served over loopback, which drops connections on purpose (something the
real server does not do on request). The real server's events are covered by
tests/integration/test_client_events.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from astro_otf.cli.common import progress_fraction, progress_text
from astro_otf.client import (
    Event,
    JobSummary,
    OTFClient,
    OTFClientError,
    Progress,
    ServerUnreachable,
    SSEParser,
)
from tests.fake_uws import Answer, FakeUWS

EVENTS = ("GET", "/jobs/events")

# ------------------------------------------------------------------------ parser


def parse(text: str) -> list[Event]:
    return list(SSEParser().parse(text.splitlines()))


def test_parser_reads_id_event_and_json_data() -> None:
    events = parse(
        "retry: 2000\n\n"
        ": keep-alive\n\n"
        'id: b1-1\nevent: phase\ndata: {"job_id": "j1", "phase": "executing",\n'
        'data:  "progress": {"stage": "inference", "fraction": 0.25}}\n\n'
        "id: b1-2\nevent: reset\ndata: {}\n\n"
    )
    assert [e.event for e in events] == ["phase", "reset"]
    first = events[0]
    assert first.id == "b1-1" and first.job_id == "j1" and first.phase == "EXECUTING"
    assert first.progress is not None and first.progress.stage == "inference"
    assert first.progress.fraction == 0.25
    assert events[1].id == "b1-2" and events[1].data == {} and events[1].job_id is None


def test_parser_corner_cases() -> None:
    parser = SSEParser()
    lines = [
        "retry: 1500",
        "data:no space after the colon",
        "",  # event type defaults to message; id carried over (none yet)
        "id: 7",
        "event: progress",
        "",  # no data: nothing dispatched, the event type forgotten, the id kept
        "data: not json",
        "",
        "data",  # a field name alone: empty data
        "",
        "id: bad\0id",  # ignored: NUL in an id
        "data: {}",
        "",
        "data: [1, 2]",  # JSON but not an object
        "",
        "event: phase",
        "data: {}",  # never dispatched: the stream ended without a blank line
    ]
    events = list(parser.parse(lines))
    assert parser.retry == 1.5
    assert [(e.event, e.id, e.text, e.data) for e in events] == [
        ("message", None, "no space after the colon", {}),
        ("message", "7", "not json", {}),
        ("message", "7", "", {}),
        ("message", "7", "{}", {}),
        ("message", "7", "[1, 2]", {}),
    ]
    assert parser.last_event_id == "7"


def test_progress_is_parsed_leniently_and_described() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    eta = (now + timedelta(seconds=75)).isoformat().replace("+00:00", "Z")
    running = Progress.from_json(
        {"stage": "inference", "tiles_done": 40, "tiles_total": 120, "fraction": 1.7,
         "eta": eta, "batch_jobs": "x", "updated": "yesterday"}
    )  # fmt: skip
    assert running is not None
    assert running.fraction == 1.0 and running.batch_jobs is None and running.updated is None
    assert running.eta_seconds(now) == 75
    assert progress_text("EXECUTING", running, now) == "inference 100% tiles 40/120 ETA 1m15s"
    queued = Progress.from_json({"stage": "queued", "position": 3, "of": 12, "eta": None})
    assert queued is not None and queued.is_queued
    assert progress_text("QUEUED", queued) == "queued 3/12"
    assert progress_fraction("QUEUED", queued) == 0.0
    assert progress_fraction("COMPLETED", None) == 1.0
    assert progress_text("COMPLETED", running) == "completed"
    nothing: object
    for nothing in (None, {}, "busy", 3):
        assert Progress.from_json(nothing) is None

    summary = JobSummary.from_json(
        {"jobId": "j1", "phase": "executing", "image": "a.fits", "modelId": "sep",
         "sources": None, "progress": {"stage": "fitting", "fraction": 0.5}, "preview": None}
    )  # fmt: skip
    assert summary.image == "a.fits" and summary.model_id == "sep" and summary.sources is None
    assert summary.progress is not None and summary.progress.stage == "fitting"
    old = JobSummary.from_json({"jobId": "j2", "phase": "COMPLETED"})  # an older service
    assert old.image is None and old.progress is None


# ------------------------------------------------------------------------ the stream


@pytest.fixture
def feed() -> Iterator[FakeUWS]:
    with FakeUWS() as fake:
        yield fake


def connections(feed: FakeUWS) -> list[tuple[str | None, list[str]]]:
    """(Last-Event-ID header, job query values) of each connection to the event stream."""
    return [(r.header("Last-Event-ID"), r.query.get("job", [])) for r in feed.sent(*EVENTS)]


def message(n: int, phase: str) -> str:
    return f'id: boot-{n}\nevent: phase\ndata: {{"job_id": "j1", "phase": "{phase}"}}\n\n'


def test_a_dropped_stream_resumes_with_last_event_id(feed: FakeUWS) -> None:
    feed.event_rounds = [
        "retry: 10\n\n" + message(1, "QUEUED") + message(2, "EXECUTING") + "id: boot-3\ndata: {",
        ": keep-alive\n\n" + message(3, "EXECUTING") + message(4, "COMPLETED"),
        "",
    ]
    with OTFClient(feed.url) as client, client.events(jobs=["j1", "j2"]) as stream:
        phases = []
        for event in stream:
            phases.append(event.phase)
            if event.phase == "COMPLETED":
                break
        assert stream.last_event_id == "boot-4"
        assert stream.connections == 2
    # the half-sent event of the first connection was dropped, not half-delivered
    assert phases == ["QUEUED", "EXECUTING", "EXECUTING", "COMPLETED"]
    assert connections(feed) == [(None, ["j1", "j2"]), ("boot-2", ["j1", "j2"])]


def test_close_from_another_thread_ends_a_blocked_read(feed: FakeUWS) -> None:
    feed.event_rounds = [message(1, "EXECUTING")]
    got: list[Event] = []
    with OTFClient(feed.url) as client:
        stream = client.events(last_event_id="boot-0")
        reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
        reader.start()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [e.id for e in got] == ["boot-1"]
        t0 = time.monotonic()
        stream.close()
        reader.join(5)
        assert not reader.is_alive() and time.monotonic() - t0 < 2
    assert connections(feed)[0][0] == "boot-0"


def test_no_event_stream_is_a_404_and_no_server_is_unreachable(feed: FakeUWS) -> None:
    feed.answer(*EVENTS, Answer(404, "no events here", "text/plain"), times=None)
    with OTFClient(feed.url, max_retries=0) as client:
        with pytest.raises(OTFClientError) as refused:
            next(iter(client.events()))
        assert refused.value.status_code == 404
    with socket_closed() as url, OTFClient(url) as client, pytest.raises(ServerUnreachable):
        next(iter(client.events()))


def test_waiting_for_a_refused_stream_ends_when_the_reader_does(feed: FakeUWS) -> None:
    """A follower waits for the stream to be receiving before it reads its jobs; a service
    without an event stream must not hold it there (``otf submit --wait`` waited 2 s)."""
    feed.answer(*EVENTS, Answer(404, "no events here", "text/plain"), times=None)
    answered: list[bool] = []
    with OTFClient(feed.url, max_retries=0) as client:
        stream = client.events()

        def read() -> None:
            with contextlib.suppress(OTFClientError):
                list(stream)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        waiter = threading.Thread(target=lambda: answered.append(stream.wait_receiving()))
        waiter.start()
        waiter.join(30)  # without a timeout: only the reader's end can answer it
        reader.join(5)
        stream.close()
    assert answered == [False]


def test_a_stream_that_keeps_breaking_gives_up(feed: FakeUWS) -> None:
    feed.event_rounds = ["retry: 0\n\n"] * 10 + [""]
    with OTFClient(feed.url) as client:
        stream = client.events(max_reconnects=2)
        with pytest.raises(ServerUnreachable, match="broke off"):
            list(stream)
    assert len(connections(feed)) == 3


class socket_closed:
    """A URL where nothing listens."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        pass


def test_wrong_content_type_is_refused(feed: FakeUWS) -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, text="<html/>", headers={"content-type": "text/html"})
    )
    with httpx.Client(transport=transport, base_url="http://otf.test") as http:
        client = OTFClient(http_client=http)
        with pytest.raises(OTFClientError, match="not text/event-stream"):
            next(iter(client.events()))
