"""A typed, synchronous client for the astro-otf UWS 1.1 HTTP interface.

This module exists so that scripts, notebooks and the ``otf`` command line talk to a
running service through one tested piece of code that knows the wire contract (303
redirects after POST, JSON job documents, blocking ``WAIT`` requests, ``Retry-After`` on
a full queue, text/plain refusals) instead of each re-implementing it with raw HTTP.

It deliberately imports nothing from the server side of ``astro_otf``: a client install
needs only httpx, and the server is free to change its internals.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import ssl
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx
from pydantic import SecretStr

from astro_otf import __version__

if TYPE_CHECKING:
    from astro_otf.client.events import EventStream

#: Where the client looks when neither an argument nor ``OTF_URL`` names the service.
DEFAULT_URL = "http://127.0.0.1:8000"
#: Environment variable holding the service base URL.
URL_ENV = "OTF_URL"
#: Environment variable holding the bearer token.
TOKEN_ENV = "OTF_TOKEN"

#: UWS phases in which a job may still change by itself; ``WAIT`` blocks only in these.
#: HELD is one here: a job waiting for its data moves by itself when it comes.
ACTIVE_PHASES: frozenset[str] = frozenset({"PENDING", "QUEUED", "EXECUTING", "HELD"})
#: UWS phases a job never leaves (but for destruction).
FINAL_PHASES: frozenset[str] = frozenset({"COMPLETED", "ERROR", "ABORTED", "ARCHIVED"})

_JSON = "application/json"
#: Seconds added to a ``WAIT`` duration for the HTTP read timeout, so that the server's
#: own answer at the end of the wait always arrives before the client gives up.
_WAIT_SLACK = 30.0
_CHUNK = 1 << 16
_MAX_MESSAGE = 2000


# --------------------------------------------------------------------------- errors


class OTFError(Exception):
    """Base class of every error this client raises."""


class OTFClientError(OTFError):
    """The service answered with an HTTP error; ``message`` is its explanation."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.url = url
        #: Seconds the server asked us to wait (503 only), when it said so.
        self.retry_after = retry_after

    def __str__(self) -> str:
        return self.message


class ServerUnreachable(OTFError):
    """No HTTP answer: connection refused, DNS failure, timeout, broken connection."""


class ProtocolError(OTFError):
    """The service answered, but not in the shape the contract promises."""


# --------------------------------------------------------------------------- data


def _parse_time(value: Any, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{name}: expected an ISO-8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolError(f"{name}: {value!r} is not an ISO-8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ProtocolError(f"{name}: expected an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ProtocolError(f"{name}: expected an integer, got {value!r}") from None


def _param_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _require(doc: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in doc or doc[key] is None:
        raise ProtocolError(f"{what} without {key!r}: {doc!r}"[:_MAX_MESSAGE])
    return doc[key]


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class ResultRef:
    """One result a job produced: ``href`` is where to fetch it."""

    id: str
    href: str
    mime_type: str | None = None
    size: int | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ResultRef:
        """Parse one entry of a job's JSON ``results``; ProtocolError when it has no ``id``."""
        doc = _mapping(doc, "result")
        return cls(
            id=str(_require(doc, "id", "result")),
            href=str(doc.get("href") or ""),
            mime_type=_opt_str(doc.get("mimeType")),
            size=_opt_int(doc.get("size"), "result size"),
        )


@dataclass(frozen=True, slots=True)
class ErrorSummary:
    """Why a job ended in ERROR (UWS ``errorSummary``)."""

    type: str
    message: str

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ErrorSummary:
        """Parse a job's JSON ``errorSummary`` (a missing type reads as ``fatal``)."""
        doc = _mapping(doc, "errorSummary")
        return cls(type=str(doc.get("type") or "fatal"), message=str(doc.get("message") or ""))


def _lenient_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _lenient_int(value: Any) -> int | None:
    number = _lenient_float(value)
    return None if number is None else int(number)


def _lenient_time(value: Any) -> datetime | None:
    try:
        return _parse_time(value, "time")
    except ProtocolError:
        return None


@dataclass(frozen=True, slots=True)
class Progress:
    """How far an active job has got (``jobInfo.progress``, list entries and events).

    A QUEUED job has ``stage == "queued"`` and its ``position`` in a queue ``of`` jobs;
    an EXECUTING one a stage (``loading``, ``reading``, ``inference``, ``fitting``,
    ``writing``), ``fraction`` 0..1 of the whole job and tile counts. ``eta`` is the
    server's estimate of the end. Progress is advisory: a field of the wrong type is
    left out rather than refused.
    """

    stage: str
    fraction: float | None = None
    position: int | None = None
    of: int | None = None
    tiles_done: int | None = None
    tiles_total: int | None = None
    eta: datetime | None = None
    batch_jobs: int | None = None
    updated: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_queued(self) -> bool:
        """True while the job waits in the queue (``position`` and ``of`` then apply)."""
        return self.stage == "queued"

    def eta_seconds(self, now: datetime | None = None) -> float | None:
        """Seconds until the estimated end (0 when it is past; None when unknown)."""
        if self.eta is None:
            return None
        return max(0.0, (self.eta - (now or datetime.now(UTC))).total_seconds())

    @classmethod
    def from_json(cls, doc: Any) -> Progress | None:
        """The progress in ``doc``, or None when there is none (null, absent, not an object)."""
        if not isinstance(doc, Mapping) or not doc:
            return None
        fraction = _lenient_float(doc.get("fraction"))
        return cls(
            stage=str(doc.get("stage") or "running"),
            fraction=None if fraction is None else min(1.0, max(0.0, fraction)),
            position=_lenient_int(doc.get("position")),
            of=_lenient_int(doc.get("of")),
            tiles_done=_lenient_int(doc.get("tiles_done")),
            tiles_total=_lenient_int(doc.get("tiles_total")),
            eta=_lenient_time(doc.get("eta")),
            batch_jobs=_lenient_int(doc.get("batch_jobs")),
            updated=_lenient_time(doc.get("updated")),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the service describes it at one moment.

    ``parameters`` maps names to their string values (JSON numbers and booleans are
    rendered as text, nulls are left out). ``raw`` is the document as received, for
    fields this class does not model.
    """

    job_id: str
    phase: str
    run_id: str | None = None
    owner_id: str | None = None
    quote: str | None = None
    creation_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    execution_duration: int | None = None
    destruction: datetime | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    results: list[ResultRef] = field(default_factory=list)
    error_summary: ErrorSummary | None = None
    job_info: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_active(self) -> bool:
        """True while the job may still change phase by itself."""
        return self.phase in ACTIVE_PHASES

    @property
    def is_final(self) -> bool:
        """True once the job can no longer run."""
        return self.phase in FINAL_PHASES

    def result(self, result_id: str = "result") -> ResultRef | None:
        """The result named ``result_id``, or None when the job has no such result."""
        return next((r for r in self.results if r.id == result_id), None)

    @property
    def progress(self) -> Progress | None:
        """How far the job has got while it is active (``jobInfo.progress``)."""
        return Progress.from_json(self.job_info.get("progress"))

    @property
    def cached_from(self) -> str | None:
        """The job whose results this one reuses without running (``jobInfo.cached_from``)."""
        return _opt_str(self.job_info.get("cached_from")) or None

    @property
    def input(self) -> dict[str, Any]:
        """What the service knows of the input image (``jobInfo.input``): filename, sha256,
        bytes, upload_id, object, telescope, frequency_hz, shape."""
        value = self.job_info.get("input")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def image(self) -> str | None:
        """The input image's file name, when the service says."""
        return _opt_str(self.input.get("filename")) or None

    @property
    def quote_time(self) -> datetime | None:
        """The UWS quote (estimated end time) as a time, when there is a readable one."""
        return _lenient_time(self.quote)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Job:
        """Parse the service's JSON job document; ProtocolError when it is not one (no
        ``jobId`` or ``phase``, a field of the wrong type, an unreadable time)."""
        doc = _mapping(doc, "job")
        params = _mapping(doc.get("parameters") or {}, "parameters")
        results = doc.get("results") or []
        if not isinstance(results, list):
            raise ProtocolError(f"results: expected a JSON array, got {type(results).__name__}")
        summary = doc.get("errorSummary")
        info = doc.get("jobInfo") or {}
        return cls(
            job_id=str(_require(doc, "jobId", "job")),
            phase=str(_require(doc, "phase", "job")).upper(),
            run_id=_opt_str(doc.get("runId")),
            owner_id=_opt_str(doc.get("ownerId")),
            quote=_opt_str(doc.get("quote")),
            creation_time=_parse_time(doc.get("creationTime"), "creationTime"),
            start_time=_parse_time(doc.get("startTime"), "startTime"),
            end_time=_parse_time(doc.get("endTime"), "endTime"),
            execution_duration=_opt_int(doc.get("executionDuration"), "executionDuration"),
            destruction=_parse_time(doc.get("destruction"), "destruction"),
            parameters={str(k): _param_str(v) for k, v in params.items() if v is not None},
            results=[ResultRef.from_json(r) for r in results],
            error_summary=None if summary is None else ErrorSummary.from_json(summary),
            job_info=dict(_mapping(info, "jobInfo")),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of the job list (``GET /jobs``)."""

    job_id: str
    phase: str
    run_id: str | None = None
    owner_id: str | None = None
    creation_time: datetime | None = None
    href: str | None = None
    #: The input file name (None for an older service or a job without one yet).
    image: str | None = None
    model_id: str | None = None
    #: Catalogue length once COMPLETED.
    sources: int | None = None
    end_time: datetime | None = None
    progress: Progress | None = None
    #: Where the preview result is, once there is one.
    preview: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobSummary:
        """Parse one entry of the JSON job list; ProtocolError without ``jobId`` or
        ``phase`` (the optional fields are read leniently)."""
        doc = _mapping(doc, "job summary")
        return cls(
            job_id=str(_require(doc, "jobId", "job summary")),
            phase=str(_require(doc, "phase", "job summary")).upper(),
            run_id=_opt_str(doc.get("runId")),
            owner_id=_opt_str(doc.get("ownerId")),
            creation_time=_parse_time(doc.get("creationTime"), "creationTime"),
            href=_opt_str(doc.get("href")),
            image=_opt_str(doc.get("image")),
            model_id=_opt_str(doc.get("modelId")),
            sources=_lenient_int(doc.get("sources")),
            end_time=_lenient_time(doc.get("endTime")),
            progress=Progress.from_json(doc.get("progress")),
            preview=_opt_str(doc.get("preview")),
            raw=dict(doc),
        )


@dataclass(frozen=True, slots=True)
class SavedResult:
    """One result written to a local file: what :meth:`OTFClient.save_result` returns."""

    job_id: str
    result_id: str
    path: Path
    size: int
    media_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON record: ``jobId``, ``resultId``, ``path``, ``bytes``, ``mediaType``."""
        return {
            "jobId": self.job_id,
            "resultId": self.result_id,
            "path": str(self.path),
            "bytes": self.size,
            "mediaType": self.media_type,
        }


# --------------------------------------------------------------------------- helpers


def _media_type(response: httpx.Response) -> str | None:
    """The media type of an answer, without its parameters (``; charset=...``)."""
    value = response.headers.get("content-type", "").split(";", 1)[0].strip()
    return value or None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _server_message(response: httpx.Response) -> str:
    """The server's explanation of a refusal, as one string."""
    text = response.text.strip()
    if "json" in response.headers.get("content-type", ""):
        with contextlib.suppress(ValueError):
            doc = json.loads(text)
            detail = doc.get("detail", doc.get("message")) if isinstance(doc, dict) else None
            if isinstance(detail, str):
                text = detail
            elif isinstance(detail, list):  # FastAPI validation errors
                text = "; ".join(
                    str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail
                )
    if not text:
        text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    return text[:_MAX_MESSAGE]


def _job_id_from_location(location: str, request_url: str) -> str:
    """The job id in a ``Location`` that points at ``.../jobs/{job_id}``."""
    path = urlsplit(urljoin(request_url, location)).path
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2 or parts[-2] != "jobs":
        raise ProtocolError(f"Location {location!r} does not point at a job")
    return unquote(parts[-1])


def _format_time(value: datetime | str) -> str:
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def service_url(url: str) -> str:
    """The service's base URL from what a user wrote: trailing slashes and a trailing
    ``/jobs`` (the job list, often pasted instead of the base) are dropped, so that
    ``http://host:8000/jobs/`` means ``http://host:8000``."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"service URL must be http:// or https:// with a host, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"service URL must not have a query or fragment, got {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/jobs"):
        path = path.removesuffix("/jobs").rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


# --------------------------------------------------------------------------- client


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one costs ~50 ms."""
    return httpx.create_ssl_context()


FilesOpener = Callable[[contextlib.ExitStack], Mapping[str, Any]]


#: Prefixes of an ``IMAGE`` that names a file already on the service.
IMAGE_REFERENCES = ("upload:", "sha256:", "dataset:", "pending:")


def image_reference(image: Path | str) -> str | None:
    """``image`` when it names a file on the service (``upload:<id>``, ``sha256:<hex>``):
    a string, not a :class:`~pathlib.Path`; None for a local file."""
    if isinstance(image, str) and image.startswith(IMAGE_REFERENCES):
        return image
    return None


def _replace(form: dict[str, str], name: str, value: str) -> dict[str, str]:
    """``form`` with ``name`` (any case) set to ``value``."""
    out = {k: v for k, v in form.items() if k.upper() != name}
    out[name] = value
    return out


def _several(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _file_opener(
    field_name: str, path: Path, progress: Callable[[int], None] | None
) -> FilesOpener:
    """Opens ``path`` afresh for each attempt of a multipart upload."""

    def open_file(stack: contextlib.ExitStack) -> Mapping[str, Any]:
        handle: IO[bytes] = stack.enter_context(path.open("rb"))
        if progress is not None:
            handle = _Counted(handle, progress)  # type: ignore[assignment]
        return {field_name: (path.name, handle, "application/fits")}

    return open_file


class _Counted:
    """A file being uploaded that reports each chunk read (upload progress bars)."""

    def __init__(self, handle: IO[bytes], progress: Callable[[int], None]) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        if chunk:
            self._progress(len(chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:  # seek, tell, fileno, name ... of the file
        return getattr(self._handle, name)


class OTFClient:
    """A synchronous client for one astro-otf service.

    Use it as a context manager (or call :meth:`close`). ``url`` and ``token`` default to
    the ``OTF_URL`` and ``OTF_TOKEN`` environment variables. Answers ``503`` (service busy)
    and ``429`` (a quota of the caller's: active jobs, creation rate) are retried
    up to ``max_retries`` times, waiting as long as ``Retry-After`` says (1, 2, 4 ... s
    when it says nothing) unless that is more than ``max_retry_delay``. ``http_client``
    lets a caller supply its own :class:`httpx.Client` (e.g. a test client); it is then
    not closed by this object and its base URL is used when ``url`` is not given.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_delay: float = 60.0,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if url is None and http_client is not None and str(http_client.base_url):
            url = str(http_client.base_url)
        self.url = service_url(url or os.environ.get(URL_ENV) or DEFAULT_URL)
        # held as a SecretStr: it never shows in a repr, a log line or a traceback's locals
        given = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self._token = SecretStr(given) if given else None
        self.max_retries = max(0, max_retries)
        self.max_retry_delay = max_retry_delay
        self._timeout = timeout
        self._sleep = sleep
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            verify=_ssl_context(),
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release the connection pool (only when this object created it)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OTFClient(url={self.url!r}, token={'***' if self._token else None})"

    # ----------------------------------------------------------------- plumbing

    def _endpoint(self, *parts: str) -> str:
        return "/".join([self.url, *(quote(p, safe="") for p in parts)])

    def _headers(self, accept: str | None) -> dict[str, str]:
        headers = {"User-Agent": f"astro-otf-client/{__version__}"}
        if accept:
            headers["Accept"] = accept
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        return headers

    def _request(
        self,
        method: str,
        url: str,
        *,
        accept: str | None = None,
        params: Sequence[tuple[str, str]] | None = None,
        data: Mapping[str, str] | None = None,
        files: FilesOpener | None = None,
        timeout: httpx.Timeout | None = None,
        stream: bool = False,
        follow_redirects: bool = False,
        retry: bool = True,
        allow_status: Collection[int] = (),
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request, retrying on 503 and 429, and raise for any error status.

        ``files`` is called afresh for every attempt so an upload can be re-sent from
        the start of the file; whatever it opens is closed once the request is sent.
        """
        attempt = 0
        while True:
            with contextlib.ExitStack() as stack:
                request = self._http.build_request(
                    method,
                    url,
                    params=list(params) if params else None,
                    data=dict(data) if data is not None else None,
                    files=files(stack) if files is not None else None,
                    headers={**self._headers(accept), **(headers or {})},
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
                try:
                    response = self._http.send(
                        request, stream=stream, follow_redirects=follow_redirects
                    )
                except httpx.TransportError as exc:
                    raise ServerUnreachable(
                        f"cannot reach the service at {self.url}: {exc or type(exc).__name__}"
                    ) from exc
            status = response.status_code
            if status in allow_status or status < 400:
                return response
            if status in (429, 503) and retry and attempt < self.max_retries:
                delay = _retry_after(response.headers.get("Retry-After"))
                if delay is None:
                    delay = float(2**attempt)
                if delay <= self.max_retry_delay:
                    response.close()
                    attempt += 1
                    self._sleep(delay)
                    continue
            raise self._error(response)

    @staticmethod
    def _error(response: httpx.Response) -> OTFClientError:
        try:
            response.read()
            message = _server_message(response)
        except httpx.HTTPError:
            message = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        finally:
            response.close()
        return OTFClientError(
            response.status_code,
            message,
            url=str(response.request.url),
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ProtocolError(
                f"expected JSON from {response.request.url}, got "
                f"{response.headers.get('content-type', 'no content type')}"
            ) from None

    def _wait_timeout(self, wait: int) -> httpx.Timeout:
        read = None if wait < 0 else wait + _WAIT_SLACK
        return httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0), read=read)

    def _fetch_job(self, job_id: str, wait: int | None = None) -> Job:
        params = [("WAIT", str(wait))] if wait is not None else None
        response = self._request(
            "GET",
            self._endpoint("jobs", job_id),
            accept=_JSON,
            params=params,
            timeout=self._wait_timeout(wait) if wait is not None else None,
        )
        return Job.from_json(self._json(response))

    def _redirected_job_id(self, response: httpx.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise ProtocolError(
                f"{response.request.method} {response.request.url} answered "
                f"{response.status_code} without a Location"
            )
        return _job_id_from_location(location, str(response.request.url))

    # ----------------------------------------------------------------- jobs

    def submit(
        self,
        image: Path | str,
        params: Mapping[str, str] | None = None,
        run: bool = True,
        run_id: str | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        nocache: bool = False,
    ) -> str:
        """Create a job for the FITS file ``image``; return its id.

        ``image`` is a local file (a :class:`~pathlib.Path`, or a string naming one), or a
        string naming a file already on the service: ``"upload:<upload_id>"`` (see
        :meth:`upload`) or ``"sha256:<hex>"``; then no bytes are sent.
        ``params`` are sent as form fields (``MODEL``, ``PRECISION``, ``thresh`` ...).
        With ``run`` the job is queued at once (``PHASE=RUN``); otherwise it stays
        PENDING until :meth:`run`. With ``nocache`` the job runs even when a finished job
        of the same input, model and parameters could give its results (``NOCACHE``).
        The file is streamed, never read into memory.
        """
        reference = image_reference(image)
        path = None if reference is not None else Path(image)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        form = {str(k): str(v) for k, v in (params or {}).items()}
        if run:
            form = _replace(form, "PHASE", "RUN")
        if run_id is not None:
            form = _replace(form, "RUNID", run_id)
        if nocache:
            form = _replace(form, "NOCACHE", "true")
        if reference is not None:
            form = _replace(form, "IMAGE", reference)
        opener = None if path is None else _file_opener("IMAGE", path, progress)
        response = self._request("POST", self._endpoint("jobs"), data=form, files=opener)
        response.close()
        if not response.is_redirect and response.status_code != 201:
            raise ProtocolError(
                f"POST /jobs answered {response.status_code}, expected 303 with a Location"
            )
        return self._redirected_job_id(response)

    def rerun(
        self,
        job_id: str,
        overrides: Mapping[str, Any] | None = None,
        run: bool = True,
        run_id: str | None = None,
    ) -> str:
        """Replay finished job ``job_id`` with its recorded input, model and parameters,
        but for ``overrides`` (model parameters, e.g. ``{"threshold": 0.6}``); return the
        new job's id. The input file is reused on the service, never sent again. With
        ``run`` the new job is queued at once."""
        form = {str(k): _param_str(v) for k, v in (overrides or {}).items()}
        if run:
            form = _replace(form, "PHASE", "RUN")
        if run_id is not None:
            form = _replace(form, "RUNID", run_id)
        response = self._request("POST", self._endpoint("jobs", job_id, "rerun"), data=form)
        response.close()
        if not response.is_redirect:
            raise ProtocolError(
                f"POST /jobs/{job_id}/rerun answered {response.status_code}, expected 303"
            )
        return self._redirected_job_id(response)

    # ----------------------------------------------------------------- uploads

    def upload(self, path: Path, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Store the FITS file ``path`` on the service once (``POST /uploads``); return its
        record (``upload_id``, ``sha256``, ``filename``, ``bytes``, ``expires``, ``header``
        ...). Jobs then name it with ``submit("upload:<upload_id>", ...)``. The same bytes
        uploaded again give the same record."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        response = self._request(
            "POST",
            self._endpoint("uploads"),
            accept=_JSON,
            files=_file_opener("file", path, progress),
        )
        doc = dict(_mapping(self._json(response), "upload"))
        _require(doc, "upload_id", "upload")
        return doc

    def uploads(self) -> list[dict[str, Any]]:
        """The caller's stored uploads."""
        response = self._request("GET", self._endpoint("uploads"), accept=_JSON)
        items = _mapping(self._json(response), "upload list").get("uploads")
        if not isinstance(items, list):
            raise ProtocolError("upload list without an 'uploads' array")
        return [dict(_mapping(item, "upload")) for item in items]

    # ----------------------------------------------------------------- datasets

    def datasets(self) -> list[dict[str, Any]]:
        """The datasets the service offers (``name``, ``description``, ``pattern``)."""
        response = self._request("GET", self._endpoint("datasets"), accept=_JSON)
        items = _mapping(self._json(response), "dataset list").get("datasets")
        if not isinstance(items, list):
            raise ProtocolError("dataset list without a 'datasets' array")
        return [dict(_mapping(item, "dataset")) for item in items]

    def dataset(self, name: str) -> dict[str, Any]:
        """One dataset with its ``images``: each one's ``path``, ``ref`` (for
        ``submit(ref)``), ``bytes``, ``complete``, and its header's ``shape``, ``beam``,
        ``frequency_hz``, ``object`` and ``telescope``."""
        response = self._request("GET", self._endpoint("datasets", name), accept=_JSON)
        doc = dict(_mapping(self._json(response), "dataset"))
        if not isinstance(doc.get("images"), list):
            raise ProtocolError("dataset without an 'images' array")
        return doc

    # ----------------------------------------------------------------- accounting

    def accounting(
        self,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """What was used over a period (``GET /accounting``): ``period``, ``owners`` (each
        with ``jobs`` by phase and model, ``cpu_seconds``, ``wall_seconds``,
        ``bytes_computed``, ``bytes_stored``, ``active_jobs`` and its ``quota``) and
        ``totals``. The caller's own figures, or an operator's choice of ``owner`` (every
        owner without it)."""
        params: list[tuple[str, str]] = []
        if since is not None:
            params.append(("SINCE", _format_time(since)))
        if until is not None:
            params.append(("UNTIL", _format_time(until)))
        if owner is not None:
            params.append(("OWNER", owner))
        response = self._request("GET", self._endpoint("accounting"), accept=_JSON, params=params)
        doc = dict(_mapping(self._json(response), "accounting"))
        if not isinstance(doc.get("owners"), list):
            raise ProtocolError("accounting without an 'owners' array")
        return doc

    def upload_info(self, upload_id: str) -> dict[str, Any]:
        """One stored upload's record."""
        response = self._request("GET", self._endpoint("uploads", upload_id), accept=_JSON)
        return dict(_mapping(self._json(response), "upload"))

    def delete_upload(self, upload_id: str) -> None:
        """Remove a stored upload (jobs that used it keep their inputs)."""
        self._request("DELETE", self._endpoint("uploads", upload_id)).close()

    # ----------------------------------------------------------------- following jobs

    def log(self, job_id: str, tail: int | None = None) -> str:
        """The job's log as text; only its last ``tail`` lines when given."""
        if tail is not None and tail < 1:
            raise ValueError(f"tail must be a positive number of lines, got {tail}")
        params = [("tail", str(tail))] if tail is not None else None
        response = self._request(
            "GET", self._endpoint("jobs", job_id, "log"), accept="text/plain", params=params
        )
        return response.text

    def quote(self, job_id: str) -> datetime | None:
        """The UWS quote: when the service expects the job to end (None when it cannot say)."""
        response = self._request("GET", self._endpoint("jobs", job_id, "quote"))
        return _lenient_time(response.text.strip())

    def events(
        self,
        last_event_id: str | None = None,
        jobs: Sequence[str] | None = None,
        *,
        reconnect_delay: float = 1.0,
        max_reconnects: int = 5,
        idle_timeout: float = 60.0,
    ) -> EventStream:
        """The service's events (``GET /jobs/events``): an iterator of :class:`Event`
        (``phase``, ``progress``, ``deleted``, ``reset``), optionally only of ``jobs``.

        It resumes after ``last_event_id`` and, when the connection drops or stays
        silent for ``idle_timeout`` seconds (the service sends a keep-alive every 15 s),
        reconnects with ``Last-Event-ID`` (``max_reconnects`` failed attempts in a row
        raise :class:`ServerUnreachable`). An ``event: reset`` says that events were
        lost: re-read the jobs. A service without events answers 404
        (:class:`OTFClientError`). Close the stream (or use it as a context manager)
        to stop; :meth:`EventStream.close` may be called from another thread.
        """
        from astro_otf.client.events import EventStream

        return EventStream(
            self,
            last_event_id=last_event_id,
            jobs=jobs,
            reconnect_delay=reconnect_delay,
            max_reconnects=max_reconnects,
            idle_timeout=idle_timeout,
        )

    def _open_events(
        self, last_event_id: str | None, jobs: Sequence[str] | None, idle_timeout: float
    ) -> httpx.Response:
        """One streamed ``GET /jobs/events`` (for :class:`EventStream`)."""
        params = [("job", j) for j in jobs or ()]
        headers = {"Last-Event-ID": last_event_id} if last_event_id else None
        timeout = httpx.Timeout(self._timeout, connect=min(self._timeout, 10.0), read=idle_timeout)
        return self._request(
            "GET",
            self._endpoint("jobs", "events"),
            accept="text/event-stream",
            params=params,
            timeout=timeout,
            stream=True,
            headers=headers,
        )

    def provenance(self, job_id: str, fmt: str = "json") -> bytes:
        """The job's provenance document: ``json`` (PROV-JSON), ``xml``, ``provn`` or
        ``svg``."""
        return self.provenance_document(job_id, fmt)[0]

    def provenance_document(self, job_id: str, fmt: str = "json") -> tuple[bytes, str | None]:
        """:meth:`provenance` and the media type the service gave it."""
        response = self._request(
            "GET", self._endpoint("jobs", job_id, "provenance"), params=[("FORMAT", fmt)]
        )
        return response.content, _media_type(response)

    def job(self, job_id: str, wait: int | None = None) -> Job:
        """The job's current description; with ``wait``, after at most that many seconds
        in which the job stays in its active phase (UWS ``WAIT``: the answer comes as
        soon as the phase changes)."""
        if wait is not None and (wait == 0 or wait < -1):
            raise ValueError(f"wait must be a positive number of seconds or -1: {wait}")
        return self._fetch_job(job_id, wait=wait)

    def jobs(
        self,
        phases: Sequence[str] | None = None,
        after: datetime | str | None = None,
        last: int | None = None,
        *,
        run_id: str | Sequence[str] | None = None,
        image: str | Sequence[str] | None = None,
    ) -> list[JobSummary]:
        """The caller's jobs, optionally only in ``phases``, created after ``after``,
        the ``last`` most recent ones, with one of the run ids ``run_id``, or whose input
        file name matches ``image`` (``*`` is a wildcard)."""
        params: list[tuple[str, str]] = [("PHASE", p.upper()) for p in phases or ()]
        if after is not None:
            params.append(("AFTER", _format_time(after)))
        if last is not None:
            params.append(("LAST", str(last)))
        params += [("RUNID", r) for r in _several(run_id)]
        params += [("IMAGE", i) for i in _several(image)]
        response = self._request("GET", self._endpoint("jobs"), accept=_JSON, params=params)
        doc = _mapping(self._json(response), "job list")
        items = doc.get("jobs")
        if not isinstance(items, list):
            raise ProtocolError("job list without a 'jobs' array")
        return [JobSummary.from_json(item) for item in items]

    def wait(self, job_id: str, timeout: float | None = None, poll_wait: int = 60) -> Job:
        """Block until the job leaves the active phases (or ``timeout`` seconds pass).

        Uses the UWS blocking ``WAIT`` request, at most ``poll_wait`` seconds per request
        (``-1`` lets the server pick its maximum). Returns the last job seen: check
        :attr:`Job.is_active` to tell a timeout from an ending. A PENDING job that nobody
        runs stays PENDING, so without ``timeout`` this then waits forever.
        """
        if poll_wait == 0 or poll_wait < -1:
            raise ValueError(f"poll_wait must be a positive number of seconds or -1: {poll_wait}")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        job = self._fetch_job(job_id)
        while job.is_active:
            wait = poll_wait
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                cap = max(1, math.ceil(remaining))
                wait = cap if poll_wait < 0 else min(poll_wait, cap)
            started = time.monotonic()
            previous = job.phase
            job = self._fetch_job(job_id, wait=wait)
            quick = time.monotonic() - started < 0.5
            if job.phase == previous and quick:
                # A server that ignores WAIT would otherwise make this a busy loop.
                self._sleep(1.0)
        return job

    def run(self, job_id: str) -> Job:
        """Start a PENDING job (``PHASE=RUN``); return it as it is afterwards."""
        return self._set_phase(job_id, "RUN")

    def abort(self, job_id: str) -> Job:
        """Abort a job (``PHASE=ABORT``); return it as it is afterwards."""
        return self._set_phase(job_id, "ABORT")

    def _set_phase(self, job_id: str, phase: str) -> Job:
        response = self._request(
            "POST", self._endpoint("jobs", job_id, "phase"), data={"PHASE": phase}
        )
        response.close()
        return self._fetch_job(job_id)

    def delete(self, job_id: str) -> None:
        """Destroy a job and its results."""
        self._request("DELETE", self._endpoint("jobs", job_id)).close()

    # ----------------------------------------------------------------- results

    def result(self, job_id: str, result_id: str = "result") -> bytes:
        """The bytes of one result (``result`` is the VOTable catalogue)."""
        response = self._request(
            "GET", self._endpoint("jobs", job_id, "results", result_id), follow_redirects=True
        )
        return response.content

    def copy_result(self, job_id: str, sink: IO[bytes], result_id: str = "result") -> int:
        """Stream one result into the binary file object ``sink``; return the byte count."""
        return self._copy_result(job_id, sink, result_id)[0]

    def _copy_result(self, job_id: str, sink: IO[bytes], result_id: str) -> tuple[int, str | None]:
        """Stream one result into ``sink``: the byte count and the media type served."""
        response = self._request(
            "GET",
            self._endpoint("jobs", job_id, "results", result_id),
            stream=True,
            follow_redirects=True,
        )
        media_type = _media_type(response)
        written = 0
        try:
            for chunk in response.iter_bytes(_CHUNK):
                sink.write(chunk)
                written += len(chunk)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"download from {self.url} broke off: {exc}") from exc
        finally:
            response.close()
        return written, media_type

    def download_result(self, job_id: str, result_id: str, dest: Path) -> int:
        """Stream one result to the file ``dest``; return the byte count.

        The data go to a temporary file beside ``dest`` that replaces it only once the
        download is complete, so ``dest`` never holds a partial result.
        """
        return self.save_result(job_id, result_id, dest).size

    def save_result(self, job_id: str, result_id: str, dest: Path) -> SavedResult:
        """Like :meth:`download_result`, but say what was written: path, byte count and
        the media type the service gave."""
        dest = Path(dest)
        part = dest.with_name(f".{dest.name}.part")
        try:
            with part.open("wb") as sink:
                written, media_type = self._copy_result(job_id, sink, result_id)
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        return SavedResult(job_id, result_id, dest, written, media_type)

    def error(self, job_id: str) -> str:
        """The error message of a job that ended in ERROR."""
        response = self._request("GET", self._endpoint("jobs", job_id, "error"))
        return response.text

    # ----------------------------------------------------------------- service

    def models(self) -> dict[str, Any]:
        """The registry: ``{"default": id, "models": [description, ...]}``, one description
        per model id (its default version; ``versions`` lists the installed ones)."""
        response = self._request("GET", self._endpoint("models"), accept=_JSON)
        return dict(_mapping(self._json(response), "model list"))

    def model(self, model_id: str, version: str | None = None) -> dict[str, Any]:
        """One model's description: version, installed versions, precisions and parameter
        schema; of its default version, or of ``version``."""
        params = [("version", version)] if version is not None else None
        response = self._request(
            "GET", self._endpoint("models", model_id), accept=_JSON, params=params
        )
        return dict(_mapping(self._json(response), "model"))

    def metrics(self) -> str:
        """The Prometheus exposition text of ``/metrics``."""
        return self._request("GET", self._endpoint("metrics"), accept="text/plain").text

    def health(self) -> dict[str, Any]:
        """Liveness: ``{"status": "ok", "version": ...}``."""
        response = self._request("GET", self._endpoint("health"), accept=_JSON)
        return dict(_mapping(self._json(response), "health"))

    def ready(self) -> dict[str, Any]:
        """Readiness: the server's ``{"status", "checks"}`` plus ``"ready"`` (a bool).

        A 503 answer (not ready) is returned with ``ready`` False, not raised or retried.
        """
        response = self._request(
            "GET",
            self._endpoint("health", "ready"),
            accept=_JSON,
            retry=False,
            allow_status=(503,),
        )
        doc = dict(_mapping(self._json(response), "readiness"))
        doc.setdefault("ready", response.status_code < 400)
        return doc
