"""Follow jobs until they end, with a progress bar per job, for ``otf submit/wait/rerun``.

This module exists so that every command that waits shows the same live display (stage,
percentage, ETA of each job and how many have ended) and follows the jobs the same way: by
the service's event stream (``GET /jobs/events``), which costs no requests while jobs run,
or, from a service without one (404), by polling each active job. Events are read in a
thread and handed over through a queue, so that a ``--timeout`` or Ctrl-C stops the wait at
once. A slow re-read of the active jobs every few seconds guards against an event missed
between the first read and the stream's start.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from astro_otf.cli.common import progress_fraction, progress_text
from astro_otf.client import (
    FINAL_PHASES,
    Event,
    EventStream,
    Job,
    OTFClient,
    OTFClientError,
    OTFError,
)
from astro_otf.client import Progress as JobProgress

#: At most this many jobs get a bar of their own (the others show in the overall count).
MAX_BARS = 20
#: Ask the event stream for these jobs only when there are not more of them (URL length).
MAX_FILTERED = 50


@dataclass(slots=True)
class _State:
    phase: str
    progress: JobProgress | None = None
    job: Job | None = None


class JobFollower:
    """Follows ``job_ids`` (shown by ``labels``, default the ids) until they end.

    ``events`` False skips the event stream (polling only). ``poll_interval`` is the
    polling period, ``resync`` the period of the safety re-read while events flow.
    After :meth:`run`, ``used_events`` says whether the event stream carried the wait.
    """

    def __init__(
        self,
        client: OTFClient,
        job_ids: Iterable[str],
        labels: Mapping[str, str] | None = None,
        *,
        console: Console | None = None,
        show: bool = True,
        title: str = "jobs ending",
        events: bool = True,
        poll_interval: float = 1.0,
        resync: float = 5.0,
    ) -> None:
        self.client = client
        self.job_ids = list(dict.fromkeys(job_ids))
        self.labels = dict(labels or {})
        self.console = console or Console(stderr=True, highlight=False)
        self.show = show
        self.title = title
        self.use_events = events
        self.poll_interval = poll_interval
        self.resync = resync
        self.used_events = False
        self._states: dict[str, _State] = {}
        self._bars: dict[str, TaskID] = {}
        self._display: Progress | None = None
        self._overall: TaskID | None = None

    # ----------------------------------------------------------------- state

    def _active(self) -> list[str]:
        return [j for j, s in self._states.items() if s.phase not in FINAL_PHASES]

    def _set(self, job_id: str, phase: str, progress: JobProgress | None, job: Job | None) -> None:
        state = self._states.setdefault(job_id, _State(phase))
        state.phase = phase
        state.progress = progress if phase in ("QUEUED", "EXECUTING") else None
        if job is not None:
            state.job = job
        elif phase in FINAL_PHASES or (state.job is not None and state.job.phase != phase):
            state.job = None
        self._draw(job_id)

    def _read(self, job_id: str) -> None:
        """Read one job's document (its phase, progress and, once it has ended, results)."""
        try:
            job = self.client.job(job_id)
        except OTFClientError as exc:
            if exc.status_code not in (404, 410):
                raise
            self._set(job_id, "ARCHIVED", None, None)  # destroyed meanwhile
            return
        self._set(job_id, job.phase, job.progress, job)

    def _on_event(self, event: Event) -> None:
        if event.event == "reset":
            for active in self._active():
                self._read(active)
            return
        job_id = event.job_id or ""
        if job_id not in self._states:
            return
        if event.event == "deleted":
            self._set(job_id, "ARCHIVED", None, None)
            return
        phase: str = event.phase or self._states[job_id].phase
        if phase in FINAL_PHASES:
            self._read(job_id)  # the final document: results, error summary
        else:
            self._set(job_id, phase, event.progress, None)

    # ----------------------------------------------------------------- display

    def _draw(self, job_id: str | None = None) -> None:
        display = self._display
        if display is None:
            return
        now = datetime.now(UTC)
        if job_id is not None and job_id in self._bars:
            state = self._states[job_id]
            display.update(
                self._bars[job_id],
                completed=progress_fraction(state.phase, state.progress),
                status=f"{state.phase:<9} {progress_text(state.phase, state.progress, now)}",
            )
        if self._overall is not None:
            ended = len(self._states) - len(self._active())
            display.update(
                self._overall, completed=ended, status=f"{ended}/{len(self._states)} ended"
            )

    # ----------------------------------------------------------------- following

    def run(self, timeout: float | None = None) -> dict[str, Job]:
        """Follow the jobs until all have ended or ``timeout`` seconds have passed; return
        each job's latest document (check :attr:`Job.is_active` for a timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            disable=not self.show,
        ) as display:
            self._display = display
            if len(self.job_ids) == 1:
                job_id = self.job_ids[0]
                label = self.labels.get(job_id, job_id)
                self._bars[job_id] = display.add_task(f"job {label}", total=1.0, status="")
            else:
                self._overall = display.add_task(
                    self.title, total=max(1, len(self.job_ids)), status=""
                )
                for job_id in self.job_ids[:MAX_BARS]:
                    label = self.labels.get(job_id, job_id)
                    self._bars[job_id] = display.add_task(f"  {label}", total=1.0, status="")
            try:
                self._follow(deadline)
            finally:
                self._display = None
        out: dict[str, Job] = {}
        for job_id in self.job_ids:
            state = self._states[job_id]
            out[job_id] = state.job if state.job is not None else self.client.job(job_id)
        return out

    def _follow(self, deadline: float | None) -> None:
        inbox: queue.Queue[Event | BaseException | None] = queue.Queue()
        stream: EventStream | None = None
        if self.use_events:
            watched = self.job_ids if len(self.job_ids) <= MAX_FILTERED else None
            opened = stream = self.client.events(jobs=watched)

            def pump() -> None:
                try:
                    for event in opened:
                        inbox.put(event)
                except BaseException as exc:  # handed to the main thread
                    inbox.put(exc)
                finally:
                    inbox.put(None)

            threading.Thread(target=pump, name="otf-events", daemon=True).start()
            # read the jobs once the stream is there: no change falls between the two
            opened.wait_receiving(2.0)
        try:
            for job_id in self.job_ids:
                self._read(job_id)
            self.used_events = stream is not None
            next_read = time.monotonic() + self.resync
            while self._active():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return
                if stream is None:
                    self._poll(deadline)
                    continue
                wake = next_read if deadline is None else min(next_read, deadline)
                try:
                    item = inbox.get(timeout=max(0.01, wake - now))
                except queue.Empty:
                    item = None
                else:
                    if item is None or isinstance(item, OTFError):
                        # no event stream here (404) or it broke off: poll instead
                        stream.close()
                        stream = None
                        self.used_events = False
                        continue
                    if isinstance(item, BaseException):
                        raise item
                    self._on_event(item)
                if time.monotonic() >= next_read:
                    for job_id in self._active():
                        self._read(job_id)
                    next_read = time.monotonic() + self.resync * max(1, len(self._active()) // 20)
        finally:
            if stream is not None:
                stream.close()

    def _poll(self, deadline: float | None) -> None:
        """One round of polling: a short UWS WAIT on the first active job (it answers at
        once when that job's phase changes) and a plain read of the others."""
        started = time.monotonic()
        active = self._active()
        span = self.poll_interval
        if deadline is not None:
            span = min(span, max(0.0, deadline - started))
        first = active[0]
        before = self._states[first].phase
        try:
            job = self.client.job(first, wait=max(1, math.ceil(span)))
        except OTFClientError as exc:
            if exc.status_code not in (404, 410):
                raise
            self._set(first, "ARCHIVED", None, None)
        else:
            self._set(first, job.phase, job.progress, job)
        for job_id in active[1:]:
            self._read(job_id)
        left = span - (time.monotonic() - started)
        if left > 0 and self._states[first].phase == before:
            time.sleep(left)  # a service that does not block on WAIT: no busy loop


def follow(
    client: OTFClient,
    job_ids: Iterable[str],
    labels: Mapping[str, str] | None = None,
    *,
    timeout: float | None = None,
    show: bool = True,
    title: str = "jobs ending",
    console: Console | None = None,
) -> dict[str, Job]:
    """Follow jobs until they end (see :class:`JobFollower`); their latest documents."""
    return JobFollower(client, job_ids, labels, show=show, title=title, console=console).run(
        timeout
    )
