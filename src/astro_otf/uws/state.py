"""What the HTTP handlers use of the service, typed: the settings (on the app from its
creation: the CSRF check and the OIDC verifier need them before the service starts) and one
:class:`ServiceState` (on the app while the service runs), with a getter for each and the
FastAPI dependencies the routes declare. Besides these, ``app.state`` holds only the OIDC
verifier (:func:`astro_otf.uws.auth.oidc_verifier`), the web page's OpenAPI 3.0 document and
the service's Runtime (:func:`astro_otf.app.runtime_of`, for tests), each read by its own
module."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.applications import Starlette

from astro_otf.config import Settings
from astro_otf.service.accounting import Accounting
from astro_otf.service.jobs import JobService
from astro_otf.service.metrics import Metrics
from astro_otf.service.uploads import UploadService

__all__ = [
    "Service",
    "ServiceState",
    "Uploads",
    "app_settings",
    "attach",
    "set_settings",
    "settings_of",
    "state_of",
]


@dataclass(frozen=True, slots=True)
class ServiceState:
    """The running service's parts the handlers ask. ``readiness`` gives the checks of
    ``/health/ready`` (the executor's, scheduler's and replica's facts stay in the service:
    :meth:`astro_otf.service.runtime.Runtime.readiness`)."""

    jobs: JobService
    uploads: UploadService
    metrics: Metrics
    accounting: Accounting
    readiness: Callable[[], Awaitable[dict[str, dict[str, Any]]]]


def set_settings(app: Starlette, settings: Settings) -> None:
    """Give ``app`` its settings (when it is made)."""
    app.state.settings = settings


def app_settings(app: Starlette) -> Settings | None:
    """``app``'s settings, or None for an app that has none (a test's bare app)."""
    settings: Settings | None = getattr(app.state, "settings", None)
    return settings


def settings_of(request: Request) -> Settings:
    """The settings of the app serving ``request``."""
    settings: Settings = request.app.state.settings
    return settings


def attach(app: Starlette, state: ServiceState) -> None:
    """Give ``app`` the running service's parts (when they have started)."""
    app.state.service_state = state


def state_of(request: Request) -> ServiceState:
    """The running service's parts, for the app serving ``request``."""
    state: ServiceState = request.app.state.service_state
    return state


# Dependencies are coroutines: FastAPI runs a plain function dependency in a worker thread,
# two thread hops per request for two attribute reads.
async def job_service(request: Request) -> JobService:
    """The JobService (a route's ``Service`` argument)."""
    return state_of(request).jobs


async def upload_service(request: Request) -> UploadService:
    """The UploadService (a route's ``Uploads`` argument)."""
    return state_of(request).uploads


Service = Annotated[JobService, Depends(job_service)]
Uploads = Annotated[UploadService, Depends(upload_service)]
