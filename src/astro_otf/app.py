"""Wires the parts into one ASGI app: store, registry, executor, scheduler, reaper, HTTP."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from sqlalchemy.engine import make_url
from starlette.exceptions import HTTPException as StarletteHTTPException

from astro_otf import __version__, serverlog, web
from astro_otf.batching.former import BatchRules
from astro_otf.config import Settings
from astro_otf.domain.errors import NotAuthenticated, OTFError, QuotaExceeded, ServiceBusy
from astro_otf.domain.phases import Phase
from astro_otf.execution.factory import make_executor
from astro_otf.models.registry import RegistryConfig, build_registry
from astro_otf.service.accounting import Accounting
from astro_otf.service.events import JobEvents
from astro_otf.service.feed import JobFeed
from astro_otf.service.held import Holds
from astro_otf.service.jobs import JobService
from astro_otf.service.lifecycle import ORPHAN_MIN_AGE_S, recover
from astro_otf.service.metrics import Metrics
from astro_otf.service.quotas import Quotas
from astro_otf.service.reaper import Reaper
from astro_otf.service.replicas import Replicas
from astro_otf.service.scheduler import Scheduler
from astro_otf.service.threads import in_thread
from astro_otf.service.uploads import UploadService
from astro_otf.store.cache import JobCache
from astro_otf.store.database import make_engine, migrate
from astro_otf.store.files import JobFolders
from astro_otf.store.lock import DataFolderBusy, DataFolderLock
from astro_otf.store.repository import JobStore
from astro_otf.store.usage import UsageStore
from astro_otf.uws import accounting_routes, auth, dataset_routes, routes, system, upload_routes

log = logging.getLogger("astro_otf")


def data_folder_lock(settings: Settings) -> DataFolderLock:
    """The data folder's lock for this server: exclusive on SQLite, shared by the replicas of
    a PostgreSQL deployment (see :mod:`astro_otf.store.lock`). Raises DataFolderBusy."""
    shared = make_url(settings.effective_database_url).get_backend_name() == "postgresql"
    return DataFolderLock.acquire(Path(settings.data_dir), shared=shared)


def on_change(
    scheduler: Scheduler,
    events: JobEvents,
    job_id: str,
    what: str,
    holds: Holds | None = None,
) -> None:
    """A job changed in the database (any replica): wake its WAITs; a new QUEUED job wakes
    the scheduler; a HELD one is watched (by the leader); an ABORT or DELETE stops this
    process's run of the job, if it has one."""
    events.notify(job_id)
    if what == Phase.HELD.value and holds is not None:
        holds.watch_soon(job_id)
    if what == Phase.QUEUED.value:
        scheduler.wake()
    elif what in (Phase.ABORTED.value, "DELETED") and job_id in scheduler.running:
        scheduler.cancel_soon(job_id)


@asynccontextmanager
async def _running(app: FastAPI, settings: Settings, *, alone: bool) -> AsyncIterator[None]:
    """Every part of the service, started in order and stopped in reverse. ``alone``: this
    server holds the data folder's lock exclusively (no other server can be creating jobs
    in it while it recovers)."""
    engine = make_engine(settings.effective_database_url)
    await in_thread(migrate, engine)
    replicated = engine.dialect.name == "postgresql"
    # Job records are cached only where every write goes through this process: a lone server
    # (SQLite, the data folder locked exclusively). PostgreSQL replicas write the same rows.
    store = JobStore(engine, cache=JobCache() if alone and not replicated else None)
    folders = JobFolders(settings.data_dir)
    registry_config = RegistryConfig.from_settings(settings)
    registry = await in_thread(build_registry, registry_config)
    executor = make_executor(settings, registry_config)
    events = JobEvents()
    metrics = Metrics(store)
    scheduler = Scheduler(
        store,
        folders,
        executor,
        events,
        apps=registry,
        registry=registry_config,
        rules=BatchRules(
            max_jobs=settings.batch_max_jobs,
            max_tiles=settings.batch_max_tiles,
            max_wait=settings.batch_max_wait,
        ),
        metrics=metrics,
    )
    feed = JobFeed()
    uploads = UploadService(settings, engine)
    usage = UsageStore(engine)
    quotas = Quotas(settings, usage)
    service = JobService(
        settings,
        store,
        folders,
        registry,
        events,
        scheduler,
        feed=feed,
        uploads=uploads,
        quotas=quotas,
    )
    scheduler.on_progress = service.progress_changed
    reaper = Reaper(service)
    app.state.settings = settings
    app.state.service = service
    app.state.uploads = uploads
    app.state.feed = feed
    app.state.scheduler = scheduler
    app.state.executor = executor
    app.state.reaper = reaper
    app.state.metrics = metrics
    app.state.accounting = Accounting(usage, quotas)

    async def take_over() -> None:
        """This process now runs jobs: first those a previous run left behind."""
        orphan_age = 0.0 if alone else ORPHAN_MIN_AGE_S
        requeued, failed = await in_thread(recover, store, folders, orphan_age)
        if requeued or failed:
            log.info("recovered: %d job(s) queued again, %d lost", requeued, failed)
        scheduler.active = True
        scheduler.wake()
        await service.holds.start()  # HELD jobs: their folders and deadlines are watched

    def follow() -> None:
        scheduler.active = False
        scheduler.cancel_soon()
        service.holds.stop_soon()

    replicas = None
    if replicated:  # replicas may share this database: only the leader runs jobs
        scheduler.active = False
        replicas = Replicas(
            engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
            on_change=lambda job_id, what: on_change(
                scheduler, events, job_id, what, service.holds
            ),
            on_lead=take_over,
            on_follow=follow,
        )
    else:
        await take_over()
    app.state.replicas = replicas
    scheduler.start()
    if replicas is not None:
        replicas.start()
    reaper.start()
    log.info(
        "astro-otf %s: data in %s, %s executor with %d worker(s), database %s",
        __version__,
        settings.data_dir,
        executor.name,
        executor.capacity,
        engine.url.render_as_string(hide_password=True),
    )
    try:
        yield
    finally:
        await reaper.stop()
        await service.holds.stop()
        if replicas is not None:
            await replicas.stop()
        await scheduler.stop()
        await executor.shutdown()
        await service.close()
        engine.dispose()


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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Before anything is migrated, recovered or removed: one server per data folder (a
        # second one refuses to start here; run_server has checked it already).
        try:
            folder_lock = data_folder_lock(settings)
        except DataFolderBusy as exc:
            log.error("%s", exc)
            raise
        try:
            async with _running(app, settings, alone=folder_lock.exclusive):
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
    app.state.settings = settings
    app.include_router(system.router)
    app.include_router(routes.router)
    app.include_router(upload_routes.router)
    app.include_router(dataset_routes.router)
    app.include_router(accounting_routes.router)
    web.install(app)
    auth.install(app, settings)  # OIDC mode: the token verifier and its key refresher
    # outermost: every request gets its id before anything else runs
    app.add_middleware(serverlog.RequestLog)

    @app.exception_handler(OTFError)
    async def otf_error(request: Request, exc: OTFError) -> PlainTextResponse:
        headers = {}
        if isinstance(exc, ServiceBusy | QuotaExceeded):
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, NotAuthenticated):
            headers["WWW-Authenticate"] = auth.bearer_challenge(exc)
        return PlainTextResponse(exc.message, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> PlainTextResponse:
        parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return PlainTextResponse("; ".join(parts), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> PlainTextResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no resource at {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return PlainTextResponse(
            message, status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

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
