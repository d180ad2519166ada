"""Where the server's log lines go, and the request id each one carries.

An operator reading a problem back needs the server's lines after the terminal is gone:
they go to stdout and to ``data_dir/logs/server.log`` (rotated by size). Every request gets
an id (the client's ``X-Request-ID`` when it is a sane one, else a new one), answered in
the ``X-Request-ID`` header, written in one line per request, carried by every line logged
while the request is served, and repeated in the log of a job the request created or
changed, so that a job's story can be followed back to the requests that made it.

Lines are written by a background thread (QueueHandler): a request only hands its record
over; formatting and the file's write happen off the event loop.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import logging.handlers
import queue
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The id of the request being served ("-" outside a request).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("otf_request_id", default="-")
#: A client's X-Request-ID is kept only if it looks like an id.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: The logger of the one line per request.
ACCESS = logging.getLogger("astro_otf.access")
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record (the id of the request being served)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the record's ``request_id`` unless it has one; never drops a record."""
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


def configure(
    level: str, log_dir: Path | None, *, max_bytes: int, backups: int
) -> logging.handlers.QueueListener:
    """The root logger writes to stdout and, with ``log_dir``, to ``server.log`` there,
    rotated at ``max_bytes`` with ``backups`` old files kept; both through one background
    thread. Returns the started listener (stopped at exit)."""
    formatter = logging.Formatter(FORMAT)
    targets: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        targets.append(
            logging.handlers.RotatingFileHandler(
                log_dir / "server.log", maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
            )
        )
    for handler in targets:
        handler.setFormatter(formatter)
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handoff = logging.handlers.QueueHandler(records)
    handoff.addFilter(RequestIdFilter())  # in the request's context, before the hand-over
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handoff)
    root.setLevel(level.upper())
    # uvicorn's own loggers propagate to the root: one place for every line
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    listener = logging.handlers.QueueListener(records, *targets, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)
    return listener


def request_id_from(scope: Scope) -> str:
    """The id of the request in ``scope``: its ``X-Request-ID`` when that is a sane id, else
    a new random one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(text):
                return text
            break
    return secrets.token_hex(8)


class RequestLog:
    """ASGI middleware: a request id per HTTP request (answered in ``X-Request-ID``), set
    for everything that runs while it is served, and one log line per request (method,
    path, status, milliseconds, client)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request under its id, then log its line."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if ACCESS.isEnabledFor(logging.INFO):
                client: Any = scope.get("client")
                query = scope.get("query_string", b"")
                path = scope.get("path", "")
                if query:
                    path = f"{path}?{query.decode('latin-1')[:200]}"
                ACCESS.info(
                    "%s %s %d %.1f ms %s",
                    scope.get("method", "-"),
                    path,
                    status,
                    (time.perf_counter() - started) * 1000,
                    client[0] if client else "-",
                )
            REQUEST_ID.reset(token)
