"""The contract between the service and an app (a classical finder or a trained model).

The service validates a job's parameters against ``App.parameters`` at submission; a worker
process later calls ``App.run`` with typed values. An app writes its result files into
``AppRequest.staging_dir``; the worker moves them into the job's results folder only when the
app returns, so a failed run never leaves a half-written result listed.
"""

from __future__ import annotations

import logging
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
    job_id: str
    image_path: Path | None
    values: dict[str, Any]  # typed parameter values, app defaults filled in
    roi: Roi | None
    staging_dir: Path
    log: logging.Logger
    owner: str | None = None


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
