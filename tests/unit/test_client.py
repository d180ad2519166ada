"""Tests of :mod:`astro_otf.client` against a small UWS look-alike served over loopback.

The fake service (tests/fake_uws.py) speaks just enough of the astro-otf HTTP contract (303 after
POST, JSON job documents, blocking WAIT, 503 with Retry-After, text/plain refusals) for
the client's behaviour on the wire to be checked with real HTTP, without the real
server, which has its own end-to-end tests.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from lxml import etree

from astro_otf.client import (
    Job,
    OTFClient,
    OTFClientError,
    ProtocolError,
    ServerUnreachable,
)
from astro_otf.client.api import _retry_after
from tests.fake_uws import VOTABLE, Answer, FakeUWS


@pytest.fixture
def fake() -> Iterator[FakeUWS]:
    with FakeUWS() as fake:
        yield fake


@pytest.fixture
def delays() -> list[float]:
    return []


@pytest.fixture
def client(fake: FakeUWS, delays: list[float]) -> Iterator[OTFClient]:
    with OTFClient(fake.url, token="s3cret", timeout=10, sleep=delays.append) as c:
        yield c


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "field.fits"
    path.write_bytes(b"SIMPLE  =                    T" + bytes(range(256)) * 300)
    return path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ------------------------------------------------------------------------ submit


def test_submit_streams_the_image_and_returns_the_id_from_location(
    client: OTFClient, fake: FakeUWS, image: Path
) -> None:
    job_id = client.submit(image, {"MODEL": "sep", "thresh": "5"}, run_id="night-1")

    assert job_id == "job1"
    (upload,) = fake.requests  # the 303 is read, not followed with a re-POST
    assert (upload.method, upload.path) == ("POST", "/jobs")
    assert upload.files == {"IMAGE": ("field.fits", image.read_bytes())}
    assert upload.form == {"MODEL": "sep", "thresh": "5", "PHASE": "RUN", "RUNID": "night-1"}
    assert upload.header("Authorization") == "Bearer s3cret"
    assert (upload.header("User-Agent") or "").startswith("astro-otf-client/")


def test_submit_without_run_leaves_the_job_pending_until_run(
    client: OTFClient, fake: FakeUWS, image: Path
) -> None:
    job_id = client.submit(image, {"MODEL": "sep"}, run=False)
    assert fake.sent("POST", "/jobs")[0].form == {"MODEL": "sep"}

    assert client.job(job_id).phase == "PENDING"
    assert client.run(job_id).phase == "QUEUED"


def test_submit_refusal_carries_the_servers_message(
    client: OTFClient, fake: FakeUWS, image: Path
) -> None:
    fake.answer("POST", "/jobs", Answer(400, "THRESH: 'abc' is not a number"))
    with pytest.raises(OTFClientError) as info:
        client.submit(image, {"thresh": "abc"})
    assert info.value.status_code == 400
    assert info.value.message == "THRESH: 'abc' is not a number"
    assert str(info.value) == "THRESH: 'abc' is not a number"


def test_submit_of_a_missing_file_fails_before_any_request(
    client: OTFClient, fake: FakeUWS, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        client.submit(tmp_path / "absent.fits", {})
    assert fake.requests == []


def test_submit_retried_after_503_uploads_the_whole_file_again(
    client: OTFClient, fake: FakeUWS, image: Path, delays: list[float]
) -> None:
    fake.busy(1)

    job_id = client.submit(image, {"MODEL": "sep"})

    assert delays == [1.0]
    posts = fake.sent("POST", "/jobs")
    assert len(fake.requests) == len(posts) == 2
    assert all(p.files["IMAGE"][1] == image.read_bytes() for p in posts)
    assert client.job(job_id).phase == "QUEUED"


# ------------------------------------------------------------------------ jobs


def test_job_document_is_parsed_into_typed_fields(
    client: OTFClient, fake: FakeUWS, image: Path
) -> None:
    job_id = client.submit(image, {"MODEL": "sep", "thresh": "5"}, run_id="r1")

    job = client.job(job_id)

    assert isinstance(job, Job)
    assert (job.job_id, job.phase, job.run_id, job.owner_id) == (
        job_id,
        "QUEUED",
        "r1",
        "anonymous",
    )
    assert job.parameters == {"MODEL": "sep", "thresh": "5"}
    assert job.creation_time is not None and job.creation_time.tzinfo is not None
    assert abs(datetime.now(UTC) - job.creation_time) < timedelta(minutes=1)
    assert job.destruction == datetime(2030, 1, 1, tzinfo=UTC)
    assert job.execution_duration == 600
    assert job.start_time is None and job.error_summary is None and job.results == []
    assert job.is_active and not job.is_final
    assert job.raw["jobId"] == job_id
    assert fake.requests[-1].header("Accept") == "application/json"


def test_unknown_job_is_a_404_with_the_servers_message(client: OTFClient) -> None:
    with pytest.raises(OTFClientError) as info:
        client.job("nope")
    assert info.value.status_code == 404
    assert info.value.message == "no job with id 'nope'"


def test_a_non_json_job_document_is_a_protocol_error(client: OTFClient, fake: FakeUWS) -> None:
    fake.answer("GET", "/jobs/garbled", Answer(200, "<html>oops</html>", "text/html"))
    with pytest.raises(ProtocolError):
        client.job("garbled")


def test_jobs_lists_and_filters(client: OTFClient, fake: FakeUWS, image: Path) -> None:
    first = client.submit(image, {})
    second = client.submit(image, {}, run=False)
    third = client.submit(image, {})

    assert [j.job_id for j in client.jobs()] == [first, second, third]
    pending = client.jobs(phases=["pending"])
    assert [(j.job_id, j.phase) for j in pending] == [(second, "PENDING")]
    assert pending[0].href == f"{fake.url}/jobs/{second}"
    assert [j.job_id for j in client.jobs(phases=["PENDING", "QUEUED"], last=2)] == [
        second,
        third,
    ]
    client.jobs(after=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    assert fake.requests[-1].query == {"AFTER": ["2024-05-01T12:00:00Z"]}


def test_the_stand_in_answers_xml_clients_with_valid_uws_documents(
    client: OTFClient, fake: FakeUWS, image: Path, uws_schema: etree.XMLSchema
) -> None:
    """What the client tests run against is UWS: a client asking for XML (as pyvo does) gets
    job and job-list documents valid against the IVOA schema, in every phase."""
    done = client.submit(image, {"MODEL": "sep"}, run_id="xml")
    client.wait(done)
    failed = client.submit(image, {"MODEL": "broken"})
    client.wait(failed)
    pending = client.submit(image, {}, run=False)
    for path in (f"/jobs/{done}", f"/jobs/{failed}", f"/jobs/{pending}", "/jobs"):
        answer = httpx.get(fake.url + path, headers={"Accept": "text/xml"}, timeout=10)
        assert answer.status_code == 200
        doc = etree.fromstring(answer.content)
        assert uws_schema.validate(doc), (path, uws_schema.error_log)
    assert len(doc) == 3


# ------------------------------------------------------------------------ wait


def test_wait_follows_the_job_with_blocking_requests_until_it_completes(
    client: OTFClient, fake: FakeUWS, image: Path, delays: list[float], tmp_path: Path
) -> None:
    job_id = client.submit(image, {"MODEL": "sep"})

    job = client.wait(job_id)

    assert job.phase == "COMPLETED" and job.is_final
    assert fake.wait_values() == ["60", "60"]  # QUEUED -> EXECUTING -> COMPLETED
    assert delays == []  # no sleeping between requests
    ref = job.result("result")
    assert ref is not None and ref.size == len(VOTABLE)
    assert ref.mime_type == "application/x-votable+xml"

    assert client.result(job_id) == VOTABLE
    dest = tmp_path / "catalogue.xml"
    assert client.download_result(job_id, "result", dest) == len(VOTABLE)
    assert dest.read_bytes() == VOTABLE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue.xml", "field.fits"]


def test_wait_returns_an_errored_job_and_its_message(client: OTFClient, image: Path) -> None:
    job_id = client.submit(image, {"MODEL": "broken"})

    job = client.wait(job_id, poll_wait=5)

    assert job.phase == "ERROR"
    assert job.error_summary is not None
    assert job.error_summary.message == "model 'broken' crashed"
    assert client.error(job_id) == "model 'broken' crashed"


def test_wait_gives_up_at_the_timeout_with_the_job_still_active(
    client: OTFClient, fake: FakeUWS, image: Path
) -> None:
    job_id = client.submit(image, {"MODEL": "slow"})

    started = time.monotonic()
    job = client.wait(job_id, timeout=0.5)

    assert job.phase == "QUEUED" and job.is_active
    assert fake.wait_values() == ["1"]  # the WAIT is cut to the time left
    assert time.monotonic() - started < 4


def test_wait_rejects_a_meaningless_poll_wait(client: OTFClient) -> None:
    with pytest.raises(ValueError):
        client.wait("job1", poll_wait=0)


# ------------------------------------------------------------------------ phase, delete


def test_abort_then_abort_again_is_a_conflict(client: OTFClient, image: Path) -> None:
    job_id = client.submit(image, {})

    assert client.abort(job_id).phase == "ABORTED"
    with pytest.raises(OTFClientError) as info:
        client.abort(job_id)
    assert info.value.status_code == 409
    assert "PHASE" in info.value.message


def test_delete_removes_the_job(client: OTFClient, image: Path) -> None:
    job_id = client.submit(image, {})

    client.delete(job_id)

    with pytest.raises(OTFClientError) as info:
        client.job(job_id)
    assert info.value.status_code == 404


def test_missing_result_and_missing_error_are_404(client: OTFClient, image: Path) -> None:
    job_id = client.submit(image, {}, run=False)
    with pytest.raises(OTFClientError) as info:
        client.result(job_id)
    assert info.value.status_code == 404
    with pytest.raises(OTFClientError):
        client.error(job_id)


# ------------------------------------------------------------------------ 503 and health


def test_503_is_retried_as_long_as_retry_after_says(
    client: OTFClient, fake: FakeUWS, delays: list[float]
) -> None:
    fake.busy(2, retry_after="2")

    assert client.health() == {"status": "ok", "version": "test"}
    assert delays == [2.0, 2.0]


def test_503_without_retry_after_backs_off(
    client: OTFClient, fake: FakeUWS, delays: list[float]
) -> None:
    fake.busy(2, retry_after=None)

    client.health()

    assert delays == [1.0, 2.0]


def test_503_retries_are_bounded(client: OTFClient, fake: FakeUWS, delays: list[float]) -> None:
    fake.busy(100)

    with pytest.raises(OTFClientError) as info:
        client.health()

    assert info.value.status_code == 503
    assert info.value.message == "queue full, try again later"
    assert info.value.retry_after == 1.0
    assert len(delays) == client.max_retries == 3
    assert len(fake.requests) == 4


def test_503_asking_for_too_long_a_wait_is_raised_at_once(
    fake: FakeUWS, delays: list[float]
) -> None:
    fake.busy(1, retry_after="3600")
    client = OTFClient(fake.url, sleep=delays.append, max_retry_delay=30)
    with client, pytest.raises(OTFClientError) as info:
        client.health()
    assert info.value.retry_after == 3600.0
    assert delays == []


def test_ready_reports_a_503_instead_of_raising(
    client: OTFClient, fake: FakeUWS, delays: list[float]
) -> None:
    assert client.ready()["ready"] is True
    down = {"status": "fail", "checks": {"database": "unreachable"}}
    fake.answer("GET", "/health/ready", Answer.json(503, down), times=None)

    doc = client.ready()

    assert doc == {"status": "fail", "checks": {"database": "unreachable"}, "ready": False}
    assert delays == []


def test_real_sleep_honours_retry_after(fake: FakeUWS) -> None:
    fake.busy(1, retry_after="1")
    with OTFClient(fake.url) as client:
        started = time.monotonic()
        client.health()
        assert time.monotonic() - started >= 0.9


# ------------------------------------------------------------------------ configuration


def test_unreachable_server_raises_server_unreachable() -> None:
    client = OTFClient(f"http://127.0.0.1:{_closed_port()}")
    with client, pytest.raises(ServerUnreachable) as info:
        client.health()
    assert "cannot reach" in str(info.value)


def test_url_and_token_come_from_the_environment(
    fake: FakeUWS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTF_URL", fake.url + "/")
    monkeypatch.setenv("OTF_TOKEN", "from-env")
    with OTFClient() as client:
        assert client.url == fake.url
        client.health()
    assert fake.requests[-1].header("Authorization") == "Bearer from-env"


def test_no_token_sends_no_authorization(fake: FakeUWS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTF_TOKEN", raising=False)
    with OTFClient(fake.url) as client:
        client.health()
    assert fake.requests[-1].header("Authorization") is None
    assert "***" not in repr(client)


def test_default_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTF_URL", raising=False)
    with OTFClient() as client:
        assert client.url == "http://127.0.0.1:8000"


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://host/", "http://"])
def test_a_malformed_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        OTFClient(url)


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    later = _retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True))
    assert later is not None and 25 < later <= 30
    assert _retry_after(format_datetime(datetime(2000, 1, 1, tzinfo=UTC), usegmt=True)) == 0.0


def test_the_token_is_held_as_a_secret() -> None:
    """The bearer token is sent, but never shows in the client's repr or its attributes."""
    client = OTFClient("http://127.0.0.1:9", "s3cret-token")
    try:
        assert "s3cret-token" not in repr(client)
        assert "s3cret-token" not in repr(vars(client))
        assert client._headers(None)["Authorization"] == "Bearer s3cret-token"
    finally:
        client.close()
