"""Python client for an astro-otf service.

This package is the supported way for programs to use a running astro-otf service over
HTTP. It depends only on httpx and never imports the server code, so it can be used
from any machine that can reach the service::

    from astro_otf.client import OTFClient

    with OTFClient("http://otf.example.org", token="...") as otf:
        job_id = otf.submit(Path("field.fits"), {"MODEL": "sep", "thresh": "5"})
        job = otf.wait(job_id)
        if job.phase == "COMPLETED":
            otf.download_result(job_id, "result", Path("field.xml"))

Upload a file once and name it in several jobs (``upload:<id>``); follow jobs as the
service pushes their phases and progress::

        upload_id = otf.upload(Path("field.fits"))["upload_id"]
        ids = [otf.submit(f"upload:{upload_id}", {"thresh": t}) for t in ("4", "5", "6")]
        with otf.events(jobs=ids) as stream:
            for event in stream:
                print(event.job_id, event.phase, event.progress)

:class:`AsyncOTFClient` offers the same calls to asyncio programs.
"""

from astro_otf.client.aio import AsyncOTFClient
from astro_otf.client.api import (
    ACTIVE_PHASES,
    DEFAULT_URL,
    FINAL_PHASES,
    TOKEN_ENV,
    URL_ENV,
    ErrorSummary,
    Job,
    JobSummary,
    OTFClient,
    OTFClientError,
    OTFError,
    Progress,
    ProtocolError,
    ResultRef,
    SavedResult,
    ServerUnreachable,
    image_reference,
    service_url,
)
from astro_otf.client.events import Event, EventStream, SSEParser

__all__ = [
    "ACTIVE_PHASES",
    "DEFAULT_URL",
    "FINAL_PHASES",
    "TOKEN_ENV",
    "URL_ENV",
    "AsyncOTFClient",
    "ErrorSummary",
    "Event",
    "EventStream",
    "Job",
    "JobSummary",
    "OTFClient",
    "OTFClientError",
    "OTFError",
    "Progress",
    "ProtocolError",
    "ResultRef",
    "SSEParser",
    "SavedResult",
    "ServerUnreachable",
    "image_reference",
    "service_url",
]
