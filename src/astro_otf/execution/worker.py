"""The code that runs inside a worker process: a batch of jobs, from stored parameters to
result files.

A batch holds jobs of one model that can share forward passes (one job for a classical
finder). The worker never raises for a job's own failure: each job gets a TaskOutcome, with
an error message when it failed, and its details (traceback included) in the job's
``logs/job.log``. One job's bad input fails that job only.

Each run of a job has a token (given by the scheduler when it claimed the job). The run
writes its results in ``staging/<token>/`` and leaves them there: the service moves them
into ``results/`` in the same transaction that records the job COMPLETED, and only while
the run still owns the job, so a stale run (its server killed, the job queued again and run
by another) can never list its files. Every line a run writes in the job's log carries its
token (``[run <token>]``), from "... pid P, batch B of N job(s), run T" to "run T ended", so
that runs of one job can be told apart, and while it runs the run holds an ``flock`` on
``logs/run.lock``: a second live run of the job would wait for it, and says so in the log.

While a batch runs, each job's progress (its stage; tiles done of total during inference) goes
to ``progress`` (the local executor sends it over the worker's pipe): every change of stage,
and within a stage at most one report per job every PROGRESS_INTERVAL_S seconds
(:class:`ProgressSender`), so that a job of thousands of tiles costs a handful of messages.

Each job's CPU time goes back in its outcome's ``cpu_seconds`` (:class:`CpuMeter`): a local
worker process measures itself and the children it waited for (``RUSAGE_SELF`` +
``RUSAGE_CHILDREN``, so a command app's subprocess counts); a Dask task measures its thread
(``RUSAGE_THREAD``), unless its worker runs one task at a time (then its process). What a
job does alone (its own run, its result files) is its own; what its batch does together
(loading the model, shared forward passes) is split among the batch's jobs by their tiles.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import resource
import shutil
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astro_otf.domain.errors import JobFailure, OTFError
from astro_otf.domain.job import ErrorType
from astro_otf.domain.parameters import roi_from, validate
from astro_otf.execution.task import BatchTask, JobProgress, JobTask, ProducedResult, TaskOutcome
from astro_otf.models.base import App, AppOutput, AppRequest, BatchableApp, ResultFile
from astro_otf.models.registry import Registry, RegistryConfig, build_registry
from astro_otf.results.products import JobContext, write_products

__all__ = ["CpuMeter", "ProgressSender", "process_cpu", "run_batch", "thread_cpu", "warm_up"]

_registries: dict[RegistryConfig, Registry] = {}

#: Seconds a run waits for an earlier run of its job that still holds the job's run lock
#: (a process being killed frees it at once; a live stale run is then stopped by its own
#: server, or could only finish without its results being listed).
RUN_LOCK_WAIT_S = 30.0

#: Seconds between two progress reports of one job within one stage (a new stage is always
#: reported at once): at most about 4 messages a second per job.
PROGRESS_INTERVAL_S = 0.25


class ProgressSender:
    """Passes a batch's progress reports on to ``send``, dropping those that come too fast:
    a job's new stage always goes, and within a stage one report per
    ``interval`` seconds. Never raises: a report that cannot be sent is lost, the job goes
    on."""

    def __init__(
        self,
        send: Callable[[JobProgress], None],
        batch_jobs: int,
        *,
        interval: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self.batch_jobs = batch_jobs
        self.interval = interval
        self._clock = clock
        #: job id -> (stage, when) of its last report sent
        self._last: dict[str, tuple[str, float]] = {}

    def __call__(
        self, job_id: str, stage: str, tiles_done: int | None = None, tiles_total: int | None = None
    ) -> None:
        """What an app calls to report a job's progress: :meth:`send`, its answer dropped."""
        self.send(job_id, stage, tiles_done, tiles_total)

    def send(
        self, job_id: str, stage: str, tiles_done: int | None = None, tiles_total: int | None = None
    ) -> bool:
        """Report (True) or drop (False) one job's progress."""
        now = self._clock()
        last = self._last.get(job_id)
        if last is not None and last[0] == stage and now - last[1] < self.interval:
            return False
        self._last[job_id] = (stage, now)
        try:
            self._send(JobProgress(job_id, stage, tiles_done, tiles_total, self.batch_jobs))
        except Exception:
            logging.getLogger(__name__).debug("progress of %s not sent", job_id, exc_info=True)
            return False
        return True


def process_cpu() -> float:
    """CPU seconds (user + system) of this process and of its children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def thread_cpu() -> float:
    """CPU seconds (user + system) of the calling thread (a Dask task's)."""
    if hasattr(resource, "RUSAGE_THREAD"):  # Linux
        used = resource.getrusage(resource.RUSAGE_THREAD)
        return used.ru_utime + used.ru_stime
    return time.thread_time()


class CpuMeter:
    """A batch's CPU time, read from ``clock`` between the batch's steps and charged either
    to one job (:meth:`own`: what it did alone) or to several by their weights
    (:meth:`shared`: what they did together). Each charge takes what was spent since the
    previous one, so every CPU second of the batch is charged once."""

    def __init__(self, clock: Callable[[], float], weights: dict[str, float]) -> None:
        self._clock = clock
        self.weights = {job_id: max(float(w), 1e-9) for job_id, w in weights.items()}
        self.used = dict.fromkeys(weights, 0.0)
        self._mark = clock()

    def _spent(self) -> float:
        now = self._clock()
        spent, self._mark = max(0.0, now - self._mark), now
        return spent

    def own(self, job_id: str) -> None:
        """Charge the time since the last charge to ``job_id``."""
        self.used[job_id] += self._spent()

    def shared(self, job_ids: list[str]) -> None:
        """Split the time since the last charge among ``job_ids`` by their weights."""
        spent = self._spent()
        total = sum(self.weights[j] for j in job_ids)
        for job_id in job_ids:
            self.used[job_id] += spent * self.weights[job_id] / total

    def seconds(self, job_id: str) -> float:
        """The CPU seconds charged to ``job_id`` so far (to 0.1 ms)."""
        return round(self.used[job_id], 4)


def warm_up(config: RegistryConfig) -> None:
    """At worker start: import the apps and read the manifests once, before any job."""
    _registry(config)


def _registry(config: RegistryConfig) -> Registry:
    if config not in _registries:
        _registries[config] = build_registry(config)
    return _registries[config]


def _where() -> dict[str, Any]:
    """Where this worker runs: host and pid, and the batch-system job when there is one (a
    Dask worker started by dask-jobqueue under Slurm, PBS or HTCondor)."""
    where: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    for key, variable in (
        ("slurm_job_id", "SLURM_JOB_ID"),
        ("pbs_job_id", "PBS_JOBID"),
        ("condor_job_id", "_CONDOR_JOB_AD"),
    ):
        if os.environ.get(variable):
            where[key] = os.environ[variable]
    return where


@dataclass
class _Job:
    """One job of a batch while it runs: its request, log and clock."""

    task: JobTask
    log: logging.Logger
    handler: logging.Handler
    started: float
    started_at: datetime
    request: AppRequest | None = None
    run_lock: int | None = None

    @property
    def job_dir(self) -> Path:
        return Path(self.task.job_dir)

    @property
    def staging(self) -> Path:
        """Where this run writes its results: ``staging/<run token>/`` (``staging/``
        without a token)."""
        base = self.job_dir / "staging"
        return base / self.task.run_token if self.task.run_token else base

    def close(self, outcome: TaskOutcome | None = None) -> None:
        """End the run. A run with a token keeps the results it succeeded with in its staging
        folder, for the service to move into place (or throw away)."""
        if outcome is None or not outcome.ok or self.task.run_token is None:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.task.run_token is not None:
            ended = "results staged" if outcome is not None and outcome.ok else "failed"
            self.log.info("run %s ended: %s", self.task.run_token, ended)
        if self.run_lock is not None:
            os.close(self.run_lock)  # frees the lock
            self.run_lock = None
        self.log.removeHandler(self.handler)
        self.handler.close()


def _lock_run(task: JobTask, logs: Path, log: logging.Logger) -> int | None:
    """Hold the job's run lock while the run lasts (a file descriptor; None where the file
    system has no flock). A second live run of the job waits for the first, at most
    RUN_LOCK_WAIT_S seconds, and says so in the log."""
    try:
        fd = os.open(logs / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    deadline = time.monotonic() + RUN_LOCK_WAIT_S
    warned = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not warned:
                log.warning(
                    "OVERLAP: another run of job %s still holds its run lock; waiting up to "
                    "%g s for it to stop",
                    task.job_id,
                    RUN_LOCK_WAIT_S,
                )
                warned = True
            if time.monotonic() >= deadline:
                log.warning("the other run is still going; this run goes on without the lock")
                os.close(fd)
                return None
            time.sleep(0.1)
            continue
        except OSError:  # no flock on this file system
            os.close(fd)
            return None
        if warned:
            log.info("the other run stopped; this run goes on")
        return fd


def _open(task: JobTask, batch: BatchTask) -> _Job:
    job_dir = Path(task.job_dir)
    logs = job_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"astro_otf.job.{task.job_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(logs / "job.log", encoding="utf-8")
    tag = f" [run {task.run_token}]" if task.run_token else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s{tag} %(message)s"))
    log.addHandler(handler)
    where = _where()
    log.info(
        "job %s: model %s on host %s, pid %d, batch %s of %d job(s)%s",
        task.job_id,
        task.model_id,
        where["host"],
        where["pid"],
        batch.batch_id,
        len(batch.tasks),
        f", run {task.run_token}" if task.run_token else "",
    )
    job = _Job(task, log, handler, time.monotonic(), datetime.now(UTC))
    if task.run_token is not None:
        job.run_lock = _lock_run(task, logs, log)
    shutil.rmtree(job.staging, ignore_errors=True)
    job.staging.mkdir(parents=True)
    return job


def _request(app: App, job: _Job, sender: ProgressSender | None = None) -> AppRequest:
    task = job.task
    files = ["image"] if task.image_path else []
    checked = validate(
        task.parameters,
        files,
        app.parameters,
        precisions=app.precisions,
        model_id=app.model_id,
        image_required=app.needs_image,
    )
    return AppRequest(
        job_id=task.job_id,
        image_path=Path(task.image_path) if task.image_path else None,
        values=checked.values,
        roi=roi_from(checked.values),
        staging_dir=job.staging,
        log=job.log,
        owner=task.owner,
        on_progress=None if sender is None else functools.partial(sender, task.job_id),
    )


def _products(app: App, job: _Job, output: AppOutput, batch: BatchTask) -> list[ResultFile]:
    """Every result file of the job: the formats written from its catalogue, then the app's
    own files."""
    if output.catalogue is None:
        return list(output.results)
    assert job.request is not None
    job.request.progress("writing")
    where = _where()
    context = JobContext(
        job_id=job.task.job_id,
        owner=job.task.owner,
        model_id=app.model_id,
        model_version=app.version,
        batch_id=batch.batch_id,
        batch_jobs=len(batch.tasks),
        host=where["host"],
        pid=where["pid"],
        batch_system={k: str(v) for k, v in where.items() if k.endswith("_job_id")},
        started=job.started_at,
        parameters=job.request.values,
        image_path=job.request.image_path,
    )
    try:
        written = write_products(output.catalogue, output.image, job.staging, context)
    except Exception as exc:
        job.log.error("writing the results failed:\n%s", "".join(traceback.format_exception(exc)))
        raise JobFailure(
            f"{len(output.catalogue.table)} source(s) were found but the result files could "
            f"not be written ({type(exc).__name__}: {exc}). Please report job "
            f"{job.task.job_id} to the service operators."
        ) from None
    return [ResultFile(p.result_id, p.filename, p.mime_type) for p in written] + output.results


def _success(app: App, job: _Job, output: AppOutput, batch: BatchTask) -> TaskOutcome:
    """The job's outcome with its result files. With a run token they stay in the run's
    staging folder (the service moves them); without, they are moved into results/ here."""
    staging, final = job.staging, job.job_dir / "results"
    produced = _products(app, job, output, batch)
    for r in produced:
        if not (staging / r.filename).is_file():
            raise RuntimeError(f"app {app.model_id} listed {r.filename} but did not write it")
    results = []
    for r in produced:
        path = staging / r.filename
        if job.task.run_token is None:
            final.mkdir(exist_ok=True)
            os.replace(path, final / r.filename)
            path = final / r.filename
        results.append(ProducedResult(r.result_id, r.filename, r.mime_type, path.stat().st_size))
    elapsed = time.monotonic() - job.started
    job.log.info("job %s: done in %.3f s with %d result(s)", job.task.job_id, elapsed, len(results))
    info = {
        **output.info,
        "worker": _where(),
        "run_seconds": round(elapsed, 4),
        "model_version": app.version,
        "batch_id": batch.batch_id,
        "batch_jobs": len(batch.tasks),
    }
    return TaskOutcome(job.task.job_id, True, results, info)


def _failure(job: _Job, exc: BaseException, batch: BatchTask) -> TaskOutcome:
    info = {"worker": _where(), "batch_id": batch.batch_id, "batch_jobs": len(batch.tasks)}
    if isinstance(exc, JobFailure | OTFError):
        job.log.error("job %s failed: %s", job.task.job_id, exc.message)
        kind = exc.error_type if isinstance(exc, JobFailure) else ErrorType.FATAL
        return TaskOutcome(
            job.task.job_id, False, info=info, error_message=exc.message, error_type=kind
        )
    job.log.error("job %s crashed:\n%s", job.task.job_id, "".join(traceback.format_exception(exc)))
    return TaskOutcome(
        job.task.job_id,
        False,
        info=info,
        error_message=(
            f"internal error in model {job.task.model_id}: {type(exc).__name__}: {exc}. "
            "The job log has the details; please report it to the service operators."
        ),
    )


def run_batch(
    batch: BatchTask,
    report: Callable[[TaskOutcome], None] | None = None,
    progress: Callable[[JobProgress], None] | None = None,
    cpu_clock: Callable[[], float] = process_cpu,
) -> list[TaskOutcome]:
    """Run every job of ``batch``; apps that can share forward passes get them together.

    Each job's run is closed (its log and run lock released, its results staged) as soon as
    its outcome is known, and ``report`` (when given) is called with that outcome at once,
    before the batch's later jobs are done: the service records each job when its own work
    ends, not when the whole batch does. ``progress`` (when given) gets each job's progress
    as it goes, throttled by :class:`ProgressSender`. Each outcome's ``cpu_seconds`` is the
    job's share of the CPU time ``cpu_clock`` measured (see :class:`CpuMeter`)."""
    meter = CpuMeter(cpu_clock, {t.job_id: t.tiles for t in batch.tasks})
    sender = None if progress is None else ProgressSender(progress, len(batch.tasks))
    jobs = [_open(task, batch) for task in batch.tasks]
    outcomes: dict[str, TaskOutcome] = {}
    closed: set[str] = set()

    def settle(job: _Job, outcome: TaskOutcome) -> None:
        outcome.info["cpu_seconds"] = meter.seconds(job.task.job_id)
        outcomes[job.task.job_id] = outcome
        closed.add(job.task.job_id)
        job.close(outcome)
        if report is not None:
            report(outcome)

    try:
        if sender is not None:
            for job in jobs:
                sender(job.task.job_id, "loading")
        app = _registry(batch.registry).get(batch.model_id, batch.model_version)
        ready: list[_Job] = []
        refused: list[tuple[_Job, Exception]] = []
        for job in jobs:
            try:
                job.request = _request(app, job, sender)
                ready.append(job)
            except Exception as exc:
                refused.append((job, exc))
        meter.shared([j.task.job_id for j in jobs])  # opening, loading the model
        for job, problem in refused:
            settle(job, _failure(job, problem, batch))
        if isinstance(app, BatchableApp) and ready:  # shared forward passes
            results = app.run_batch([j.request for j in ready])  # type: ignore[misc]
            meter.shared([j.task.job_id for j in ready])
            for job, result in zip(ready, results, strict=True):
                outcome = _outcome(app, job, result, batch)
                meter.own(job.task.job_id)  # its result files
                settle(job, outcome)
        else:
            for job in ready:
                one: AppOutput | BaseException
                request = job.request
                assert request is not None
                # the app's own reports (if any) refine this first stage
                request.progress("reading" if app.needs_image else "inference")
                try:
                    one = app.run(request)
                except Exception as exc:
                    one = exc
                outcome = _outcome(app, job, one, batch)
                meter.own(job.task.job_id)
                settle(job, outcome)
    except Exception as exc:  # the model itself could not run: every job left fails
        left = [job for job in jobs if job.task.job_id not in closed]
        if left:
            meter.shared([job.task.job_id for job in left])
        for job in left:
            settle(job, _failure(job, exc, batch))
    finally:
        for job in jobs:  # only when something above raised past every job (a bug)
            if job.task.job_id not in closed:
                job.close(outcomes.get(job.task.job_id))
    return [outcomes[t.job_id] for t in batch.tasks]


def _outcome(
    app: App, job: _Job, result: AppOutput | BaseException, batch: BatchTask
) -> TaskOutcome:
    try:
        if isinstance(result, BaseException):
            raise result
        return _success(app, job, result, batch)
    except Exception as exc:
        return _failure(job, exc, batch)
