"""What travels between the service and a worker: plain, picklable data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from astro_otf.domain.job import ErrorType
from astro_otf.models.registry import RegistryConfig

__all__ = ["BatchTask", "JobProgress", "JobTask", "ProducedResult", "TaskOutcome"]


@dataclass(frozen=True)
class JobTask:
    """One job of a batch, as its worker needs it: where its input and folder are, and its
    validated parameters."""

    job_id: str
    model_id: str
    parameters: dict[str, str]  # stored (validated) strings, canonical names
    image_path: str | None
    job_dir: str
    owner: str | None
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    #: This run's token (set when the job was claimed): the run writes its results in
    #: ``staging/<run_token>/`` and the service moves them into ``results/`` only while the
    #: run still owns the job. None: the worker moves them itself (direct use, tests).
    run_token: str | None = None
    #: The job's share of its batch's work, in tiles (1 when untiled): its batch's shared CPU
    #: time is split among its jobs by this weight.
    tiles: int = 1


@dataclass(frozen=True)
class BatchTask:
    """Jobs of one model version (and precision and tile shape) run together in one
    worker. ``model_version`` None runs the model's default version."""

    batch_id: str
    model_id: str
    tasks: tuple[JobTask, ...]
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    model_version: str | None = None


@dataclass(frozen=True)
class ProducedResult:
    """One result file a worker wrote for a job (in its run's staging folder)."""

    result_id: str
    filename: str
    mime_type: str
    size: int


@dataclass
class TaskOutcome:
    """How one job of a batch ended in its worker: its results and jobInfo, or, when not
    ``ok``, the error the scientist reads and whether running it again may help."""

    job_id: str
    ok: bool
    results: list[ProducedResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error_message: str | None = None
    error_type: ErrorType = ErrorType.FATAL


@dataclass(frozen=True)
class JobProgress:
    """How far one job of a running batch has got, as its worker says while it runs.
    ``stage`` is one of loading, reading, inference, fitting, writing; during inference
    ``tiles_done`` of ``tiles_total`` (None where the app has no tiles)."""

    job_id: str
    stage: str
    tiles_done: int | None = None
    tiles_total: int | None = None
    batch_jobs: int = 1
