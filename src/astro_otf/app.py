"""The ASGI app: the HTTP routes, middleware and error handlers, with a lifespan that runs
the service's parts (:mod:`astro_otf.service.runtime`) under the data folder's lock; and
the server that serves it (``otf serve``)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import make_url

from astro_otf import __version__, serverlog, web
from astro_otf.config import Settings
from astro_otf.execution.base import Executor
from astro_otf.service.runtime import Runtime, running
from astro_otf.store.lock import DataFolderBusy, DataFolderLock
from astro_otf.uws import (
    accounting_routes,
    auth,
    dataset_routes,
    errors,
    routes,
    state,
    system,
    upload_routes,
)

__all__ = ["create_app", "fastapi_options", "run_server", "runtime_of", "uvicorn_options"]

log = logging.getLogger("astro_otf")


def data_folder_lock(settings: Settings) -> DataFolderLock:
    """The data folder's lock for this server: exclusive on SQLite, shared by the replicas of
    a PostgreSQL deployment (see :mod:`astro_otf.store.lock`). Raises DataFolderBusy."""
    shared = make_url(settings.effective_database_url).get_backend_name() == "postgresql"
    return DataFolderLock.acquire(Path(settings.data_dir), shared=shared)


def fastapi_options() -> dict[str, Any]:
    """FastAPI's settings for this service (bench/uws.py's bare-stack app takes them too).
    FastAPI's native OpenTelemetry asks the OpenTelemetry API on every request whether a
    provider is configured (reading the environment each time: 8 % of a small GET); it is
    kept only where the environment configures OpenTelemetry (an ``OTEL_*`` variable)."""
    import inspect

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    if any(name.startswith("OTEL_") for name in os.environ):
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def runtime_of(app: FastAPI) -> Runtime:
    """The running service's parts of an app whose lifespan runs (tests reach the scheduler
    and the store through it; the routes use :mod:`astro_otf.uws.state`)."""
    runtime: Runtime = app.state.runtime
    return runtime


def create_app(settings: Settings | None = None, *, executor: Executor | None = None) -> FastAPI:
    """The service's ASGI app. ``executor``, when given, runs the jobs instead of the one
    ``settings`` names (tests run the whole app in-process with a fake one)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """The service runs while the app serves: its parts started, handed to the routes
        (:class:`astro_otf.uws.state.ServiceState`), and stopped."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Before anything is migrated, recovered or removed: one server per data folder (a
        # second one refuses to start here; run_server has checked it already).
        try:
            folder_lock = data_folder_lock(settings)
        except DataFolderBusy as exc:
            log.error("%s", exc)
            raise
        try:
            async with running(settings, alone=folder_lock.exclusive, executor=executor) as runtime:
                app.state.runtime = runtime
                state.attach(
                    app,
                    state.ServiceState(
                        jobs=runtime.service,
                        uploads=runtime.uploads,
                        metrics=runtime.metrics,
                        accounting=runtime.accounting,
                        readiness=runtime.readiness,
                    ),
                )
                yield
        finally:
            folder_lock.release()

    app = FastAPI(
        title="astro-otf",
        version=__version__,
        description="On-the-fly source finding in radio images, as IVOA UWS 1.1 jobs.",
        lifespan=lifespan,
        # /docs and /redoc are served by astro_otf.web with their files shipped, not a CDN's
        docs_url=None,
        redoc_url=None,
        **fastapi_options(),
    )
    state.set_settings(app, settings)
    app.include_router(system.router)
    app.include_router(routes.router)
    app.include_router(upload_routes.router)
    app.include_router(dataset_routes.router)
    app.include_router(accounting_routes.router)
    web.install(app)
    auth.install(app, settings)  # OIDC mode: the token verifier and its key refresher
    # outermost: every request gets its id before anything else runs
    app.add_middleware(serverlog.RequestLog)
    errors.install(app)
    return app


def run_server(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start the service with the configured settings (``otf serve``)."""
    settings = Settings()
    serverlog.configure(
        settings.log_level,
        Path(settings.data_dir) / "logs",
        max_bytes=settings.log_file_bytes,
        backups=settings.log_files,
    )
    # Checked before uvicorn starts (its lifespan runs before it binds the port): a second
    # server on this data folder stops here, having touched nothing, with one line saying why.
    try:
        folder_lock = data_folder_lock(settings)
    except DataFolderBusy as exc:
        print(f"astro-otf: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        _serve(settings, host, port)
    finally:
        folder_lock.release()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for this service (bench/uws.py serves its bare-stack app with the
    same ones): the C HTTP parser and uvloop where installed (the asyncio loop and h11
    otherwise); no access log of uvicorn's: the service writes its own line per request,
    with its request id (:class:`astro_otf.serverlog.RequestLog`)."""
    import importlib.util

    level = settings.log_level.lower()
    return {
        "log_level": level,
        "access_log": False,
        # uvicorn's lines go through the service's own handlers (stdout and server.log)
        "log_config": None,
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "timeout_graceful_shutdown": 5,
    }


def _serve(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, **uvicorn_options(settings))
