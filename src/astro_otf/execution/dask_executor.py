"""The Dask executor: each batch is one task on an existing Dask cluster.

Regional centres already run Dask (with dask-jobqueue on Slurm, PBS or HTCondor, or
dask-kubernetes), so when one machine is not enough astro-otf hands its batches to that engine
rather than to a scheduler of its own. The batch former still decides what runs together; a
Dask worker runs :func:`astro_otf.execution.worker.run_batch` on it, exactly as a local worker
process does, and keeps models warm in its process (the worker module's registry and ONNX
session caches, whose sessions are checked against the manifest's sha256 when loaded). Inputs
and results go through ``data_dir``, which server and workers must share.

Failures map onto the scheduler's outcomes: a task whose workers died more often than the
Dask scheduler's ``allowed-failures`` (set it to 1: one retry) raises KilledWorker, and the
jobs become ERROR; a task that raised is resubmitted once by Dask (``retries=1``); a batch
that no connected worker has the resources for fails at once rather than waiting forever.
While the scheduler is unreachable, or has no workers, :meth:`alive` is false: jobs wait
QUEUED and ``/health/ready`` says why. ABORT cancels the future; Dask cannot interrupt a task
that already runs in a worker thread, so that batch finishes in the background and its
output is thrown away.

Unlike a local worker, a Dask task reports its jobs' outcomes together when the batch ends
(a per-job channel through a Dask Queue would cost a scheduler round trip per job and one
more thing to lose with the scheduler); batches are kept short by the former's share rule.
Progress does come while a batch runs: the task logs each (throttled) progress report as a
Dask worker event on the ``otf-progress`` topic, and this client, subscribed to it, passes it
on to ``run``'s ``progress`` (best effort: an event lost only leaves a stage shown longer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from astro_otf.execution.base import BatchInterrupted, NoCapableWorker, WorkerDied
from astro_otf.execution.task import BatchTask, JobProgress, TaskOutcome
from astro_otf.execution.worker import process_cpu, run_batch, thread_cpu
from astro_otf.models.registry import RegistryConfig

__all__ = ["DaskExecutor"]

log = logging.getLogger(__name__)

#: Seconds between checks of the connection and of the workers while not ready.
RECHECK_S = 2.0

#: The Dask event topic that carries the progress of running batches.
PROGRESS_TOPIC = "otf-progress"


def run_batch_on_dask(task: BatchTask) -> list[TaskOutcome]:
    """:func:`run_batch` in a Dask worker, its jobs' progress logged as worker events. Its
    CPU time is its thread's (other tasks may run in the process meanwhile), or the
    process's when the worker runs one task at a time: the thread's clock would miss the
    threads a model's runtime starts (ONNX Runtime's intra-op pool)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not in a worker (a local test run): nobody to tell
        return run_batch(task, cpu_clock=thread_cpu)
    alone = getattr(getattr(worker, "state", None), "nthreads", None) == 1

    def send(progress: JobProgress) -> None:
        worker.log_event(
            PROGRESS_TOPIC,
            {
                "batch_id": task.batch_id,
                "job_id": progress.job_id,
                "stage": progress.stage,
                "tiles_done": progress.tiles_done,
                "tiles_total": progress.tiles_total,
                "batch_jobs": progress.batch_jobs,
            },
        )

    return run_batch(task, progress=send, cpu_clock=process_cpu if alone else thread_cpu)


class DaskExecutor:
    """Runs each batch as one task on the Dask scheduler at ``address``, asking for
    ``resources`` (Dask worker resources, e.g. GPU=1); ``capacity`` batches at once. It
    connects in the background and reconnects while the scheduler is unreachable."""

    name = "dask"

    def __init__(
        self,
        address: str,
        capacity: int,
        registry: RegistryConfig,
        *,
        resources: dict[str, float] | None = None,
    ) -> None:
        self.address = address
        self.capacity = capacity
        self.registry = registry
        self.resources = dict(resources or {})
        self._client: Any = None  # distributed.Client (asynchronous)
        self._watch: asyncio.Task[None] | None = None
        self._problem: str | None = f"connecting to the Dask scheduler at {address}"
        self._worker_info: dict[str, Any] = {}
        self._closed = False
        #: batch id -> where its jobs' progress goes
        self._progress: dict[str, Callable[[JobProgress], None]] = {}

    # -- connection ----------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting to the scheduler in the background (in the event loop)."""
        self._watch = asyncio.create_task(self._keep_connected(), name="otf-dask-watch")

    async def _keep_connected(self) -> None:
        from distributed import Client

        # distributed's Client is untyped: called through a typed name (it answers Any)
        connect: Callable[..., Any] = Client
        reported: str | None = None
        while not self._closed:
            if self._client is None or self._client.status not in ("running", "connecting"):
                await self._drop_client()
                try:
                    self._client = await connect(
                        self.address, asynchronous=True, timeout="5s", set_as_default=False
                    )
                    self._client.subscribe_topic(PROGRESS_TOPIC, self._on_progress)
                except Exception as exc:
                    self._problem = (
                        f"cannot reach the Dask scheduler at {self.address} "
                        f"({type(exc).__name__}: {exc}); jobs wait QUEUED until it answers"
                    )
            if self._client is not None and self._client.status == "running":
                if not await self._refresh_workers():
                    pass  # _problem says why
                elif not self._worker_info:
                    self._problem = (
                        f"the Dask scheduler at {self.address} has no workers; jobs wait "
                        "QUEUED until one connects"
                    )
                else:
                    self._problem = None
            if self._problem != reported:
                if self._problem:
                    log.warning("%s", self._problem)
                else:
                    log.info(
                        "Dask scheduler %s ready with %d worker(s)",
                        self.address,
                        len(self._worker_info),
                    )
                reported = self._problem
            await asyncio.sleep(RECHECK_S)

    def _on_progress(self, event: tuple[float, Any]) -> None:
        """A worker's progress event (in the event loop): to its batch's ``progress``."""
        try:
            _, msg = event
            callback = self._progress.get(msg["batch_id"])
            if callback is not None:
                callback(
                    JobProgress(
                        str(msg["job_id"]),
                        str(msg["stage"]),
                        msg.get("tiles_done"),
                        msg.get("tiles_total"),
                        int(msg.get("batch_jobs") or 1),
                    )
                )
        except Exception:
            log.exception("a progress event could not be passed on: %r", event)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _refresh_workers(self) -> bool:
        """The scheduler's current workers (address -> their description, resources
        included), asked of the scheduler itself: the client's cached view is not kept
        up to date."""
        try:
            info = await asyncio.wait_for(self._client.scheduler.identity(n_workers=-1), 5)
        except Exception as exc:
            self._worker_info = {}
            self._problem = f"the Dask scheduler at {self.address} does not answer ({exc})"
            return False
        self._worker_info = dict(info.get("workers", {}))
        return True

    def problem(self) -> str | None:
        """Why no batch can be sent now (None when ready)."""
        return self._problem

    def alive(self) -> bool:
        """True while connected to a scheduler that has workers, and not shut down."""
        return not self._closed and self._problem is None

    # -- the executor contract ---------------------------------------------------------

    async def run(
        self,
        task: BatchTask,
        timeout: float | None,
        report: Callable[[TaskOutcome], None] | None = None,
        progress: Callable[[JobProgress], None] | None = None,
    ) -> list[TaskOutcome]:
        """Run the batch as one Dask task. ``report`` is not used: a Dask task's outcomes
        come back together when the batch ends, and the scheduler records them then.
        ``progress`` gets the progress events its task logs."""
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        client = self._client
        if client is None or self._problem is not None:
            raise BatchInterrupted(self._problem or "the Dask scheduler is not connected")
        self._check_resources()
        if progress is not None:
            self._progress[task.batch_id] = progress
        future = client.submit(
            run_batch_on_dask,
            task,
            key=f"otf-batch-{task.batch_id}",
            pure=False,
            retries=1,
            resources=self.resources or None,
        )
        try:
            result: list[TaskOutcome] = await asyncio.wait_for(future, timeout)
            return result
        except TimeoutError:
            await self._cancel(future)
            raise
        except FutureCancelledError as exc:  # not by us: the scheduler went away or restarted
            raise BatchInterrupted(f"the Dask scheduler dropped the batch ({exc})") from None
        except asyncio.CancelledError:  # ABORT or DELETE of a job of the batch
            await asyncio.shield(self._cancel(future))
            raise
        except KilledWorker as exc:
            raise WorkerDied(
                None,
                reason=f"the Dask worker running its batch was lost ({exc}), and again on "
                "the retry",
                deaths=2,
            ) from None
        except OSError as exc:
            raise BatchInterrupted(f"lost the Dask scheduler ({exc})") from None
        finally:
            self._progress.pop(task.batch_id, None)

    def _check_resources(self) -> None:
        if not self.resources:
            return
        offers = [w.get("resources") or {} for w in self._worker_info.values()]
        if any(all(o.get(k, 0) >= v for k, v in self.resources.items()) for o in offers):
            return
        wanted = ", ".join(f"{k}={v:g}" for k, v in sorted(self.resources.items()))
        seen = sorted(
            {", ".join(f"{k}={v:g}" for k, v in sorted(o.items())) or "none" for o in offers}
        )
        raise NoCapableWorker(
            f"no Dask worker offers the resources every batch asks for ({wanted}); the "
            f"{len(offers)} connected worker(s) offer: {'; '.join(seen) or 'nothing'}. Ask the "
            "service operators to start workers with those resources."
        )

    async def _cancel(self, future: Any) -> None:
        with contextlib.suppress(Exception):
            await self._client.cancel([future], force=True)

    async def shutdown(self) -> None:
        """Stop reconnecting and close the client; the cluster itself, not ours, keeps
        running."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        await self._drop_client()
