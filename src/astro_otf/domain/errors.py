"""Errors of the service. Each one a client can cause carries its HTTP status, so that the
HTTP layer only renders it (the safir pattern); their messages name what is wrong."""

from __future__ import annotations


class OTFError(Exception):
    """Base of the errors a client sees. ``status_code`` is the HTTP answer."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
    status_code = 401


class JobNotFound(OTFError):
    """Unknown job, or a job of another owner: both answer 404 so that ids do not leak."""

    status_code = 404

    def __init__(self, job_id: str) -> None:
        shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
        super().__init__(f"no job with id {shown!r}")
        self.job_id = job_id


class NotFound(OTFError):
    status_code = 404


class PhaseConflict(OTFError):
    """The request is not allowed in the job's current phase."""

    status_code = 409


class NotAcceptable(OTFError):
    status_code = 406


class UploadTooLarge(OTFError):
    status_code = 413


class UnsupportedMediaType(OTFError):
    status_code = 415


class ServiceBusy(OTFError):
    """The service cannot take this now; the client may try again after ``retry_after``
    seconds (503 with Retry-After)."""

    status_code = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(ServiceBusy):
    """The queue holds as many jobs as it may."""


class JobFailure(Exception):
    """Raised by an app when a job cannot be done: the message becomes the job's errorSummary,
    so it must tell a scientist what is wrong with the input and what to do about it."""

    def __init__(self, message: str, error_type: str = "fatal") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
