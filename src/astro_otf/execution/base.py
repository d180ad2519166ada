"""The executor contract the scheduler relies on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from astro_otf.execution.task import BatchTask, JobProgress, TaskOutcome

__all__ = ["BatchInterrupted", "Executor", "JobCancelled", "NoCapableWorker", "WorkerDied"]


class WorkerDied(Exception):
    """The process running a job ended without answering (killed, crashed, out of memory).
    ``reason`` says so in words where an exit code does not (a lost Dask worker).
    ``deaths`` is how many workers died running the batch before the executor gave up (a
    Dask task is retried once by Dask itself before it is reported lost)."""

    def __init__(self, exitcode: int | None, reason: str | None = None, deaths: int = 1) -> None:
        super().__init__(reason or f"worker exited with code {exitcode}")
        self.exitcode = exitcode
        self.reason = reason
        self.deaths = deaths


class BatchInterrupted(Exception):
    """The batch was stopped through no fault of its jobs (the connection to the cluster was
    lost): its jobs are queued again."""


class NoCapableWorker(Exception):
    """No worker can ever run the batch as configured (missing resources): its jobs fail
    with this message rather than wait forever."""


class JobCancelled(Exception):
    """The job's run was stopped on request (ABORT or DELETE): the worker is gone."""


class Executor(Protocol):
    """Where the scheduler's batches run (local worker processes, a Dask cluster): it
    starts and stops the workers, runs one batch per call and says whether it can take one now.
    ``name`` names it in the log and in ``/health/ready``."""

    name: str
    #: How many jobs may run at once.
    capacity: int

    def start(self) -> None:
        """Start the workers (called in the event loop)."""
        ...

    async def run(
        self,
        task: BatchTask,
        timeout: float | None,
        report: Callable[[TaskOutcome], None] | None = None,
        progress: Callable[[JobProgress], None] | None = None,
    ) -> list[TaskOutcome]:
        """Run one batch of jobs: an outcome per job, in order. Raises TimeoutError past
        ``timeout`` seconds and WorkerDied when the process running it dies. Cancelling the
        awaiting task stops the work, whether it still waits for a worker or runs.

        ``report``, when given, may be called (in the event loop, synchronously) with a job's
        outcome as soon as that job has ended, before the batch does; an executor that
        cannot tell (Dask) only returns the outcomes at the batch's end. A job reported
        this way is the caller's from then on: its outcome in the returned list is the same,
        and a later failure of the batch (death, timeout, cancel) no longer concerns it.

        ``progress``, when given, may be called (in the event loop, synchronously) with a
        job's progress while it runs (its stage, tiles done of total); the worker throttles
        these, and an executor that cannot tell calls it never or with stage only."""
        ...

    def alive(self) -> bool:
        """Whether batches can be sent now; the scheduler keeps jobs QUEUED while not."""
        ...

    def problem(self) -> str | None:
        """Why the executor is not alive, in one line for the log and /health/ready."""
        ...

    async def shutdown(self) -> None:
        """Stop the workers and let go of the cluster, if any (in the event loop, at server
        shutdown); no batch is run after."""
        ...
