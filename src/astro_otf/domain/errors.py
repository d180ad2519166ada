"""Errors of the service. Each one a client can cause carries its HTTP status and the headers
its answer needs (Retry-After, WWW-Authenticate), so that the HTTP layer only renders it (the
safir pattern); their messages name what is wrong."""

from __future__ import annotations

from astro_otf.domain.job import ErrorType


class OTFError(Exception):
    """Base of the errors a client sees. ``status_code`` is the HTTP answer, ``headers``
    what it carries besides the message."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers the answer carries (none, unless a subclass says what to do next)."""
        return {}


class ParameterError(OTFError):
    """A job parameter is missing, unknown or out of range."""

    status_code = 400

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name.upper()}: {problem}")
        self.name = name


class ParameterTooLarge(ParameterError):
    """A parameter (an uploaded IMAGE) over one of the service's size limits."""

    status_code = 413


class RequestError(OTFError):
    """A malformed request that is not about one parameter (bad multipart, bad XML, ...)."""

    status_code = 400


class NotAuthenticated(OTFError):
    """No credentials, or ones that are not valid: 401 with a ``WWW-Authenticate: Bearer``
    challenge."""

    status_code = 401
    #: RFC 6750's error code for the challenge: none when no credentials were sent.
    error_code: str | None = None

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value (RFC 6750 section 3): ``Bearer`` alone when no
        token was sent, with the error code and the message as its description when one
        was refused."""
        if self.error_code is None:
            return "Bearer"
        # error_description may hold %x20-21 / %x23-5B / %x5D-7E only
        text = "".join(
            c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?"
            for c in self.message
        )
        if len(text) > 400:
            text = text[:397] + "..."
        return f'Bearer error="{self.error_code}", error_description="{text}"'

    @property
    def headers(self) -> dict[str, str]:
        """The Bearer challenge."""
        return {"WWW-Authenticate": self.challenge}


class InvalidToken(NotAuthenticated):
    """A bearer token was sent and is refused (unknown, expired, wrongly signed ...): the
    challenge carries ``error="invalid_token"`` and the message as its description."""

    error_code = "invalid_token"


class JobNotFound(OTFError):
    """Unknown job, or a job of another owner: both answer 404 so that ids do not leak."""

    status_code = 404

    def __init__(self, job_id: str) -> None:
        shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
        super().__init__(f"no job with id {shown!r}")
        self.job_id = job_id


class NotFound(OTFError):
    """A resource other than a job that is not there (a model, a result, a dataset ...)."""

    status_code = 404


class PhaseConflict(OTFError):
    """The request is not allowed in the job's current phase."""

    status_code = 409


class NotAcceptable(OTFError):
    """None of the forms the client accepts (Accept) can be sent."""

    status_code = 406


class UploadTooLarge(OTFError):
    """A request body over the service's size limits."""

    status_code = 413


class UnsupportedMediaType(OTFError):
    """A request body of a type the resource does not read."""

    status_code = 415


class ServiceBusy(OTFError):
    """The service cannot take this now; the client may try again after ``retry_after``
    seconds (503 with Retry-After)."""

    status_code = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """When to try again."""
        return {"Retry-After": str(self.retry_after)}


class QueueFull(ServiceBusy):
    """The queue holds as many jobs as it may."""


class QuotaExceeded(OTFError):
    """The owner is over one of its quotas (active jobs, job creation rate): 429 with
    Retry-After, the seconds after which the request may succeed."""

    status_code = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, retry_after)

    @property
    def headers(self) -> dict[str, str]:
        """When the request may succeed."""
        return {"Retry-After": str(self.retry_after)}


class StorageQuotaExceeded(OTFError):
    """The owner's jobs hold as many bytes as it may keep: 413 (waiting does not help;
    deleting jobs does)."""

    status_code = 413


class Forbidden(OTFError):
    """The caller is known but may not see this (another owner's accounting)."""

    status_code = 403


class JobFailure(Exception):
    """Raised by an app when a job cannot be done: the message becomes the job's errorSummary,
    so it must tell a scientist what is wrong with the input and what to do about it."""

    def __init__(self, message: str, error_type: ErrorType = ErrorType.FATAL) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
