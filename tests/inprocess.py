"""The whole service inside the test's own process, for tests of routes and JobService policy.

Starting ``otf serve`` as a subprocess (tests/conftest.py ``ServerProcess``) costs about two
seconds, and its worker processes more: a test that only checks what the HTTP layer answers,
or what JobService decides, does not need them. :class:`InProcessService` builds the real app
(:func:`astro_otf.app.create_app`) with a :class:`FakeExecutor`, runs its lifespan on an event
loop in a background thread, and hands out an ``httpx.Client`` whose transport calls the app
directly (no socket): the test code stays synchronous, as it is against a real server, and a
module can share one service between its tests.

Everything but the executor is the real service: the store (SQLite in the test's folder, or
the PostgreSQL database ``database_url`` names, for a test marked ``postgres``), the job
folders, the scheduler and batch former, the reaper, quotas, auth. The fake executor starts no
process: each job of a batch follows a :class:`Behaviour` (complete with a small result file
written where a worker writes it, fail, hang until cancelled, die, time out, or run the real
worker code in a thread), and every batch it got is recorded.

What stays a subprocess test: anything that needs a real worker process (signals, a worker
killed, models kept warm, a run's progress over its pipe), several replicas of one
PostgreSQL database, a client that needs a port (the ``otf`` CLI, pyvo, a browser),
uvicorn's own behaviour (graceful shutdown), and endless responses (``/jobs/events``: the
ASGI transport hands a response over only once the app has finished it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from astro_otf.app import create_app, runtime_of
from astro_otf.config import Settings
from astro_otf.domain.job import ErrorType
from astro_otf.execution.base import WorkerDied
from astro_otf.execution.task import BatchTask, JobProgress, JobTask, ProducedResult, TaskOutcome
from astro_otf.service.jobs import JobService
from astro_otf.service.runtime import Runtime

T = TypeVar("T")

#: Where a fake run says it ran (jobInfo ``worker.host``).
FAKE_HOST = "in-process"
#: The base URL the test clients use (the ASGI app sees this host).
BASE_URL = "http://testserver"


# -- what a fake run of one job does -----------------------------------------------------------


@dataclass
class _Run:
    """One job's fake run: its task, its batch, and the executor's callbacks."""

    task: JobTask
    batch: BatchTask
    progress: Callable[[JobProgress], None] | None
    started: float = field(default_factory=time.monotonic)

    def info(self, **extra: Any) -> dict[str, Any]:
        """The jobInfo a worker sends back with every outcome (where, which batch)."""
        return {
            "worker": {"host": FAKE_HOST, "pid": os.getpid()},
            "batch_id": self.batch.batch_id,
            "batch_jobs": len(self.batch.tasks),
            "cpu_seconds": 0.0,
            **extra,
        }

    def report(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        """Pass one progress report on, as a worker's pipe would."""
        if self.progress is not None:
            self.progress(JobProgress(self.task.job_id, stage, done, total, len(self.batch.tasks)))

    @property
    def staging(self) -> Path:
        """Where a worker writes the run's results: ``staging/<run token>/`` of the job's
        folder (``results/`` when the task has no token: direct use)."""
        job_dir = Path(self.task.job_dir)
        if self.task.run_token is None:
            return job_dir / "results"
        return job_dir / "staging" / self.task.run_token


class Behaviour:
    """What one fake run of a job does; :meth:`run` returns its outcome or raises as an
    executor does (WorkerDied, TimeoutError) for the whole batch."""

    async def run(self, run: _Run) -> TaskOutcome:
        """Play the run (in the event loop)."""
        raise NotImplementedError


@dataclass
class Complete(Behaviour):
    """Completes after ``delay`` seconds with one small result file, written where a worker
    writes it (the run's staging folder) and listed as the worker lists it: the scheduler
    then moves it into ``results/``, as for a real run. ``info`` joins the jobInfo."""

    delay: float = 0.0
    text: str = "fake result\n"
    result_id: str = "result"
    filename: str = "report.txt"
    mime_type: str = "text/plain"
    info: Mapping[str, Any] = field(default_factory=dict)

    async def run(self, run: _Run) -> TaskOutcome:
        """Wait, write the file, and report it."""
        run.report("inference")
        if self.delay:
            await asyncio.sleep(self.delay)
        run.staging.mkdir(parents=True, exist_ok=True)
        path = run.staging / self.filename
        path.write_text(self.text)
        produced = ProducedResult(
            self.result_id, self.filename, self.mime_type, path.stat().st_size
        )
        info = run.info(run_seconds=round(time.monotonic() - run.started, 4), **self.info)
        return TaskOutcome(run.task.job_id, True, [produced], info)


@dataclass
class Fail(Behaviour):
    """Fails (a TaskOutcome that is not ok) with ``message`` and ``error_type``, as a worker
    reports a job's own failure."""

    message: str = "the fake run failed"
    error_type: ErrorType = ErrorType.FATAL
    delay: float = 0.0

    async def run(self, run: _Run) -> TaskOutcome:
        """Wait, then report the failure."""
        if self.delay:
            await asyncio.sleep(self.delay)
        return TaskOutcome(
            run.task.job_id,
            False,
            info=run.info(),
            error_message=self.message,
            error_type=self.error_type,
        )


@dataclass
class Hang(Behaviour):
    """Runs until cancelled (ABORT, DELETE, shutdown) or stopped by the batch's time limit;
    reports ``stage`` (with ``tiles`` done of total, if given) first, so that the job shows
    progress while it hangs."""

    stage: str | None = None
    tiles: tuple[int, int] | None = None

    async def run(self, run: _Run) -> TaskOutcome:
        """Report the stage, then wait for ever."""
        if self.stage is not None:
            done, total = self.tiles if self.tiles is not None else (None, None)
            run.report(self.stage, done, total)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class Die(Behaviour):
    """The process running the batch dies (WorkerDied) after ``delay`` seconds: the jobs of
    the batch not reported yet are the scheduler's to requeue or fail."""

    exitcode: int | None = -9
    reason: str | None = None
    delay: float = 0.0

    async def run(self, run: _Run) -> TaskOutcome:
        """Wait, then die."""
        if self.delay:
            await asyncio.sleep(self.delay)
        raise WorkerDied(self.exitcode, self.reason)


@dataclass
class TimeOut(Behaviour):
    """The batch runs past its time limit at once (TimeoutError, as the local executor raises
    when it kills a worker at the limit), whatever the limit was."""

    async def run(self, run: _Run) -> TaskOutcome:
        """Raise the time-out."""
        raise TimeoutError


@dataclass
class Sleep(Behaviour):
    """The ``sleep`` diagnostic app without a process: waits the job's DURATION (its
    default, 1 s, if none), then completes with its report.txt. A time limit shorter than
    DURATION stops it, as it stops a worker."""

    async def run(self, run: _Run) -> TaskOutcome:
        """Sleep DURATION, then complete."""
        duration = float(run.task.parameters.get("duration", "1"))
        report = f"slept {duration:g} s on host {FAKE_HOST} in pid {os.getpid()}\n"
        done = Complete(delay=duration, text=report, info={"slept_s": duration})
        return await done.run(run)


@dataclass
class RealRun(Behaviour):
    """The real worker code (:func:`astro_otf.execution.worker.run_batch`) in a thread of the
    test process: real results (a real model on a real image) without a worker process. The
    thread cannot be stopped: an ABORT answers at once but the run goes on to its end (its
    results are then thrown away by the scheduler). Every job of a batch must be a RealRun."""

    async def run(self, run: _Run) -> TaskOutcome:
        """Never called: the executor runs a batch of RealRuns whole."""
        raise AssertionError("a RealRun runs with its whole batch")


def emulate(task: JobTask) -> Behaviour:
    """The default behaviour: the ``sleep`` app sleeps its DURATION, any other model
    completes at once with a small result file."""
    return Sleep() if task.model_id == "sleep" else Complete()


def real_runs(task: JobTask) -> Behaviour:
    """A default for a service whose jobs run the real worker code (in a thread), except
    the ``sleep`` app, emulated (its real code would block a thread for DURATION)."""
    return Sleep() if task.model_id == "sleep" else RealRun()


# -- the executor ----------------------------------------------------------------------------------


class FakeExecutor:
    """An :class:`astro_otf.execution.base.Executor` that starts no process: each job of a
    batch plays its :class:`Behaviour`, in the batch's order, reporting each outcome as soon
    as it is known (as the local executor does). A job's behaviour is the next one
    :meth:`script` queued for it, else ``default(task)``. It records every batch it got
    (:attr:`batches`), and the jobs whose run was cancelled (:attr:`cancelled`).

    Set :attr:`down` to a reason to make it not alive (the scheduler then keeps jobs QUEUED
    and /health/ready says the reason)."""

    name = "fake"

    def __init__(
        self, capacity: int = 2, default: Callable[[JobTask], Behaviour] = emulate
    ) -> None:
        self.capacity = capacity
        self.default = default
        self.batches: list[BatchTask] = []
        #: job ids whose run was cancelled (ABORT, DELETE, shutdown), in order
        self.cancelled: list[str] = []
        #: job ids of the runs in progress
        self.running: set[str] = set()
        self.down: str | None = None
        self.started = False
        self.closed = False
        self._scripts: dict[str, deque[Behaviour]] = {}
        self._lock = threading.Lock()

    def script(self, job_id: str, *behaviours: Behaviour) -> None:
        """The next runs of ``job_id`` play ``behaviours``, one per run; later runs play the
        default again. Safe to call from the test's thread."""
        with self._lock:
            self._scripts.setdefault(job_id, deque()).extend(behaviours)

    def _behaviour(self, task: JobTask) -> Behaviour:
        with self._lock:
            queued = self._scripts.get(task.job_id)
            if queued:
                return queued.popleft()
        return self.default(task)

    def jobs_run(self) -> list[str]:
        """Every job id sent to the executor, in order (a job run twice appears twice)."""
        return [task.job_id for batch in list(self.batches) for task in batch.tasks]

    # -- the executor contract ---------------------------------------------------------

    def start(self) -> None:
        """Nothing to start: no process."""
        self.started = True

    async def run(
        self,
        task: BatchTask,
        timeout: float | None,
        report: Callable[[TaskOutcome], None] | None = None,
        progress: Callable[[JobProgress], None] | None = None,
    ) -> list[TaskOutcome]:
        """Play the batch's jobs; TimeoutError past ``timeout`` seconds; cancelling the
        caller stops the run (a hanging or sleeping job with it)."""
        if self.closed:
            raise RuntimeError("the executor is shut down")
        self.batches.append(task)
        behaviours = [self._behaviour(job) for job in task.tasks]
        ids = {job.job_id for job in task.tasks}
        self.running |= ids
        try:
            async with asyncio.timeout(timeout or None):
                if any(isinstance(b, RealRun) for b in behaviours):
                    return await self._real(task, behaviours, report, progress)
                outcomes = []
                for job, behaviour in zip(task.tasks, behaviours, strict=True):
                    outcome = await behaviour.run(_Run(job, task, progress))
                    outcomes.append(outcome)
                    if report is not None:
                        report(outcome)
                return outcomes
        except asyncio.CancelledError:
            self.cancelled.extend(job.job_id for job in task.tasks)
            raise
        finally:
            self.running -= ids

    async def _real(
        self,
        task: BatchTask,
        behaviours: list[Behaviour],
        report: Callable[[TaskOutcome], None] | None,
        progress: Callable[[JobProgress], None] | None,
    ) -> list[TaskOutcome]:
        """The batch through the real worker code, in a thread; its reports come back to the
        event loop, in order, as a worker's pipe brings them."""
        if not all(isinstance(b, RealRun) for b in behaviours):
            raise AssertionError(f"batch {task.batch_id} mixes RealRun with fake behaviours")
        from astro_otf.execution.worker import run_batch, thread_cpu

        loop = asyncio.get_running_loop()

        def in_loop(callback: Callable[[Any], None] | None) -> Callable[[Any], None] | None:
            """``callback`` called from the worker thread runs in the event loop."""
            if callback is None:
                return None

            def hand_over(value: Any) -> None:
                loop.call_soon_threadsafe(callback, value)

            return hand_over

        return await asyncio.to_thread(
            run_batch, task, in_loop(report), in_loop(progress), cpu_clock=thread_cpu
        )

    def alive(self) -> bool:
        """Alive unless shut down or :attr:`down`."""
        return not self.closed and self.down is None

    def problem(self) -> str | None:
        """Why it is not alive: :attr:`down`, or shut down."""
        if self.closed:
            return "the executor is shut down"
        return self.down

    async def shutdown(self) -> None:
        """Nothing to stop (the scheduler has cancelled its batches)."""
        self.closed = True


# -- the service in this process -------------------------------------------------------------


class IsolatedSettings(Settings):
    """The service's settings from the values given only: no ``OTF_*`` variable and no
    ``OTF_CONFIG`` file of the test's environment can change them (ServerProcess clears
    them from its server's environment for the same reason)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The values given to the constructor, nothing else."""
        return (init_settings,)


def settings_for(data_dir: Path, *, default_model: str | None = "sep", **values: Any) -> Settings:
    """Settings as ServerProcess gives its server: data in ``data_dir`` (SQLite there), the
    diagnostic apps on, two workers, warnings only, jobs on ``sep`` unless they name a model
    (``default_model=None``: the service's own default); ``values`` override (Python
    values: a dict for ``tokens``, a list for ``operators``)."""
    base: dict[str, Any] = {
        "data_dir": data_dir,
        "diagnostic_apps": True,
        "workers": 2,
        "log_level": "warning",
    }
    if default_model is not None:
        base["default_model"] = default_model
    return IsolatedSettings(**{**base, **values})


class InProcessService:
    """The real app with a :class:`FakeExecutor`, its lifespan running on an event loop in a
    background thread. Use as a context manager (or :meth:`start` / :meth:`stop`);
    :meth:`client` gives a synchronous httpx client for it, :meth:`call` runs a coroutine
    (JobService's methods) on its loop. ``data_dir`` and ``url`` mirror ServerProcess's, so
    that helpers written for a subprocess server serve here too.

    ``settings``, when given, are used as they are (settings a test did not build itself,
    such as those :func:`astro_otf.app.run_server` read from the environment): ``data_dir``
    must be theirs, and ``default_model`` and ``values`` are not taken."""

    def __init__(
        self,
        data_dir: Path,
        *,
        executor: FakeExecutor | None = None,
        default_model: str | None = "sep",
        settings: Settings | None = None,
        **values: Any,
    ) -> None:
        self.data_dir = data_dir
        if settings is None:
            settings = settings_for(data_dir, default_model=default_model, **values)
        elif values or Path(settings.data_dir) != data_dir:
            raise ValueError("given settings are used as they are, for their own data_dir")
        self.settings = settings
        self.executor = executor or FakeExecutor(capacity=self.settings.workers)
        self.app: FastAPI = create_app(self.settings, executor=self.executor)
        self.url = BASE_URL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._life: concurrent.futures.Future[None] | None = None
        self._clients: list[httpx.Client] = []
        self._http: httpx.Client | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> InProcessService:
        """Start the loop and run the app's lifespan up to its ``yield`` (migrations,
        registry, scheduler, reaper): the service is then ready."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="otf-inprocess", daemon=True)
        self._thread.start()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def life() -> None:
            self._stop = asyncio.Event()
            try:
                async with self.app.router.lifespan_context(self.app):
                    ready.set_result(None)
                    await self._stop.wait()
            except BaseException as exc:
                if not ready.done():
                    ready.set_exception(exc)
                raise

        self._life = asyncio.run_coroutine_threadsafe(life(), loop)
        try:
            ready.result(timeout)
        except BaseException:
            self._end_loop()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Close the clients, run the lifespan's end (scheduler, executor, store), stop the
        loop. Raises what the shutdown raised."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._http = None
        if self._loop is None or self._life is None:
            return
        try:
            if self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            self._life.result(timeout)
        finally:
            self._end_loop()

    def _end_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = self._life = None
        if loop is None:
            return

        async def last() -> None:
            await loop.shutdown_asyncgens()
            await loop.shutdown_default_executor()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(last(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(30)
        loop.close()

    def __enter__(self) -> InProcessService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- using it --------------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The service's event loop (running in its thread)."""
        if self._loop is None:
            raise RuntimeError("the in-process service is not started")
        return self._loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run ``coro`` on the service's loop and return its result (from the test's
        thread; never from the loop itself)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def client(self, **kwargs: Any) -> httpx.Client:
        """A synchronous client of the app (closed with the service); ``kwargs`` go to
        httpx.Client (headers, ...). Its default timeout is 60 s."""
        kwargs.setdefault("timeout", 60)
        client = httpx.Client(
            transport=SyncASGITransport(self.app, self.loop), base_url=BASE_URL, **kwargs
        )
        self._clients.append(client)
        return client

    @property
    def http(self) -> httpx.Client:
        """A client without headers of its own, shared by the callers that pass theirs with
        each request (``server.http.post("/jobs", headers=...)`` where a test of a
        subprocess server writes ``httpx.post(f"{server.url}/jobs", headers=...)``)."""
        if self._http is None:
            self._http = self.client()
        return self._http

    @contextlib.asynccontextmanager
    async def async_client(self, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
        """An async client of the app, for coroutines run with :meth:`call` (in the
        service's loop)."""
        kwargs.setdefault("timeout", 60)
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, **kwargs) as client:
            yield client

    @property
    def runtime(self) -> Runtime:
        """The running service's parts (store, scheduler, ...)."""
        return runtime_of(self.app)

    @property
    def service(self) -> JobService:
        """The running JobService (the policy; its methods are coroutines: :meth:`call`)."""
        return self.runtime.service

    def wait_until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll ``check`` (in the test's thread) until it holds; AssertionError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout} s: {check}")
            time.sleep(0.01)


# -- the synchronous transport -----------------------------------------------------------------


class _AsyncFromSync(httpx.AsyncByteStream):
    """A request body given as a synchronous iterator (a generator: no Content-Length),
    read chunk by chunk as the app asks for it."""

    def __init__(self, stream: httpx.SyncByteStream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._stream:
            yield chunk


class SyncASGITransport(httpx.BaseTransport):
    """httpx's ASGI transport for a synchronous client: each request runs in the app's
    event loop (another thread) while the calling thread waits for the whole response.
    Requests from several threads run concurrently, as on a real server. An exception the
    app raises is raised in the caller (its traceback there), not turned into a 500."""

    def __init__(self, app: FastAPI, loop: asyncio.AbstractEventLoop) -> None:
        self._inner = httpx.ASGITransport(app=app)
        self._loop = loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the app; the read timeout (if any) bounds the whole answer
        (httpx.ReadTimeout past it)."""
        if not isinstance(request.stream, httpx.AsyncByteStream):
            assert isinstance(request.stream, httpx.SyncByteStream)
            request.stream = _AsyncFromSync(request.stream)

        async def exchange() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
            response = await self._inner.handle_async_request(request)
            body = await response.aread()  # the raw bytes: ASGITransport decodes nothing
            return response.status_code, response.headers.raw, body

        timeout = request.extensions.get("timeout", {}).get("read")
        future = asyncio.run_coroutine_threadsafe(exchange(), self._loop)
        try:
            status, headers, body = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise httpx.ReadTimeout(f"no answer in {timeout} s", request=request) from None
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))
