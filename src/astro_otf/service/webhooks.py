"""Job notification webhooks: a POST to a URL the job names (``NOTIFY``) when it ends.

Only to hosts the operator lists in ``webhook_hosts``: a service that POSTs to any URL a
client names can be turned against machines behind its firewall (server-side request
forgery). The check is made when the job is created (a 400 naming NOTIFY) and again before
the call (the list may have changed since). A receiver that is down or slow costs the job
nothing: calls run in the background, a few tries with a pause between, then a log line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from astro_otf.domain.errors import ParameterError

__all__ = ["WebhookSender", "check_webhook"]

log = logging.getLogger(__name__)

#: Tries of one call, and the pause before each further try (seconds).
TRIES = 3
PAUSE_S = 2.0
TIMEOUT_S = 10.0
#: The most calls in flight at once; more are dropped with a log line.
MAX_PENDING = 1000


def check_webhook(url: str, allowed_hosts: list[str]) -> None:
    """Refuse (ParameterError naming NOTIFY) a URL that is not http(s) to an allowed host."""
    text = url.strip()
    if not allowed_hosts:
        raise ParameterError(
            "notify", "this service calls no webhooks (its operator allows no host)"
        )
    try:
        parts = urlsplit(text)
        port = parts.port  # raises on a port out of range
    except ValueError:
        raise ParameterError("notify", f"{text[:80]!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ParameterError("notify", f"{text[:80]!r} is not an http or https URL")
    if parts.username or parts.password:
        raise ParameterError("notify", "a webhook URL must not carry a user name or password")
    host = parts.hostname.lower()
    if host not in {h.lower() for h in allowed_hosts}:
        raise ParameterError(
            "notify",
            f"host {host!r} is not one this service calls (allowed: {', '.join(allowed_hosts)})",
        )
    del port


class WebhookSender:
    """Sends notes in the background; every method runs in the event loop's thread."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def send(self, url: str, note: dict[str, Any]) -> None:
        """POST ``note`` (JSON) to ``url`` in the background, with retries; returns at once.
        The caller has checked the URL (:func:`check_webhook`). Dropped, with a log line, when
        :data:`MAX_PENDING` calls are in flight."""
        if len(self._tasks) >= MAX_PENDING:
            log.warning("webhook to %s dropped: %d calls are pending", url, len(self._tasks))
            return
        task = asyncio.get_running_loop().create_task(self._send(url, note))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, note: dict[str, Any]) -> None:
        if self._client is None:
            # redirects are not followed: they could lead to a host that is not allowed
            self._client = httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False)
        problem = ""
        for attempt in range(TRIES):
            if attempt:
                await asyncio.sleep(PAUSE_S * attempt)
            try:
                r = await self._client.post(url, json=note)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if r.status_code < 500:
                if r.status_code >= 400:
                    log.warning(
                        "webhook %s answered %d for job %s", url, r.status_code, note.get("job_id")
                    )
                return
            problem = f"HTTP {r.status_code}"
        log.warning(
            "webhook %s for job %s failed %d times (%s)", url, note.get("job_id"), TRIES, problem
        )

    async def close(self) -> None:
        """Cancel the calls still in flight and close the HTTP client (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
