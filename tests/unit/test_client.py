"""Tests of :mod:`astro_otf.client` against a small UWS look-alike served over loopback.

The fake service below speaks just enough of the astro-otf HTTP contract (303 after
POST, JSON job documents, blocking WAIT, 503 with Retry-After, text/plain refusals) for
the client's behaviour on the wire to be checked with real HTTP, without the real
server, which has its own end-to-end tests.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from astro_otf.client import (
    Job,
    OTFClient,
    OTFClientError,
    ProtocolError,
    ServerUnreachable,
)
from astro_otf.client.api import _retry_after

VOTABLE = b"""<?xml version="1.0" encoding="utf-8"?>
<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
 <RESOURCE type="results">
  <TABLE name="sources">
   <FIELD name="ra" datatype="double" unit="deg"/>
   <FIELD name="dec" datatype="double" unit="deg"/>
   <FIELD name="flux" datatype="double" unit="Jy"/>
   <DATA><TABLEDATA>
    <TR><TD>10.0</TD><TD>-30.0</TD><TD>0.5</TD></TR>
    <TR><TD>10.1</TD><TD>-30.1</TD><TD>0.2</TD></TR>
    <TR><TD>10.2</TD><TD>-30.2</TD><TD>0.1</TD></TR>
   </TABLEDATA></DATA>
  </TABLE>
 </RESOURCE>
</VOTABLE>
"""

ACTIVE = ("PENDING", "QUEUED", "EXECUTING")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Upload:
    form: dict[str, str]
    filename: str
    content: bytes


@dataclass
class FakeUWS:
    """State of the fake service, shared by its request handler threads."""

    url: str = ""
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    #: (method, path, query, headers) of every request.
    requests: list[tuple[str, str, dict[str, list[str]], dict[str, str]]] = field(
        default_factory=list
    )
    #: Answer this many coming requests with 503 (and ``retry_after``, when set).
    busy: int = 0
    retry_after: str | None = "1"
    ready: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_values(self) -> list[str]:
        return [q["WAIT"][0] for m, _, q, _ in self.requests if m == "GET" and "WAIT" in q]

    def new_job(self, form: dict[str, str]) -> str:
        job_id = f"job{len(self.jobs) + 1}"
        params = {k: v for k, v in form.items() if k.upper() not in ("PHASE", "RUNID")}
        self.jobs[job_id] = {
            "jobId": job_id,
            "runId": form.get("RUNID"),
            "ownerId": "anonymous",
            "phase": "QUEUED" if form.get("PHASE") == "RUN" else "PENDING",
            "quote": None,
            "creationTime": _now(),
            "startTime": None,
            "endTime": None,
            "executionDuration": 600,
            "destruction": "2030-01-01T00:00:00Z",
            "parameters": params,
            "results": [],
            "errorSummary": None,
            "jobInfo": {},
        }
        return job_id

    def advance(self, job: dict[str, Any]) -> None:
        """One step of a job's life, as if a worker moved it on."""
        if job["phase"] == "QUEUED":
            job["phase"] = "EXECUTING"
            job["startTime"] = _now()
        elif job["phase"] == "EXECUTING":
            job["endTime"] = _now()
            if job["parameters"].get("MODEL") == "broken":
                job["phase"] = "ERROR"
                job["errorSummary"] = {"type": "fatal", "message": "model 'broken' crashed"}
            else:
                job["phase"] = "COMPLETED"
                job["results"] = [
                    {
                        "id": "result",
                        "href": f"{self.url}/jobs/{job['jobId']}/results/result",
                        "mimeType": "application/x-votable+xml",
                        "size": len(VOTABLE),
                    }
                ]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per answer: no Nagle / delayed-ACK stalls
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---------------------------------------------------------------- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _text(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, message.encode(), headers=headers)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _see_other(self, location: str) -> None:
        self._send(303, headers={"Location": location})

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        body = self._body() if method in ("POST", "PUT") else b""
        with fake.lock:
            fake.requests.append((method, split.path, query, dict(self.headers.items())))
            if fake.busy > 0:
                fake.busy -= 1
                headers = {"Retry-After": fake.retry_after} if fake.retry_after else {}
                self._text(503, "queue full, try again later", headers)
                return
        parts = [p for p in split.path.split("/") if p]
        getattr(self, f"_{method.lower()}")(fake, parts, query, body)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _job_or_404(self, fake: FakeUWS, job_id: str) -> dict[str, Any] | None:
        job = fake.jobs.get(job_id)
        if job is None:
            self._text(404, f"no job with id '{job_id}'")
        return job

    # ---------------------------------------------------------------- routes

    def _get(self, fake: FakeUWS, parts: list[str], query: dict[str, list[str]], _: bytes) -> None:
        if parts == ["health"]:
            self._json(200, {"status": "ok", "version": "test"})
        elif parts == ["health", "ready"]:
            checks = {"database": "ok" if fake.ready else "unreachable"}
            self._json(
                200 if fake.ready else 503,
                {"status": "ok" if fake.ready else "fail", "checks": checks},
            )
        elif parts == ["jobs"]:
            with fake.lock:
                jobs = list(fake.jobs.values())
            phases = query.get("PHASE")
            if phases:
                jobs = [j for j in jobs if j["phase"] in phases]
            if "LAST" in query:
                jobs = jobs[-int(query["LAST"][0]) :]
            keys = ("jobId", "phase", "runId", "ownerId", "creationTime")
            summaries = [
                {**{k: j[k] for k in keys}, "href": f"{fake.url}/jobs/{j['jobId']}"} for j in jobs
            ]
            self._json(200, {"jobs": summaries})
        elif len(parts) == 2 and parts[0] == "jobs":
            self._get_job(fake, parts[1], query)
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "error":
            job = self._job_or_404(fake, parts[1])
            if job is not None:
                if job["errorSummary"] is None:
                    self._text(404, f"job '{parts[1]}' has no error")
                else:
                    self._text(200, job["errorSummary"]["message"])
        elif parts[:1] == ["jobs"] and parts[2:] == ["results", "result"]:
            job = self._job_or_404(fake, parts[1])
            if job is not None:
                if job["phase"] == "COMPLETED":
                    self._send(200, VOTABLE, "application/x-votable+xml")
                else:
                    self._text(404, f"job '{parts[1]}' has no result 'result'")
        else:
            self._text(404, f"no such resource: {self.path}")

    def _get_job(self, fake: FakeUWS, job_id: str, query: dict[str, list[str]]) -> None:
        if job_id == "garbled":
            self._send(200, b"<html>oops</html>", "text/html")
            return
        with fake.lock:
            job = self._job_or_404(fake, job_id)
        if job is None:
            return
        if "WAIT" in query and job["phase"] in ACTIVE:
            wait = float(query["WAIT"][0])
            if job["phase"] == "PENDING" or job["parameters"].get("MODEL") == "slow":
                # Nothing will happen: block for the whole WAIT, like the real service.
                time.sleep(min(wait, 5.0))
            else:
                time.sleep(0.02)
                with fake.lock:
                    fake.advance(job)
        if "json" in self.headers.get("Accept", ""):
            self._json(200, job)
        else:
            self._send(200, b"<uws:job/>", "text/xml")

    def _post(self, fake: FakeUWS, parts: list[str], _: dict[str, list[str]], body: bytes) -> None:
        if parts == ["jobs"]:
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
            )
            form: dict[str, str] = {}
            filename, content = "", b""
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                assert isinstance(name, str) and isinstance(payload, bytes)
                if name == "IMAGE":
                    filename, content = part.get_filename() or "", payload
                else:
                    form[name] = payload.decode()
            if form.get("thresh") == "abc":
                self._text(400, "THRESH: 'abc' is not a number")
                return
            with fake.lock:
                fake.uploads.append(Upload(form, filename, content))
                job_id = fake.new_job(form)
            self._see_other(f"{fake.url}/jobs/{job_id}")
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "phase":
            with fake.lock:
                job = self._job_or_404(fake, parts[1])
                if job is None:
                    return
                phase = parse_qs(body.decode()).get("PHASE", [""])[0]
                if phase == "RUN" and job["phase"] == "PENDING":
                    job["phase"] = "QUEUED"
                elif phase == "ABORT" and job["phase"] in ACTIVE:
                    job["phase"] = "ABORTED"
                else:
                    self._text(409, f"PHASE: cannot {phase} a job that is {job['phase']}")
                    return
            self._see_other(f"{fake.url}/jobs/{parts[1]}")
        else:
            self._text(404, f"no such resource: {self.path}")

    def _delete(self, fake: FakeUWS, parts: list[str], _: dict[str, list[str]], __: bytes) -> None:
        with fake.lock:
            if len(parts) == 2 and self._job_or_404(fake, parts[1]) is not None:
                del fake.jobs[parts[1]]
                self._see_other(f"{fake.url}/jobs")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeUWS


@pytest.fixture
def fake() -> Iterator[FakeUWS]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.fake = FakeUWS(url=f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


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
    (upload,) = fake.uploads
    assert upload.filename == "field.fits"
    assert upload.content == image.read_bytes()
    assert upload.form == {"MODEL": "sep", "thresh": "5", "PHASE": "RUN", "RUNID": "night-1"}
    method, path, _, headers = fake.requests[0]
    assert (method, path) == ("POST", "/jobs")
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["User-Agent"].startswith("astro-otf-client/")
    assert len(fake.requests) == 1  # the 303 is read, not followed with a re-POST


def test_submit_without_run_leaves_the_job_pending_until_run(
    client: OTFClient, fake: FakeUWS, image: Path
) -> None:
    job_id = client.submit(image, {"MODEL": "sep"}, run=False)
    assert fake.uploads[0].form == {"MODEL": "sep"}

    assert client.job(job_id).phase == "PENDING"
    assert client.run(job_id).phase == "QUEUED"


def test_submit_refusal_carries_the_servers_message(client: OTFClient, image: Path) -> None:
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
    fake.busy = 1

    job_id = client.submit(image, {"MODEL": "sep"})

    assert delays == [1.0]
    assert [m for m, *_ in fake.requests] == ["POST", "POST"]
    assert fake.uploads[0].content == image.read_bytes()
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
    _, _, _, headers = fake.requests[-1]
    assert headers["Accept"] == "application/json"


def test_unknown_job_is_a_404_with_the_servers_message(client: OTFClient) -> None:
    with pytest.raises(OTFClientError) as info:
        client.job("nope")
    assert info.value.status_code == 404
    assert info.value.message == "no job with id 'nope'"


def test_a_non_json_job_document_is_a_protocol_error(client: OTFClient) -> None:
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
    _, _, query, _ = fake.requests[-1]
    assert query == {"AFTER": ["2024-05-01T12:00:00Z"]}


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
    fake.busy, fake.retry_after = 2, "2"

    assert client.health() == {"status": "ok", "version": "test"}
    assert delays == [2.0, 2.0]


def test_503_without_retry_after_backs_off(
    client: OTFClient, fake: FakeUWS, delays: list[float]
) -> None:
    fake.busy, fake.retry_after = 2, None

    client.health()

    assert delays == [1.0, 2.0]


def test_503_retries_are_bounded(client: OTFClient, fake: FakeUWS, delays: list[float]) -> None:
    fake.busy = 100

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
    fake.busy, fake.retry_after = 1, "3600"
    client = OTFClient(fake.url, sleep=delays.append, max_retry_delay=30)
    with client, pytest.raises(OTFClientError) as info:
        client.health()
    assert info.value.retry_after == 3600.0
    assert delays == []


def test_ready_reports_a_503_instead_of_raising(
    client: OTFClient, fake: FakeUWS, delays: list[float]
) -> None:
    assert client.ready()["ready"] is True
    fake.ready = False

    doc = client.ready()

    assert doc == {"status": "fail", "checks": {"database": "unreachable"}, "ready": False}
    assert delays == []


def test_real_sleep_honours_retry_after(fake: FakeUWS) -> None:
    fake.busy, fake.retry_after = 1, "1"
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
    assert fake.requests[-1][3]["Authorization"] == "Bearer from-env"


def test_no_token_sends_no_authorization(fake: FakeUWS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTF_TOKEN", raising=False)
    with OTFClient(fake.url) as client:
        client.health()
    assert "Authorization" not in fake.requests[-1][3]
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
