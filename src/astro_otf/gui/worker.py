"""Runs one job on the service off the GUI thread.

This module exists because uploading an image and waiting for a job take seconds to
minutes: doing that in the Qt event loop would freeze the window. :class:`JobWorker`
lives in a ``QThread`` and reports upload progress, phase changes and the outcome
through Qt signals, which Qt delivers to the window in the GUI thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from astro_otf.client import OTFClient, OTFClientError, OTFError

#: Seconds per blocking WAIT request: short, so the phase label follows the job.
_POLL = 2


def describe_error(exc: BaseException) -> str:
    """One line for the status bar."""
    if isinstance(exc, OTFClientError):
        return f"The service refused: {exc.message}"
    if isinstance(exc, OTFError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobWorker(QObject):
    """Submits ``image`` with ``params``, waits for the end, fetches the catalogue.

    Signals: ``uploaded(int)`` bytes sent so far, ``phase(str, str)`` (job id, phase),
    ``done(str, object, bytes)`` (job id, the final :class:`~astro_otf.client.Job`, the
    VOTable bytes or ``b""`` when the job did not complete), ``failed(str, str)``
    (job id or ``""``, message) when the client raised.
    """

    uploaded = Signal(int)
    phase = Signal(str, str)
    done = Signal(str, object, bytes)
    failed = Signal(str, str)

    def __init__(
        self,
        client: OTFClient,
        image: Path,
        params: Mapping[str, str],
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.image = image
        self.params = dict(params)
        self.timeout = timeout
        self._sent = 0

    def _progress(self, nbytes: int) -> None:
        self._sent += nbytes
        self.uploaded.emit(self._sent)

    @Slot()
    def run(self) -> None:
        job_id = ""
        try:
            self._sent = 0
            job_id = self.client.submit(self.image, self.params, progress=self._progress)
            self.phase.emit(job_id, "QUEUED")
            job = self.client.job(job_id)
            last = ""
            waited = 0.0
            while True:
                if job.phase != last:
                    last = job.phase
                    self.phase.emit(job_id, job.phase)
                if not job.is_active:
                    break
                if self.timeout is not None and waited >= self.timeout:
                    self.failed.emit(job_id, f"job {job_id} still {job.phase} after {waited:.0f} s")
                    return
                job = self.client.wait(job_id, timeout=_POLL, poll_wait=_POLL)
                waited += _POLL
            votable = b""
            if job.phase == "COMPLETED" and job.result("result") is not None:
                votable = self.client.result(job_id, "result")
            self.done.emit(job_id, job, votable)
        except Exception as exc:  # everything must reach the window, never the thread
            self.failed.emit(job_id, describe_error(exc))
