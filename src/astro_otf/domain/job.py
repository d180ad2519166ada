"""What the service knows about a job, as plain data (read from the store, rendered by uws/)."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from astro_otf.domain.phases import Phase

#: A job id is 8 random bytes in lower-case hex: opaque to clients, made only by the server.
JOB_ID_BYTES = 8
_JOB_ID = re.compile(f"[0-9a-f]{{{2 * JOB_ID_BYTES}}}")


def new_job_id() -> str:
    """A fresh job id (the only way job ids are made)."""
    return secrets.token_hex(JOB_ID_BYTES)


def is_job_id(text: str) -> bool:
    """Whether ``text`` can be a job id at all: one that cannot is an unknown job, answered
    without asking the store (a NUL or a 100 kB path never reaches the database)."""
    return _JOB_ID.fullmatch(text) is not None


class Operator(str):
    """The name of an owner who may see and manage every owner's jobs: a token holder listed
    in ``operators``, or a member of the OIDC operators' group. It is a ``str``, so it goes
    wherever an owner name goes (a job it creates is its own, under that name); where jobs
    are looked up by owner, :func:`sees_every_owner` lets it through."""

    __slots__ = ()


def sees_every_owner(owner: str | None) -> bool:
    """Whether ``owner`` is an operator, who sees every owner's jobs."""
    return isinstance(owner, Operator)


#: Parameters that change how or when a job runs, not what it computes.
NOT_COMPUTED = frozenset({"priority", "nocache", "notify"})


def computation_key(inputs: Mapping[str, str], parameters: Mapping[str, str]) -> str:
    """What a job computes, as one sha256: its inputs (file parameter name -> content
    sha256) and its stored parameter strings (model, model_version and precision among
    them), less those in :data:`NOT_COMPUTED`. Two jobs with the same key make the same
    results."""
    data = {
        "inputs": dict(sorted(inputs.items())),
        "parameters": {k: v for k, v in sorted(parameters.items()) if k not in NOT_COMPUTED},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class JobParameter:
    """One stored parameter of a job, by its canonical (lower-case) name."""

    name: str
    value: str
    is_file: bool = False  # an uploaded file: value is the file name in the job's inputs/


@dataclass(frozen=True)
class JobResult:
    """One listed result of a job: a file in its ``results/`` folder."""

    result_id: str
    filename: str
    mime_type: str
    size: int


class ErrorType(StrEnum):
    """The type of a job's errorSummary, as UWS 1.1 names it: ``transient`` says the same job
    may succeed if run again (its worker died, its results could not be stored); ``fatal``
    says it will not (the input or the parameters are wrong)."""

    FATAL = "fatal"
    TRANSIENT = "transient"

    @classmethod
    def of(cls, text: str | None) -> ErrorType:
        """The type a stored or raised string names. Anything but ``transient`` is fatal: a
        job is said to be worth running again only when its error says so (and UWS knows no
        third type)."""
        return cls.TRANSIENT if text == cls.TRANSIENT.value else cls.FATAL


@dataclass(frozen=True)
class ErrorSummary:
    """Why a job ended in ERROR (or was stopped), as the scientist reads it."""

    error_type: ErrorType
    message: str


@dataclass
class Job:
    """A job as the store holds it: its UWS attributes, parameters, results and jobInfo."""

    job_id: str
    owner: str | None
    run_id: str | None
    phase: Phase
    model_id: str
    priority: int
    creation_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    execution_duration: int  # seconds; 0 means unlimited
    destruction_time: datetime | None
    quote: datetime | None = None
    queue_time: datetime | None = None  # when it last entered QUEUED
    error: ErrorSummary | None = None
    parameters: list[JobParameter] = field(default_factory=list)
    results: list[JobResult] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    #: The uploaded image's file name as the client gave it (None: no upload, or unnamed).
    image_name: str | None = None
    #: What the job computes, hashed (see :func:`computation_key`); None: never reused.
    cache_key: str | None = None

    def parameter_values(self) -> dict[str, str]:
        """The stored non-file parameter strings, by canonical name."""
        return {p.name: p.value for p in self.parameters if not p.is_file}

    @property
    def model_version(self) -> str | None:
        """The model version the job was created with; None for a job stored before
        versions were recorded (it runs the model's default version)."""
        return self.parameter_values().get("model_version")


@dataclass(frozen=True)
class JobSummary:
    """One line of a job list (UWS ``jobref``)."""

    job_id: str
    phase: Phase
    run_id: str | None
    owner: str | None
    creation_time: datetime
    model_id: str | None = None
    image_name: str | None = None
    end_time: datetime | None = None
    #: The catalogue's length once COMPLETED (jobInfo n_sources).
    sources: int | None = None
    #: The progress the job's row holds while it runs (jobInfo progress).
    progress: dict[str, Any] | None = None
    #: Whether the job lists a preview result.
    has_preview: bool = False
