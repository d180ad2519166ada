"""The contract between the service and an app (a classical finder or a trained model).

The service validates a job's parameters against ``App.parameters`` at submission; a worker
process later calls ``App.run`` with typed values. An app writes its result files into
``AppRequest.staging_dir``; the worker moves them into the job's results folder only when the
app returns, so a failed run never leaves a half-written result listed. While it runs, an app
says how far it has got with :meth:`AppRequest.progress` (its stage, and tiles done of total
during inference): the worker throttles and forwards that to the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from astro_otf.domain.parameters import ParamSpec, Roi
from astro_otf.imaging.fits import SkyImage
from astro_otf.results.catalogue import Catalogue

if TYPE_CHECKING:
    from astro_otf.batching.former import BatchKey
    from astro_otf.domain.job import Job


@dataclass(frozen=True)
class ResultFile:
    """One file an app produced. ``result_id`` is the UWS result id (``result`` for the
    catalogue, so that pyvo's ``fetch_result`` finds it)."""

    result_id: str
    filename: str
    mime_type: str


@dataclass
class AppRequest:
    """One job as an app sees it: its typed parameter values, its image and region of
    interest, the staging folder its results go to, and the job's log."""

    job_id: str
    image_path: Path | None
    values: dict[str, Any]  # typed parameter values, app defaults filled in
    roi: Roi | None
    staging_dir: Path
    log: logging.Logger
    owner: str | None = None
    #: Where :meth:`progress` reports go (set by the worker; None: nobody listens).
    on_progress: Callable[[str, int | None, int | None], None] | None = None

    def progress(
        self, stage: str, tiles_done: int | None = None, tiles_total: int | None = None
    ) -> None:
        """Say how far the job has got: ``stage`` is one of loading, reading, inference,
        fitting, writing; during inference, ``tiles_done`` of ``tiles_total``. Cheap enough
        to call for every tile (the worker drops what comes too fast) and never raises."""
        if self.on_progress is not None:
            try:
                self.on_progress(stage, tiles_done, tiles_total)
            except Exception:  # a report lost must never fail the job
                self.log.debug("progress report failed", exc_info=True)


@dataclass
class AppOutput:
    """What a run produced. A finder returns its ``catalogue`` (and the ``image`` it searched,
    the region of interest when one was asked for): the worker writes every result format
    and the provenance from them. ``results`` lists any further files the app wrote into
    the staging folder itself."""

    results: list[ResultFile] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # shown in the job's jobInfo
    catalogue: Catalogue | None = None
    image: SkyImage | None = None


class App(Protocol):
    """What every runnable model or app declares and does."""

    model_id: str
    version: str
    description: str
    parameters: tuple[ParamSpec, ...]
    #: Precisions offered, the default first; empty when the app has no such choice.
    precisions: tuple[str, ...]
    #: Whether a job of this app must upload IMAGE.
    needs_image: bool

    def run(self, request: AppRequest) -> AppOutput:
        """Do the job. Raise :class:`astro_otf.domain.errors.JobFailure` with a message a
        scientist can act on when the input cannot be processed."""
        ...


@runtime_checkable
class BatchableApp(App, Protocol):
    """An app whose jobs can share forward passes (every ONNX model): the scheduler groups
    its jobs by batch key and a worker runs them with one call of :meth:`run_batch`."""

    def batch_key(self, precision: str | None) -> BatchKey:
        """What jobs must share to be batched together (model, version, precision, tile)."""
        ...

    def count_tiles(self, image_path: str | None, job: Job) -> int:
        """How many tiles the job makes (from the image header alone)."""
        ...

    def run_batch(self, requests: list[AppRequest]) -> list[AppOutput | BaseException]:
        """Run several jobs together; a job's own failure is returned in its place."""
        ...
