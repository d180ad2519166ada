"""Runs one job on the service off the GUI thread.

This module exists because uploading an image and waiting for a job take seconds to
minutes: doing that in the Qt event loop would freeze the window. :class:`JobWorker`
lives in a ``QThread`` and reports upload progress, the stored upload, phase changes,
the job's progress and the outcome through Qt signals, which Qt delivers to the window in
the GUI thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from PySide6.QtCore import QObject, Signal, Slot

from astro_otf.client import OTFClient, OTFClientError, OTFError

#: Seconds per blocking WAIT request: short, so that the progress bar follows the job
#: (the answer comes at once when the phase changes).
_POLL = 1
#: Answers of a service without ``POST /uploads``.
_NO_UPLOADS = (404, 405, 501)


def describe_error(exc: BaseException) -> str:
    """One line for the status bar."""
    if isinstance(exc, OTFClientError):
        return f"The service refused: {exc.message}"
    if isinstance(exc, OTFError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class JobWorker(QObject):
    """Submits ``image`` with ``params``, follows the job to its end, fetches the
    catalogue.

    With ``use_uploads`` the image goes to the service once (``POST /uploads``) and the
    job names it (``IMAGE=upload:<id>``); ``upload_id`` is one stored earlier (no bytes
    are sent; stored again when the service has lost it). A service without
    ``/uploads`` gets the image with the job, as before.

    Signals: ``uploaded(int)`` bytes sent so far, ``stored(str)`` the upload id the image
    is stored under (``""``: the service has no uploads), ``phase(str, str)`` (job id,
    phase), ``progressed(str, str, object)`` (job id, phase, its
    :class:`~astro_otf.client.Progress` or None), ``done(str, object, bytes)`` (job id, the final
    :class:`~astro_otf.client.Job`, the VOTable bytes or ``b""`` when the job did not
    complete), ``failed(str, str)`` (job id or ``""``, message) when the client raised.
    """

    uploaded = Signal(int)
    stored = Signal(str)
    phase = Signal(str, str)
    progressed = Signal(str, str, object)
    done = Signal(str, object, bytes)
    failed = Signal(str, str)

    def __init__(
        self,
        client: OTFClient,
        image: Path,
        params: Mapping[str, str],
        timeout: float | None = None,
        *,
        use_uploads: bool = True,
        upload_id: str | None = None,
    ) -> None:
        super().__init__()
        self.client = client
        self.image = image
        self.params = dict(params)
        self.timeout = timeout
        self.use_uploads = use_uploads
        self.upload_id = upload_id
        self._sent = 0

    def _progress(self, nbytes: int) -> None:
        self._sent += nbytes
        self.uploaded.emit(self._sent)

    def _store(self) -> str | None:
        """Upload the image once; its id, or None when the service has no uploads."""
        self._sent = 0
        try:
            record = self.client.upload(self.image, progress=self._progress)
        except OTFClientError as exc:
            if exc.status_code not in _NO_UPLOADS:
                raise
            self.stored.emit("")
            return None
        upload_id = str(record["upload_id"])
        self.stored.emit(upload_id)
        return upload_id

    def _submit(self) -> str:
        if not self.use_uploads:
            self._sent = 0
            return self.client.submit(self.image, self.params, progress=self._progress)
        reused = self.upload_id is not None
        upload_id = self.upload_id if reused else self._store()
        if upload_id is None:  # no /uploads on this service: the image goes with the job
            self._sent = 0
            return self.client.submit(self.image, self.params, progress=self._progress)
        try:
            return self.client.submit(f"upload:{upload_id}", self.params)
        except OTFClientError as exc:
            lost = exc.status_code in (400, 404, 409, 410) and (
                "upload" in exc.message.lower() or "image" in exc.message.lower()
            )
            if not (reused and lost):
                raise
        upload_id = self._store()  # the service no longer has it: store it again
        if upload_id is None:
            return self.client.submit(self.image, self.params, progress=self._progress)
        return self.client.submit(f"upload:{upload_id}", self.params)

    @Slot()
    def run(self) -> None:
        """The whole submission, in the worker's thread: submit, poll until the job ends (or
        ``timeout`` seconds pass), fetch the catalogue; it reports only through the signals."""
        job_id = ""
        try:
            job_id = self._submit()
            self.phase.emit(job_id, "QUEUED")
            started = time.monotonic()
            job = self.client.job(job_id)
            last = ""
            while True:
                if job.phase != last:
                    last = job.phase
                    self.phase.emit(job_id, job.phase)
                self.progressed.emit(job_id, job.phase, job.progress)
                if not job.is_active:
                    break
                waited = time.monotonic() - started
                if self.timeout is not None and waited >= self.timeout:
                    self.failed.emit(job_id, f"job {job_id} still {job.phase} after {waited:.0f} s")
                    return
                job = self.client.job(job_id, wait=_POLL)
            votable = b""
            if job.phase == "COMPLETED" and job.result("result") is not None:
                votable = self.client.result(job_id, "result")
            self.done.emit(job_id, job, votable)
        except Exception as exc:  # everything must reach the window, never the thread
            self.failed.emit(job_id, describe_error(exc))
