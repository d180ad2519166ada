"""A small stand-in for the astro-otf service, served over loopback, for the client tests.

The client library, the CLI and the event reader are checked on the wire with real HTTP,
but without the real server (which has its own end-to-end tests): a test wants answers it
can choose, including ones the real service gives only under load (503 with Retry-After),
and to see exactly what the client sent. :class:`FakeUWS` speaks just enough of the
service's HTTP contract for that:

* jobs: ``POST /jobs`` (multipart, the IMAGE file and the parameters) creates a job and
  answers 303 to it; ``GET /jobs/{id}`` gives its document, JSON when asked, else a UWS 1.1
  ``uws:job`` document valid against the IVOA schema; ``WAIT`` blocks, and on an active job
  moves it one step along :attr:`FakeUWS.life` (as if a worker did); ``POST .../phase``
  (RUN, ABORT), ``DELETE``, ``/error``, ``/results/{id}``, and the job list with PHASE and
  LAST filters (JSON, or a ``uws:jobs`` document);
* ``/health`` and ``/health/ready``;
* ``/jobs/events``: Server-Sent Events, one round of text per connection
  (:attr:`FakeUWS.event_rounds`), dropped after each round but the last, which stays open
  and silent, so that reconnection can be tested;
* every request is recorded (:attr:`FakeUWS.requests`), with its form fields and files;
* any answer can be scripted per method and path (:meth:`FakeUWS.answer`), ``*`` for any:
  a scripted answer comes before the built-in ones; a function may choose per request, or
  leave a request to the built-in answer, or send nothing (:data:`SILENT`).

Use it as a context manager in a fixture::

    @pytest.fixture
    def fake() -> Iterator[FakeUWS]:
        with FakeUWS() as fake:
            yield fake
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from lxml import etree

__all__ = ["ACTIVE", "SILENT", "VOTABLE", "Answer", "FakeUWS", "Request"]

#: A catalogue with three sources, the fake's ``result`` of every completed job.
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

#: The phases in which a job can still change.
ACTIVE = ("PENDING", "QUEUED", "EXECUTING")

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
_NSMAP = {"uws": UWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}

_XML_NAME = re.compile(r"[^A-Za-z0-9_.-]")

#: The longest a blocking WAIT holds a request here (tests never need more).
MAX_WAIT_S = 5.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Request:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    #: The headers as sent (names as the client spelled them); see :meth:`header`.
    headers: dict[str, str]
    body: bytes = b""
    #: Form fields of a multipart or urlencoded body (files excluded).
    form: dict[str, str] = field(default_factory=dict)
    #: Files of a multipart body: field name -> (file name, content).
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (any case), None when it was not sent."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass(frozen=True)
class Answer:
    """A scripted answer: status, body, media type and further headers."""

    status: int
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Answer:
        """``doc`` as a JSON answer."""
        return cls(status, json.dumps(doc), "application/json", headers or {})


#: An answer that sends nothing and closes the connection (a client left waiting, e.g. while
#: the test interrupts it).
SILENT = Answer(0)

#: What :meth:`FakeUWS.answer` takes: a fixed answer, or a function of the request that
#: gives one (None: the built-in answer).
Script = Answer | Callable[[Request], Answer | None]


class FakeUWS:
    """The stand-in service: its state, what it was sent, and the server thread.

    Job documents are the JSON the real service gives (``jobId``, ``phase``, ``parameters``,
    ``results``, ``errorSummary``...), kept in :attr:`jobs` where a test may also change
    them. A job whose MODEL is in :attr:`failing` ends in ERROR with that message; one whose
    MODEL is in :attr:`stuck` (and a PENDING job) never moves, so a WAIT on it blocks for
    its whole length (at most :data:`MAX_WAIT_S`).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        #: The phases a submitted job goes through, one step per WAIT, from the second on.
        self.life: tuple[str, ...] = ("QUEUED", "EXECUTING", "COMPLETED")
        #: MODEL value -> the error message its jobs end with.
        self.failing: dict[str, str] = {"broken": "model 'broken' crashed"}
        #: MODEL values whose jobs never move on.
        self.stuck: set[str] = {"slow"}
        #: Result id -> (bytes, media type) of every completed job.
        self.result_files: dict[str, tuple[bytes, str]] = {
            "result": (VOTABLE, "application/x-votable+xml")
        }
        #: The text sent on each connection to ``/jobs/events``, in order.
        self.event_rounds: list[str] = []
        self._event_connections = 0
        self._scripts: dict[tuple[str, str], list[tuple[Script, int | None]]] = {}
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.01,), daemon=True
        )

    # -- lifetime ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving (in a daemon thread)."""
        self._thread.start()
        return self

    def close(self) -> None:
        """End every open answer (a silent event stream, a blocking WAIT) and stop serving."""
        self._closing.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- what a test sets and reads ------------------------------------------------------------

    def answer(self, method: str, path: str, script: Script, times: int | None = 1) -> None:
        """Answer the next ``times`` requests of ``method`` to ``path`` (``*``: any method or
        any path; ``times`` None: every one) with ``script`` instead of the built-in answer
        (a function returning None leaves its request to the built-in answer). Scripts for
        one method and path are used in the order given."""
        with self.lock:
            self._scripts.setdefault((method.upper(), path), []).append((script, times))

    def busy(self, times: int, retry_after: str | None = "1") -> None:
        """Refuse the next ``times`` requests, whatever they are, as a full queue does: 503,
        with ``Retry-After`` when given."""
        headers = {"Retry-After": retry_after} if retry_after else {}
        self.answer("*", "*", Answer(503, "queue full, try again later", headers=headers), times)

    def sent(self, method: str, path: str) -> list[Request]:
        """The requests received with ``method`` for ``path``, in order."""
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def finish(self, job_id: str) -> None:
        """Move job ``job_id`` along :attr:`life` to its end at once (COMPLETED with its
        results, or ERROR), as if its worker had run: for a test of what a client does with
        a job that has ended, without waiting for it."""
        with self.lock:
            job = self.jobs[job_id]
            while job["phase"] in self.life[:-1]:
                self._advance(job)

    def wait_values(self) -> list[str]:
        """The WAIT of every GET that had one, in order."""
        with self.lock:
            return [r.query["WAIT"][0] for r in self.requests if "WAIT" in r.query]

    # -- the service's behaviour ---------------------------------------------------------------

    def _scripted(self, request: Request) -> Script | None:
        """The script that answers ``request``, if any (used up when its count is)."""
        with self.lock:
            for key in (
                (request.method, request.path),
                (request.method, "*"),
                ("*", request.path),
                ("*", "*"),
            ):
                queue = self._scripts.get(key)
                if not queue:
                    continue
                script, times = queue[0]
                if times is not None:
                    if times <= 1:
                        queue.pop(0)
                    else:
                        queue[0] = (script, times - 1)
                return script
        return None

    def _new_job(self, form: Mapping[str, str]) -> str:
        job_id = f"job{len(self.jobs) + 1}"
        params = {k: v for k, v in form.items() if k.upper() not in ("PHASE", "RUNID")}
        self.jobs[job_id] = {
            "jobId": job_id,
            "runId": form.get("RUNID"),
            "ownerId": "anonymous",
            "phase": self.life[0] if form.get("PHASE") == "RUN" else "PENDING",
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

    def _moves(self, job: Mapping[str, Any]) -> bool:
        """Whether a WAIT sees ``job`` move on (else it blocks for the whole WAIT)."""
        return job["phase"] in self.life[:-1] and job["parameters"].get("MODEL") not in self.stuck

    def _advance(self, job: dict[str, Any]) -> None:
        """One step of a job's life, as if a worker moved it on."""
        phase = self.life[self.life.index(job["phase"]) + 1]
        if phase == "EXECUTING":
            job["startTime"] = _now()
        if phase != self.life[-1]:
            job["phase"] = phase
            return
        job["endTime"] = _now()
        job["startTime"] = job["startTime"] or job["endTime"]
        message = self.failing.get(job["parameters"].get("MODEL", ""))
        if message is not None:
            job["phase"] = "ERROR"
            job["errorSummary"] = {"type": "fatal", "message": message}
            return
        job["phase"] = "COMPLETED"
        job["results"] = [
            {
                "id": result_id,
                "href": f"{self.url}/jobs/{job['jobId']}/results/{result_id}",
                "mimeType": mime_type,
                "size": len(content),
            }
            for result_id, (content, mime_type) in self.result_files.items()
        ]

    def _summaries(self, query: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        with self.lock:
            jobs = list(self.jobs.values())
        phases = query.get("PHASE")
        if phases:
            jobs = [j for j in jobs if j["phase"] in phases]
        if "LAST" in query:
            jobs = jobs[-int(query["LAST"][0]) :]
        keys = ("jobId", "phase", "runId", "ownerId", "creationTime")
        return [{**{k: j[k] for k in keys}, "href": f"{self.url}/jobs/{j['jobId']}"} for j in jobs]


# -- UWS XML ------------------------------------------------------------------------------------


def _el(parent: etree._Element, name: str, text: object = None) -> etree._Element:
    """A ``uws:`` child of ``parent``; a None ``text`` of a nillable element is xsi:nil."""
    element = etree.SubElement(parent, f"{{{UWS_NS}}}{name}")
    if text is not None:
        element.text = str(text)
    return element


def _nillable(parent: etree._Element, name: str, value: object) -> None:
    element = _el(parent, name, value)
    if value is None:
        element.set(f"{{{XSI_NS}}}nil", "true")


def job_xml(job: Mapping[str, Any]) -> bytes:
    """A JSON job document as a UWS 1.1 ``uws:job`` document (schema order and nils)."""
    root = etree.Element(f"{{{UWS_NS}}}job", nsmap=_NSMAP)
    root.set("version", "1.1")
    _el(root, "jobId", job["jobId"])
    if job.get("runId") is not None:
        _el(root, "runId", job["runId"])
    _nillable(root, "ownerId", job.get("ownerId"))
    _el(root, "phase", job["phase"])
    _nillable(root, "quote", job.get("quote"))
    if job.get("creationTime") is not None:
        _el(root, "creationTime", job["creationTime"])
    _nillable(root, "startTime", job.get("startTime"))
    _nillable(root, "endTime", job.get("endTime"))
    _el(root, "executionDuration", job.get("executionDuration", 0))
    _nillable(root, "destruction", job.get("destruction"))
    parameters = _el(root, "parameters")
    for name, value in job.get("parameters", {}).items():
        _el(parameters, "parameter", value).set("id", name)
    results = _el(root, "results")
    for result in job.get("results", []):
        item = _el(results, "result")
        item.set("id", result["id"])
        item.set(f"{{{XLINK_NS}}}href", result["href"])
        if "mimeType" in result:
            item.set("mime-type", result["mimeType"])
        if "size" in result:
            item.set("size", str(result["size"]))
    error = job.get("errorSummary")
    if error is not None:
        summary = _el(root, "errorSummary")
        summary.set("type", error["type"])
        summary.set("hasDetail", "true")
        _el(summary, "message", error["message"])
    info = job.get("jobInfo") or {}
    if info:
        box = _el(root, "jobInfo")
        for key, value in info.items():
            etree.SubElement(box, _XML_NAME.sub("_", key)).text = str(value)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def jobs_xml(summaries: list[dict[str, Any]]) -> bytes:
    """A job list as a UWS 1.1 ``uws:jobs`` document."""
    root = etree.Element(f"{{{UWS_NS}}}jobs", nsmap=_NSMAP)
    root.set("version", "1.1")
    for summary in summaries:
        ref = _el(root, "jobref")
        ref.set("id", summary["jobId"])
        ref.set(f"{{{XLINK_NS}}}href", summary["href"])
        _el(ref, "phase", summary["phase"])
        if summary.get("runId") is not None:
            _el(ref, "runId", summary["runId"])
        _nillable(ref, "ownerId", summary.get("ownerId"))
        _el(ref, "creationTime", summary["creationTime"])
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


# -- HTTP -----------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeUWS


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per answer: no Nagle / delayed-ACK stalls
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests look at :attr:`FakeUWS.requests` instead."""

    def do_GET(self) -> None:
        """Answer a GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Answer a POST."""
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        """Answer a DELETE."""
        self._dispatch("DELETE")

    # -- plumbing ------------------------------------------------------------------------------

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

    def _read(self, method: str) -> Request:
        split = urlsplit(self.path)
        body = self._body() if method in ("POST", "PUT") else b""
        form: dict[str, str] = {}
        files: dict[str, tuple[str, bytes]] = {}
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
            )
            for part in message.iter_parts():
                name = str(part.get_param("name", header="content-disposition"))
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                filename = part.get_filename()
                if filename is None:
                    form[name] = payload.decode()
                else:
                    files[name] = (filename, payload)
        elif ctype.startswith("application/x-www-form-urlencoded"):
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        return Request(
            method,
            split.path,
            parse_qs(split.query),
            dict(self.headers.items()),
            body,
            form,
            files,
        )

    def _send(
        self,
        status: int,
        body: bytes | str = b"",
        ctype: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, doc: Any) -> None:
        self._send(status, json.dumps(doc), "application/json")

    def _see_other(self, location: str) -> None:
        self._send(303, headers={"Location": location})

    def _wants_json(self) -> bool:
        return "json" in self.headers.get("Accept", "")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        request = self._read(method)
        with fake.lock:
            fake.requests.append(request)
        script = fake._scripted(request)
        answer = script(request) if callable(script) else script
        if answer is SILENT:
            self.close_connection = True
            return
        if answer is not None:
            self._send(answer.status, answer.body, answer.content_type, answer.headers)
            return
        parts = [p for p in request.path.split("/") if p]
        getattr(self, f"_{method.lower()}")(fake, parts, request)

    def _job_or_404(self, fake: FakeUWS, job_id: str) -> dict[str, Any] | None:
        job = fake.jobs.get(job_id)
        if job is None:
            self._send(404, f"no job with id '{job_id}'")
        return job

    # -- routes --------------------------------------------------------------------------------

    def _get(self, fake: FakeUWS, parts: list[str], request: Request) -> None:
        if parts == ["health"]:
            self._json(200, {"status": "ok", "version": "test"})
        elif parts == ["health", "ready"]:
            self._json(200, {"status": "ok", "checks": {"database": "ok"}})
        elif parts == ["jobs"]:
            summaries = fake._summaries(request.query)
            if self._wants_json():
                self._json(200, {"jobs": summaries})
            else:
                self._send(200, jobs_xml(summaries), "text/xml")
        elif parts == ["jobs", "events"]:
            self._events(fake)
        elif len(parts) == 2 and parts[0] == "jobs":
            self._get_job(fake, parts[1], request)
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "error":
            with fake.lock:
                job = self._job_or_404(fake, parts[1])
                if job is not None:
                    if job["errorSummary"] is None:
                        self._send(404, f"job '{parts[1]}' has no error")
                    else:
                        self._send(200, job["errorSummary"]["message"])
        elif len(parts) == 4 and parts[0] == "jobs" and parts[2] == "results":
            with fake.lock:
                job = self._job_or_404(fake, parts[1])
                listed = job is not None and any(r["id"] == parts[3] for r in job["results"])
            if job is None:
                return
            if job["phase"] == "COMPLETED" and listed and parts[3] in fake.result_files:
                content, mime_type = fake.result_files[parts[3]]
                self._send(200, content, mime_type)
            else:
                self._send(404, f"job '{parts[1]}' has no result '{parts[3]}'")
        else:
            self._send(404, f"no such resource: {self.path}")

    def _get_job(self, fake: FakeUWS, job_id: str, request: Request) -> None:
        with fake.lock:
            job = self._job_or_404(fake, job_id)
            moves = job is not None and fake._moves(job)
        if job is None:
            return
        if "WAIT" in request.query and job["phase"] in ACTIVE:
            wait = float(request.query["WAIT"][0])
            if moves:
                fake._closing.wait(0.02)
                with fake.lock:
                    if fake._moves(job):  # not aborted meanwhile
                        fake._advance(job)
            else:  # nothing will happen: block for the whole WAIT, like the real service
                fake._closing.wait(min(wait, MAX_WAIT_S))
        with fake.lock:
            doc = dict(job)
        if self._wants_json():
            self._json(200, doc)
        else:
            self._send(200, job_xml(doc), "text/xml")

    def _events(self, fake: FakeUWS) -> None:
        """One round of :attr:`FakeUWS.event_rounds`, then the connection is dropped; the
        last round's connection stays open and silent until the fake closes."""
        with fake.lock:
            index = fake._event_connections
            fake._event_connections += 1
            rounds = list(fake.event_rounds)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write((rounds[index] if index < len(rounds) else "").encode())
        self.wfile.flush()
        if index >= len(rounds) - 1:
            fake._closing.wait(10)
        self.close_connection = True

    def _post(self, fake: FakeUWS, parts: list[str], request: Request) -> None:
        if parts == ["jobs"]:
            with fake.lock:
                job_id = fake._new_job(request.form)
            self._see_other(f"{fake.url}/jobs/{job_id}")
        elif len(parts) == 3 and parts[0] == "jobs" and parts[2] == "phase":
            with fake.lock:
                job = self._job_or_404(fake, parts[1])
                if job is None:
                    return
                phase = request.form.get("PHASE", "")
                if phase == "RUN" and job["phase"] == "PENDING":
                    job["phase"] = fake.life[0]
                elif phase == "ABORT" and job["phase"] in ACTIVE:
                    job["phase"] = "ABORTED"
                else:
                    self._send(409, f"PHASE: cannot {phase} a job that is {job['phase']}")
                    return
            self._see_other(f"{fake.url}/jobs/{parts[1]}")
        else:
            self._send(404, f"no such resource: {self.path}")

    def _delete(self, fake: FakeUWS, parts: list[str], request: Request) -> None:
        with fake.lock:
            if len(parts) == 2 and parts[0] == "jobs":
                if self._job_or_404(fake, parts[1]) is not None:
                    del fake.jobs[parts[1]]
                    self._see_other(f"{fake.url}/jobs")
            else:
                self._send(404, f"no such resource: {self.path}")
