"""The executor contract the scheduler relies on."""

from __future__ import annotations

from typing import Protocol

from astro_otf.execution.task import BatchTask, TaskOutcome
from astro_otf.models.registry import RegistryConfig


class WorkerDied(Exception):
    """The process running a job ended without answering (killed, crashed, out of memory)."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"worker exited with code {exitcode}")
        self.exitcode = exitcode


class JobCancelled(Exception):
    """The job's run was stopped on request (ABORT or DELETE): the worker is gone."""


class Executor(Protocol):
    name: str
    #: How many jobs may run at once.
    capacity: int

    def start(self) -> None:
        """Start the workers (called in the event loop)."""
        ...

    async def run(self, task: BatchTask, timeout: float | None) -> list[TaskOutcome]:
        """Run one batch of jobs: an outcome per job, in order. Raises TimeoutError past
        ``timeout`` seconds and WorkerDied when the process running it dies. Cancelling the
        awaiting task stops the work, whether it still waits for a worker or runs."""
        ...

    def alive(self) -> bool: ...

    def shutdown(self) -> None: ...


def make_executor(kind: str, workers: int, registry: RegistryConfig) -> Executor:
    if kind == "local":
        from astro_otf.execution.local import LocalExecutor

        return LocalExecutor(workers, registry)
    raise ValueError(f"unknown executor {kind!r}")
