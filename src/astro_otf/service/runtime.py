"""The running service: every part (database, job store and folders, model registry,
executor, scheduler, job service, replicas, reaper) made from the settings, started in order
and stopped in reverse. The HTTP app (:func:`astro_otf.app.create_app`) holds one for its
lifespan; the parts know nothing of HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from astro_otf import __version__
from astro_otf.batching.former import BatchRules
from astro_otf.config import Settings
from astro_otf.domain.phases import Phase
from astro_otf.execution.base import Executor
from astro_otf.execution.factory import make_executor
from astro_otf.models.registry import Registry, RegistryConfig, build_registry
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
from astro_otf.store.repository import JobStore
from astro_otf.store.secret import data_secret
from astro_otf.store.usage import UsageStore

__all__ = ["Runtime", "running", "web_secret"]

log = logging.getLogger("astro_otf")


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


def web_secret(settings: Settings) -> bytes:
    """The service's own secret key (it signs the web page's CSRF tokens), kept in the data
    folder so that restarts and replicas agree on it (see
    :func:`astro_otf.store.secret.data_secret`)."""
    return data_secret(Path(settings.data_dir))


class Runtime:
    """Every part of the service, made by :meth:`build` and run by :meth:`start` and
    :meth:`stop` (or :func:`running`). ``alone``: this server holds the data folder's lock
    exclusively (no other server can be creating jobs in it while it recovers)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        registry_config: RegistryConfig,
        registry: Registry,
        *,
        alone: bool,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.alone = alone
        self.engine = engine
        self.replicated = engine.dialect.name == "postgresql"
        # Job records are cached only where every write goes through this process: a lone
        # server (SQLite, the data folder locked exclusively). PostgreSQL replicas write the
        # same rows.
        self.store = JobStore(engine, cache=JobCache() if alone and not self.replicated else None)
        self.folders = JobFolders(settings.data_dir)
        self.registry_config = registry_config
        self.registry = registry
        self.executor: Executor = (
            executor if executor is not None else make_executor(settings, registry_config)
        )
        self.events = JobEvents()
        self.metrics = Metrics(self.store)
        self.scheduler = Scheduler(
            self.store,
            self.folders,
            self.executor,
            self.events,
            apps=registry,
            registry=registry_config,
            rules=BatchRules(
                max_jobs=settings.batch_max_jobs,
                max_tiles=settings.batch_max_tiles,
                max_wait=settings.batch_max_wait,
            ),
            metrics=self.metrics,
        )
        self.feed = JobFeed()
        self.uploads = UploadService(settings, engine)
        self.usage = UsageStore(engine)
        self.quotas = Quotas(settings, self.usage)
        self.service = JobService(
            settings,
            self.store,
            self.folders,
            registry,
            self.events,
            self.scheduler,
            feed=self.feed,
            uploads=self.uploads,
            quotas=self.quotas,
        )
        self.scheduler.on_progress = self.service.progress_changed
        self.reaper = Reaper(self.service)
        self.accounting = Accounting(self.usage, self.quotas)
        self.replicas: Replicas | None = None
        if self.replicated:  # replicas may share this database: only the leader runs jobs
            self.scheduler.active = False
            self.replicas = Replicas(
                engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                on_change=self._changed,
                on_lead=self._take_over,
                on_follow=self._follow,
            )

    @classmethod
    async def build(
        cls, settings: Settings, *, alone: bool, executor: Executor | None = None
    ) -> Runtime:
        """The parts made (the database migrated, the model registry read), none started.
        ``executor``, when given, runs the jobs instead of the one ``settings`` names."""
        engine = make_engine(settings.effective_database_url)
        await in_thread(migrate, engine)
        registry_config = RegistryConfig.from_settings(settings)
        registry = await in_thread(build_registry, registry_config)
        return cls(settings, engine, registry_config, registry, alone=alone, executor=executor)

    async def start(self) -> None:
        """Start the parts: a lone server first takes over what a previous run left behind;
        a replica waits to lead before it runs jobs."""
        if self.replicas is None:
            await self._take_over()
        self.scheduler.start()
        if self.replicas is not None:
            self.replicas.start()
        self.reaper.start()
        log.info(
            "astro-otf %s: data in %s, %s executor with %d worker(s), database %s",
            __version__,
            self.settings.data_dir,
            self.executor.name,
            self.executor.capacity,
            self.engine.url.render_as_string(hide_password=True),
        )

    async def stop(self) -> None:
        """Stop the parts in the reverse order of their start, then close the database."""
        await self.reaper.stop()
        await self.service.holds.stop()
        if self.replicas is not None:
            await self.replicas.stop()
        await self.scheduler.stop()
        await self.executor.shutdown()
        await self.service.close()
        self.engine.dispose()

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """The checks of ``/health/ready``, each with ``ok``: the database answers, the
        executor and the scheduler run, the reaper runs, and (PostgreSQL) this replica
        follows or leads."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            await in_thread(self.store.ping)
            checks["database"] = {"ok": True}
        except Exception as exc:
            checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        checks["executor"] = {
            "ok": self.scheduler.alive,
            "problem": self.executor.problem(),
            "kind": self.executor.name,
            "workers": self.executor.capacity,
            "running": len(self.scheduler.running),
        }
        checks["reaper"] = {"ok": self.reaper.alive}
        if self.replicas is not None:  # PostgreSQL: one of possibly several replicas
            checks["replica"] = {"ok": self.replicas.alive, "leader": self.replicas.leader}
        return checks

    def _changed(self, job_id: str, what: str) -> None:
        on_change(self.scheduler, self.events, job_id, what, self.service.holds)

    async def _take_over(self) -> None:
        """This process now runs jobs: first those a previous run left behind."""
        orphan_age = 0.0 if self.alone else ORPHAN_MIN_AGE_S
        requeued, failed = await in_thread(recover, self.store, self.folders, orphan_age)
        if requeued or failed:
            log.info("recovered: %d job(s) queued again, %d lost", requeued, failed)
        self.scheduler.active = True
        self.scheduler.wake()
        await self.service.holds.start()  # HELD jobs: their folders and deadlines are watched

    def _follow(self) -> None:
        self.scheduler.active = False
        self.scheduler.cancel_soon()
        self.service.holds.stop_soon()


@asynccontextmanager
async def running(
    settings: Settings, *, alone: bool, executor: Executor | None = None
) -> AsyncIterator[Runtime]:
    """The service built and started; stopped when the block ends."""
    runtime = await Runtime.build(settings, alone=alone, executor=executor)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()
