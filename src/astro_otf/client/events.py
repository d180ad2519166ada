"""The service's push channel (``GET /jobs/events``, Server-Sent Events) for clients.

This module exists so that the command line, the dashboard and the GUI follow jobs as the
service reports them (phase changes, progress) instead of each polling, and so that the
fiddly parts live in one tested place: parsing ``text/event-stream`` (httpx has no SSE),
resuming with ``Last-Event-ID`` after a dropped connection, and stopping a blocked read from
another thread.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import httpx

from astro_otf.client.api import (
    OTFClientError,
    Progress,
    ServerUnreachable,
    _lenient_time,
)

if TYPE_CHECKING:
    from astro_otf.client.api import OTFClient

#: Longest wait between reconnection attempts, seconds.
_MAX_DELAY = 30.0


@dataclass(frozen=True, slots=True)
class Event:
    """One message of the event stream.

    ``event`` is its type (``phase``, ``progress``, ``deleted``, ``reset``; ``message``
    when the server names none), ``id`` its id (resume after it with ``Last-Event-ID``),
    ``data`` the JSON object it carries (empty when it carries none or not an object),
    ``text`` the data as sent.
    """

    event: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    text: str = ""

    @property
    def job_id(self) -> str | None:
        """The job the event is about (None for ``reset`` and the like)."""
        value = self.data.get("job_id")
        return None if value is None else str(value)

    @property
    def phase(self) -> str | None:
        """The job's UWS phase, upper case, when the event carries one."""
        value = self.data.get("phase")
        return None if value is None else str(value).upper()

    @property
    def run_id(self) -> str | None:
        """The job's run id, when the event carries one."""
        value = self.data.get("run_id")
        return None if value is None else str(value)

    @property
    def progress(self) -> Progress | None:
        """How far the job has got, when the event carries its progress."""
        return Progress.from_json(self.data.get("progress"))

    @property
    def time(self) -> datetime | None:
        """When the service saw the change (None when not said or unreadable)."""
        return _lenient_time(self.data.get("time"))


class SSEParser:
    """Turns the lines of a ``text/event-stream`` into :class:`Event` objects.

    Follows the HTML standard's rules: ``field: value`` lines (one optional space after
    the colon), ``data`` lines joined with newlines, comment lines (``:``) ignored, an
    event dispatched at a blank line (none when it has no data), ``id`` remembered across
    events (the resume point), ``retry`` the reconnection delay in milliseconds.
    """

    def __init__(self, last_event_id: str | None = None) -> None:
        #: The id of the latest complete event (the resume point).
        self.last_event_id = last_event_id
        #: Reconnection delay the server asked for, in seconds (None: it said nothing).
        self.retry: float | None = None
        self._id = last_event_id
        self._event = ""
        self._data: list[str] = []
        self._has_data = False

    def feed(self, line: str) -> Event | None:
        """Take one line (without its end); return the event it completes, if any."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value or None
        elif name == "retry" and value.isdigit():
            self.retry = int(value) / 1000.0
        return None

    def parse(self, lines: Iterable[str]) -> Iterator[Event]:
        """Every event in ``lines``."""
        for line in lines:
            event = self.feed(line)
            if event is not None:
                yield event

    def reset(self) -> None:
        """Forget a half-received event, its id included (after a dropped connection)."""
        self._id = self.last_event_id
        self._clear()

    def _clear(self) -> None:
        self._event = ""
        self._data = []
        self._has_data = False

    def _dispatch(self) -> Event | None:
        self.last_event_id = self._id
        if not self._has_data:
            self._event = ""
            return None
        text = "\n".join(self._data)
        kind = self._event or "message"
        self._clear()
        data: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            doc = json.loads(text) if text.strip() else None
            if isinstance(doc, dict):
                data = doc
        return Event(event=kind, data=data, id=self.last_event_id, text=text)


class EventStream:
    """An iterator of the service's :class:`Event` objects that survives dropped
    connections; made by :meth:`OTFClient.events`.

    ``last_event_id`` is the id of the latest event received: start a later stream
    there to miss nothing.
    """

    def __init__(
        self,
        client: OTFClient,
        *,
        last_event_id: str | None = None,
        jobs: Sequence[str] | None = None,
        reconnect_delay: float = 1.0,
        max_reconnects: int = 5,
        idle_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.last_event_id = last_event_id
        self.jobs = list(jobs) if jobs else None
        self.reconnect_delay = max(0.0, reconnect_delay)
        self.max_reconnects = max(0, max_reconnects)
        self.idle_timeout = idle_timeout
        #: Connections opened so far (the first one and every reconnection).
        self.connections = 0
        self._closed = threading.Event()
        self._receiving = threading.Event()
        #: set once the reader has stopped (the stream failed, was refused or was closed)
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._response: httpx.Response | None = None
        self._iterator: Iterator[Event] | None = None

    # ----------------------------------------------------------------- iteration

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        if self._iterator is None:
            self._iterator = self._events()
        return next(self._iterator)

    def _events(self) -> Iterator[Event]:
        try:
            yield from self._read_events()
        finally:
            self._ended.set()

    def _read_events(self) -> Iterator[Event]:
        parser = SSEParser(self.last_event_id)
        failures = 0
        while not self._closed.is_set():
            parser.reset()
            try:
                response = self.client._open_events(
                    self.last_event_id, self.jobs, self.idle_timeout
                )
            except ServerUnreachable:
                if self._closed.is_set():
                    return
                failures += 1
                if self.connections == 0 or failures > self.max_reconnects:
                    raise
                self._pause(parser, failures)
                continue
            except OTFClientError:
                if self._closed.is_set():
                    return
                raise
            self.connections += 1
            with self._lock:
                self._response = response
            try:
                if self._closed.is_set():
                    return
                ctype = response.headers.get("content-type", "")
                if "text/event-stream" not in ctype:
                    raise OTFClientError(
                        response.status_code,
                        f"GET /jobs/events answered {ctype or 'no content type'}, "
                        "not text/event-stream",
                        url=str(response.request.url),
                    )
                for line in response.iter_lines():
                    self._receiving.set()
                    event = parser.feed(line)
                    self.last_event_id = parser.last_event_id
                    if event is not None or line.startswith(":"):
                        failures = 0  # the connection works (keep-alives count)
                    if event is not None:
                        yield event
                        if self._closed.is_set():
                            return
            except (httpx.TransportError, httpx.StreamError, OSError, ValueError):
                # dropped, silent too long, or shut down by close(): resume, or stop
                pass
            finally:
                with self._lock:
                    self._response = None
                response.close()
            if self._closed.is_set():
                return
            failures += 1
            if failures > self.max_reconnects:
                raise ServerUnreachable(
                    f"the event stream of {self.client.url} broke off {failures} times in a row"
                )
            self._pause(parser, failures)

    def _pause(self, parser: SSEParser, failures: int) -> None:
        """Wait before reconnecting: the server's ``retry``, else 1, 2, 4 ... times
        ``reconnect_delay``; a :meth:`close` ends the wait."""
        base = parser.retry if parser.retry is not None else self.reconnect_delay
        delay = min(_MAX_DELAY, base * 2 ** max(0, failures - 1))
        if failures == 1 and parser.retry is not None:
            delay = parser.retry
        if delay > 0:
            self._closed.wait(delay)

    def wait_receiving(self, timeout: float | None = None) -> bool:
        """Block (in another thread than the reader) until the service has started
        sending on this stream, so that what happens from then on will be told; False
        after ``timeout`` seconds without, or as soon as the reader has stopped without (a
        service without an event stream is not waited for)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._receiving.is_set():
            if self._ended.is_set():
                return False
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._receiving.wait(0.05 if left is None else min(0.05, left))
        return True

    # ----------------------------------------------------------------- closing

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called (the iteration is over or soon will be)."""
        return self._closed.is_set()

    def close(self) -> None:
        """Stop: the iteration ends (at once, even when another thread is blocked in a
        read of this stream)."""
        self._closed.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        if self._iterator is not None:
            with contextlib.suppress(Exception):
                self._iterator.close()  # type: ignore[attr-defined]


def _shutdown(response: httpx.Response) -> None:
    """Wake a thread blocked reading ``response``: shut its socket down (closing a file
    descriptor another thread reads does not wake it)."""
    stream = response.extensions.get("network_stream")
    sock = None
    with contextlib.suppress(Exception):
        sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
