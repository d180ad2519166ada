"""Tests of :class:`astro_otf.client.AsyncOTFClient` without the real server.

Wrapping a client that exists already (what ``otf dashboard`` does with the command line's)
and who closes which connection pool, on an in-memory transport; the calls the async client
gained to match :class:`OTFClient` (datasets, accounting, ``copy_result``, ``job(wait=)``,
``model(version=)``, the event stream's options) against the stand-in service of
tests/fake_uws.py, each checked to send what the synchronous client sends and to answer, or
fail, as it does. That every call exists with the same parameters is
tests/unit/test_client_parity.py; the calls against a real service are in
tests/e2e/test_async_client.py.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from astro_otf.client import (
    AsyncOTFClient,
    OTFClient,
    OTFClientError,
    ProtocolError,
    ServerUnreachable,
)
from tests.fake_uws import VOTABLE, Answer, FakeUWS, Request


def _service(seen: list[httpx.Request]) -> httpx.Client:
    """An httpx client whose every request reaches a handler that records it and answers
    like ``/health``."""

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok", "version": "test"})

    return httpx.Client(base_url="http://otf.test", transport=httpx.MockTransport(answer))


def test_from_sync_shares_the_client_and_leaves_it_open() -> None:
    """The dashboard wraps the command line's client: same pool and token, left open."""
    seen: list[httpx.Request] = []
    http = _service(seen)
    sync = OTFClient(token="secret", http_client=http)

    async def scenario() -> dict[str, object]:
        async with AsyncOTFClient.from_sync(sync) as otf:
            assert otf.sync is sync and otf.url == sync.url == "http://otf.test"
            return await otf.health()

    assert asyncio.run(scenario()) == {"status": "ok", "version": "test"}
    assert [r.url.path for r in seen] == ["/health"]
    assert seen[0].headers["authorization"] == "Bearer secret"  # the wrapped client's token
    assert not http.is_closed
    assert sync.health()["status"] == "ok"  # still usable by its owner
    sync.close()
    http.close()


def test_aclose_closes_a_pool_of_its_own() -> None:
    """A client made by AsyncOTFClient itself is closed with it."""

    async def scenario() -> OTFClient:
        async with AsyncOTFClient("http://otf.test") as otf:
            return otf.sync

    sync = asyncio.run(scenario())
    assert sync._http.is_closed


# ------------------------------------------------------------------ against the fake service

DATASETS = {"datasets": [{"name": "field", "description": "a test field", "pattern": "*.fits"}]}
FIELD = {"name": "field", "images": [{"path": "a.fits", "ref": "dataset:field/a.fits"}]}
ACCOUNTING = {"period": {}, "owners": [{"owner": "alice", "jobs": {}}], "totals": {}}


@pytest.fixture
def fake() -> Iterator[FakeUWS]:
    """The stand-in service, with scripted dataset, accounting and model answers."""
    with FakeUWS() as fake:
        fake.answer("GET", "/datasets", Answer.json(200, DATASETS), times=None)
        fake.answer("GET", "/datasets/field", Answer.json(200, FIELD), times=None)
        fake.answer("GET", "/datasets/flat", Answer.json(200, {"name": "flat"}), times=None)
        fake.answer("GET", "/accounting", Answer.json(200, ACCOUNTING), times=None)
        fake.answer("GET", "/models/sep", _model_doc, times=None)
        yield fake


def _model_doc(request: Request) -> Answer:
    """A model description of the version asked for (the default one without a query)."""
    return Answer.json(200, {"id": "sep", "version": request.query.get("version", ["2"])[0]})


def _wire(requests: list[Request]) -> list[tuple[str, str, dict[str, list[str]], str | None]]:
    """What a client sent: method, path, query and the Accept header of each request."""
    return [(r.method, r.path, r.query, r.header("Accept")) for r in requests]


def _both(
    fake: FakeUWS,
    sync_call: Callable[[OTFClient], Any],
    async_call: Callable[[AsyncOTFClient], Awaitable[Any]],
) -> tuple[Any, Any]:
    """The answers of the same call made by each client, once it is checked that both sent
    the same requests."""
    start = len(fake.requests)
    with OTFClient(fake.url, max_retries=0) as client:
        expected = sync_call(client)
    middle = len(fake.requests)

    async def scenario() -> Any:
        async with AsyncOTFClient(fake.url, max_retries=0) as otf:
            return await async_call(otf)

    got = asyncio.run(scenario())
    assert _wire(fake.requests[middle:]) == _wire(fake.requests[start:middle])
    return expected, got


def test_datasets_and_dataset(fake: FakeUWS) -> None:
    """The dataset list and one dataset, as the sync client reads them."""
    expected, got = _both(fake, lambda c: c.datasets(), lambda a: a.datasets())
    assert got == expected == DATASETS["datasets"]
    expected, got = _both(fake, lambda c: c.dataset("field"), lambda a: a.dataset("field"))
    assert got == expected == FIELD


def test_accounting_sends_the_period_and_owner(fake: FakeUWS) -> None:
    """A datetime, a string and an owner become SINCE, UNTIL and OWNER, as in sync."""
    since = datetime(2026, 1, 1, tzinfo=UTC)
    expected, got = _both(
        fake,
        lambda c: c.accounting(since, "2026-02-01", owner="alice"),
        lambda a: a.accounting(since, "2026-02-01", owner="alice"),
    )
    assert got == expected == ACCOUNTING
    assert fake.sent("GET", "/accounting")[-1].query == {
        "SINCE": ["2026-01-01T00:00:00Z"],
        "UNTIL": ["2026-02-01"],
        "OWNER": ["alice"],
    }


def test_model_of_a_version(fake: FakeUWS) -> None:
    """``version`` asks for one version; without it the default one comes."""
    expected, got = _both(fake, lambda c: c.model("sep", "1"), lambda a: a.model("sep", "1"))
    assert got == expected == {"id": "sep", "version": "1"}
    expected, got = _both(fake, lambda c: c.model("sep"), lambda a: a.model("sep"))
    assert got == expected == {"id": "sep", "version": "2"}


def test_job_with_wait_blocks_until_it_moves(fake: FakeUWS, tmp_path: Path) -> None:
    """``wait`` is sent as UWS WAIT, and refused as the sync client refuses it."""
    image = tmp_path / "field.fits"
    image.write_bytes(b"SIMPLE  =                    T")

    async def scenario() -> list[str]:
        async with AsyncOTFClient(fake.url) as otf:
            job_id = await otf.submit(image, {"MODEL": "sep"})
            first = await otf.job(job_id)
            moved = await otf.job(job_id, wait=3)
            with pytest.raises(ValueError, match="wait"):
                await otf.job(job_id, wait=0)
            return [first.phase, moved.phase]

    assert asyncio.run(scenario()) == ["QUEUED", "EXECUTING"]
    assert fake.wait_values() == ["3"]


def test_copy_result_streams_into_a_file_object(fake: FakeUWS, tmp_path: Path) -> None:
    """A result streamed into a file object: every byte, the count, a 404 as an error."""
    image = tmp_path / "field.fits"
    image.write_bytes(b"SIMPLE  =                    T")

    async def scenario() -> tuple[str, int, bytes]:
        async with AsyncOTFClient(fake.url) as otf:
            job_id = await otf.submit(image, {"MODEL": "sep"})
            job = await otf.wait(job_id, timeout=10, poll_wait=1)
            sink = io.BytesIO()
            written = await otf.copy_result(job_id, sink)
            with pytest.raises(OTFClientError) as missing:
                await otf.copy_result(job_id, io.BytesIO(), "no-such-result")
            assert missing.value.status_code == 404
            return job.phase, written, sink.getvalue()

    assert asyncio.run(scenario()) == ("COMPLETED", len(VOTABLE), VOTABLE)


def test_errors_are_the_sync_clients(fake: FakeUWS) -> None:
    """A malformed answer and a refusal raise the sync client's exceptions."""

    async def scenario() -> None:
        async with AsyncOTFClient(fake.url, max_retries=0) as otf:
            with pytest.raises(ProtocolError, match="images"):
                await otf.dataset("flat")  # a dataset document without its images
            with pytest.raises(OTFClientError) as unknown:
                await otf.dataset("nowhere")
            assert unknown.value.status_code == 404

    asyncio.run(scenario())


def test_events_take_the_stream_options(fake: FakeUWS) -> None:
    """``max_reconnects`` reaches the stream: it gives up after that many failed tries."""
    fake.event_rounds = ["retry: 0\n\n"] * 10 + [""]

    async def scenario() -> None:
        async with AsyncOTFClient(fake.url) as otf:
            with pytest.raises(ServerUnreachable, match="broke off"):
                async for _ in otf.events(jobs=["job1"], max_reconnects=2, idle_timeout=5.0):
                    pass

    asyncio.run(scenario())
    assert [r.query for r in fake.sent("GET", "/jobs/events")] == [{"job": ["job1"]}] * 3
