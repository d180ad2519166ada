"""The local executor: worker processes on this machine, each with a pipe of its own.

Why not concurrent.futures or pebble: both share one task channel among workers, and a worker
killed while it waits on that channel breaks the whole pool (measured with pebble 5.2: every
later task fails with "Unexpected error within the Pool"). Here each worker owns its pipe, so
killing one (ABORT, executionDuration, the OOM killer) only ends its own job, and the pool
replaces it. It is driven by the event loop (readers on each pipe and on each process
sentinel): no thread waits on a worker.

A worker reports each job of its batch as soon as that job's results are staged (a message
per job on its pipe), then the batch's end: the scheduler records every job when its own
work ends, and a worker that dies mid-batch takes down only the jobs it had not reported.
While a job runs its worker also sends its progress (throttled in the worker: see
:class:`astro_otf.execution.worker.ProgressSender`), passed on to ``run``'s ``progress``.

Workers die with their server. A worker whose server was killed (kill -9, the OOM killer)
must not finish its batch on its own: the restarted server has queued those jobs again. On
Linux each worker asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``,
set first thing at start; the signal follows the death of the thread that spawned the
worker, which is the event loop's thread, alive as long as the server); everywhere a
watcher thread also ends the worker within a second once its parent pid changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

from astro_otf.execution.base import JobCancelled, WorkerDied
from astro_otf.execution.task import BatchTask, JobProgress, TaskOutcome
from astro_otf.models.registry import RegistryConfig

__all__ = ["LocalExecutor"]

log = logging.getLogger(__name__)


#: prctl(2) option: the signal this process gets when its parent dies
PR_SET_PDEATHSIG = 1
#: Seconds between the watcher thread's looks at the parent pid.
PARENT_CHECK_S = 0.5

#: Seconds between safety looks at a busy worker's pipe (see LocalExecutor.run).
RECHECK_S = 1.0

#: The messages a worker sends on its pipe: (PROGRESS, JobProgress) while a job runs,
#: (JOB_DONE, TaskOutcome) as each job of its batch ends, then (BATCH_DONE, [TaskOutcome, ...])
#: when the whole batch has.
PROGRESS = "progress"
JOB_DONE = "job"
#: How long an idle worker is given to end by itself at shutdown before it is killed.
IDLE_EXIT_S = 0.3
BATCH_DONE = "batch"


def _die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` (the server) dies: the kernel's parent-death
    signal on Linux, and a watcher thread everywhere (and as a second line on Linux)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except OSError as exc:
            log.warning("cannot set the parent-death signal (%s)", exc)
    if os.getppid() != parent_pid:  # the server died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="otf-parent-watch", daemon=True).start()


def worker_main(conn: Connection, registry: RegistryConfig, parent_pid: int | None = None) -> None:
    """A worker's life: warm up, then run one task at a time until told to stop."""
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    from astro_otf.execution.worker import run_batch, warm_up

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which stops us
    warm_up(registry)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if task is None:  # idle, holding nothing: skip the interpreter's slow teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        # each job's outcome as soon as it is known, then the batch's end
        outcomes = run_batch(
            task,
            report=lambda outcome: conn.send((JOB_DONE, outcome)),
            progress=lambda progress: conn.send((PROGRESS, progress)),
        )
        conn.send((BATCH_DONE, outcomes))


class _Worker:
    def __init__(self, process: SpawnProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.batch_id: str | None = None
        self.future: asyncio.Future[list[TaskOutcome]] | None = None
        self.report: Callable[[TaskOutcome], None] | None = None
        self.progress: Callable[[JobProgress], None] | None = None
        self.retired = False
        self.exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid


class LocalExecutor:
    """``workers`` spawned worker processes on this machine, each running one batch
    at a time and warming ``registry``'s models at start; one that dies is replaced."""

    name = "local"

    def __init__(self, workers: int, registry: RegistryConfig) -> None:
        self.capacity = workers
        self.registry = registry
        # spawn: the web process has threads and an event loop, which fork would copy.
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._freed: asyncio.Event | None = None  # set when a worker may have become idle

    # -- pool upkeep ---------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the worker processes (in the event loop, whose readers serve them)."""
        self._loop = asyncio.get_running_loop()
        self._freed = asyncio.Event()
        for _ in range(self.capacity):
            self._spawn()

    def _spawn(self) -> None:
        assert self._loop is not None
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(child, self.registry, os.getpid()),
            name="otf-worker",
            daemon=True,
        )
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        self._loop.add_reader(parent.fileno(), self._on_message, worker)
        self._loop.add_reader(process.sentinel, self._on_exit, worker)
        # uvloop's add_reader makes the fd non-blocking; a Connection needs it blocking, or a
        # message bigger than the pipe's buffer (a big batch's outcomes, or its task) is
        # cut short by BlockingIOError and lost (measured: a 64-job batch hung EXECUTING)
        os.set_blocking(parent.fileno(), True)
        self._signal_free()

    def _signal_free(self) -> None:
        if self._freed is not None:
            self._freed.set()

    def _forget(self, worker: _Worker) -> None:
        assert self._loop is not None
        if worker in self._workers:
            self._workers.remove(worker)
        for fd in (worker.conn.fileno(), worker.process.sentinel):
            self._loop.remove_reader(fd)
        worker.conn.close()

    def _on_message(self, worker: _Worker) -> None:
        """Every message waiting on the worker's pipe, not only one per call (an event loop
        need not call the reader again for messages that were already waiting)."""
        try:
            while not worker.conn.closed and worker.conn.poll(0):
                self._handle(worker, *worker.conn.recv())
        except (EOFError, OSError):
            return  # the process is exiting: _on_exit reports it

    def _handle(self, worker: _Worker, kind: str, payload: Any) -> None:
        future = worker.future
        if kind == PROGRESS:
            if worker.progress is not None and future is not None and not future.done():
                try:
                    worker.progress(payload)
                except Exception:
                    log.exception("recording the progress of job %s failed", payload.job_id)
            return
        if kind == JOB_DONE:
            # one job of the batch ended: the service records it now (not if the run was
            # stopped meanwhile: then its end is already being recorded)
            if worker.report is not None and future is not None and not future.done():
                try:
                    worker.report(payload)
                except Exception:
                    log.exception("recording the end of job %s failed", payload.job_id)
            return
        worker.batch_id, worker.future, worker.report = None, None, None
        worker.progress = None
        self._signal_free()
        if future is not None and not future.done():
            future.set_result(payload)

    def _on_exit(self, worker: _Worker) -> None:
        if worker.exited.is_set():  # seen already (the sentinel, or run's safety look)
            return
        worker.process.join(timeout=1)  # the sentinel closes just before the exit status exists
        code = worker.process.exitcode
        self._forget(worker)
        worker.exited.set()
        future = worker.future
        if future is not None and not future.done():
            future.set_exception(WorkerDied(code))
        if not worker.retired:
            log.warning("worker pid %s exited with code %s; starting a new one", worker.pid, code)
        if not self._closed:
            self._spawn()

    def _kill(self, worker: _Worker, error: BaseException) -> None:
        """Stop the worker now; its job's run ends with ``error``."""
        future = worker.future
        worker.retired = True
        if future is not None and not future.done():
            future.set_exception(error)
        worker.process.kill()  # _on_exit replaces it

    # -- the executor contract ---------------------------------------------------------

    async def run(
        self,
        task: BatchTask,
        timeout: float | None,
        report: Callable[[TaskOutcome], None] | None = None,
        progress: Callable[[JobProgress], None] | None = None,
    ) -> list[TaskOutcome]:
        """Run ``task`` in an idle worker. Raises TimeoutError past ``timeout`` seconds and
        WorkerDied if the process dies; cancelling the caller kills the worker. ``report`` is
        called (in the event loop) with each job's outcome as soon as the worker sends it,
        before the batch ends; ``progress`` with each progress report of a job."""
        loop = asyncio.get_running_loop()
        assert self._freed is not None, "start() the executor first"
        while (worker := self._pick()) is None:  # a killed worker's successor is starting
            self._freed.clear()
            await self._freed.wait()
        future: asyncio.Future[list[TaskOutcome]] = loop.create_future()
        worker.batch_id, worker.future, worker.report = task.batch_id, future, report
        worker.progress = progress
        timer = None
        if timeout:
            timer = loop.call_later(timeout, self._kill, worker, TimeoutError())
        with contextlib.suppress(OSError):  # dead already: _on_exit sets WorkerDied
            worker.conn.send(task)
        try:
            while True:
                # the pipe's reader answers at once; a look every RECHECK_S seconds is a
                # safety net should an event loop ever miss a wake-up (a lost message would
                # otherwise hold the worker, and its jobs, for ever)
                done, _ = await asyncio.wait({future}, timeout=RECHECK_S)
                if done:
                    return future.result()
                if worker.future is future and not worker.conn.closed:
                    self._on_message(worker)
                    if not future.done() and not worker.process.is_alive():
                        self._on_exit(worker)
        except asyncio.CancelledError:  # the job was aborted or deleted: stop its work
            future.cancel()  # nobody will read its outcome
            self._kill(worker, JobCancelled(task.batch_id))
            # return once the work has really stopped, so that an ABORT answered means it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), 10)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _pick(self) -> _Worker | None:
        if self._closed:
            raise RuntimeError("the executor is shut down")
        return next((w for w in self._workers if w.future is None and not w.retired), None)

    def alive(self) -> bool:
        """True while not shut down and at least one worker process is alive."""
        return not self._closed and sum(w.process.is_alive() for w in self._workers) > 0

    def problem(self) -> str | None:
        """Why the executor is not alive (shut down, no worker alive), or None."""
        if self._closed:
            return "the executor is shut down"
        return None if self.alive() else "no worker process is alive"

    async def shutdown(self) -> None:
        """Stop every worker (called from the event loop at server shutdown)."""
        self._closed = True
        for worker in list(self._workers):
            worker.retired = True
            if worker.future is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
            else:
                worker.process.kill()
        # an idle worker ends at once; one still warming up reads the stop only after its
        # warm-up: it holds nothing yet, so it is not waited for
        deadline = time.monotonic() + IDLE_EXIT_S
        for worker in list(self._workers):
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            self._forget(worker)
