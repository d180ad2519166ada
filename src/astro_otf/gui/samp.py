"""SAMP broadcasting of a job's catalogue and image (TOPCAT, Aladin, DS9 ...).

This module exists so that the GUI hands its results to the tools astronomers already
use, through the IVOA Simple Application Messaging Protocol, without the window knowing
about hubs, lock files or XML-RPC.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # astropy 8 deprecates astropy.samp in favour of pyvo.samp (same API); pyvo is not a
    # dependency of astro-otf, so keep the working module quietly.
    warnings.simplefilter("ignore")
    from astropy.samp import SAMPIntegratedClient


class SAMPSendError(RuntimeError):
    """No hub to talk to, or the hub refused the message."""


def catalogue_name(image: str | None, job_id: str, model: str | None = None) -> str:
    """The name a job's catalogue gets in TOPCAT or Aladin: the image's file name, the
    job and its model (``"m31.fits — job 8f2a (sep)"``), so that catalogues sent one
    after another can be told apart in the receiving tool's table list."""
    name = f"job {job_id}"
    if model:
        name += f" ({model})"
    return f"{image} — {name}" if image else f"astro-otf {name}"


class SAMPSender:
    """A SAMP client that connects on first use and stays registered until
    :meth:`close`: the hub delivers notifications asynchronously and drops those whose
    sender has already left, so connect-send-disconnect would lose messages.

    ``hub_params`` selects a hub explicitly; otherwise the standard lock file /
    ``SAMP_HUB`` lookup applies. A send that fails on a stale connection (the hub was
    restarted) reconnects once before giving up.
    """

    def __init__(self, name: str = "astro-otf") -> None:
        self.name = name
        self._client: SAMPIntegratedClient | None = None
        self._hub_params: dict[str, Any] | None = None

    def _connect(self, hub_params: Mapping[str, Any] | None) -> SAMPIntegratedClient:
        wanted = dict(hub_params) if hub_params is not None else None
        if self._client is not None and self._hub_params == wanted:
            return self._client
        self.close()
        client = SAMPIntegratedClient(name=self.name, description="astro-otf source finder GUI")
        try:
            client.connect(hub_params=wanted)
        except Exception as exc:  # SAMPHubError, OSError, ConnectionRefusedError ...
            raise SAMPSendError(f"no SAMP hub: {exc}") from exc
        self._client, self._hub_params = client, wanted
        return client

    def _notify(self, messages: list[dict[str, Any]], hub_params: Mapping[str, Any] | None) -> None:
        client = self._connect(hub_params)
        for message in messages:
            client.notify_all(message)

    def broadcast(
        self,
        table_url: str | None,
        image: Path | None,
        *,
        hub_params: Mapping[str, Any] | None = None,
        table_name: str | None = None,
        table_id: str | None = None,
    ) -> list[str]:
        """Broadcast ``image.load.fits`` for the local ``image`` (named by its file) and
        ``table.load.votable`` for ``table_url``, named ``table_name`` (see
        :func:`catalogue_name`; the URL when not given) and identified by ``table_id``
        when given; return the MTypes sent."""
        if table_url is None and image is None:
            raise SAMPSendError("nothing to send: open an image or run a job first")
        messages: list[dict[str, Any]] = []
        if image is not None:
            messages.append(
                {
                    "samp.mtype": "image.load.fits",
                    "samp.params": {
                        "url": Path(image).resolve().as_uri(),
                        "name": Path(image).name,
                    },
                }
            )
        if table_url is not None:
            params = {"url": table_url, "name": table_name or table_url}
            if table_id:
                params["table-id"] = table_id
            messages.append({"samp.mtype": "table.load.votable", "samp.params": params})
        try:
            self._notify(messages, hub_params)
        except SAMPSendError:
            raise
        except Exception:
            self.close()  # stale registration: try once with a fresh one
            try:
                self._notify(messages, hub_params)
            except SAMPSendError:
                raise
            except Exception as exc:
                self.close()
                raise SAMPSendError(f"SAMP hub refused the message: {exc}") from exc
        return [str(m["samp.mtype"]) for m in messages]

    def close(self) -> None:
        """Unregister from the hub (quietly, if it is already gone)."""
        client, self._client, self._hub_params = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
