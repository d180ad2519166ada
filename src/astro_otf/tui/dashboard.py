"""``otf dashboard``: a live terminal view of an astro-otf service.

This module exists so that an operator (or a user with a pile of jobs) can watch a running
service without a web browser or a pile of ``otf list`` / ``curl /metrics`` calls: one
screen shows the jobs and their phases, the batches the scheduler forms (read from the
Prometheus metrics), the detail of the selected job, and lets one abort, delete or fetch
the results of a job with a key press.

It talks to the service only through :mod:`astro_otf.client`, never through server code, so
it works against any reachable service. Every call to the service is awaited on Textual's
event loop through :class:`~astro_otf.client.AsyncOTFClient` (refreshes, actions and the
event stream run as Textual workers), so a slow or vanished server never freezes the
screen, and every client error ends up as a message in the status line, never as a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Concatenate, ParamSpec, TypeVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.coordinate import Coordinate
from textual.css.query import NoMatches
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import Worker

from astro_otf.cli.common import PHASE_STYLES, format_duration, result_filename, safe_name
from astro_otf.client import (
    AsyncOTFClient,
    Event,
    Job,
    JobSummary,
    OTFClient,
    OTFClientError,
    OTFError,
    Progress,
    ServerUnreachable,
)
from astro_otf.tui.batches import BatchStats, RecentBatches, parse_batch_metrics, recent_batches
from astro_otf.tui.cells import format_size, format_time, phase_text, progress_cell, run_seconds
from astro_otf.tui.confirm import ConfirmAbort, ConfirmDelete

#: The phase filter's steps, in the order ``f`` goes through them (None: all phases).
PHASE_FILTERS: tuple[str | None, ...] = (None, *PHASE_STYLES)
_JOB_COLUMNS = (
    ("job", "Job ID"),
    ("phase", "Phase"),
    ("image", "Image"),
    ("run", "Run ID"),
    ("model", "Model"),
    ("progress", "Progress"),
    ("created", "Created"),
    ("runtime", "Run time"),
)
_BATCH_COLUMNS = (
    ("model", "Model"),
    ("queued", "Queued"),
    ("batches", "Batches"),
    ("jobs", "Jobs/b"),
    ("tiles", "Tiles/b"),
    ("recent", "Recent j/t"),
)
#: Job documents one refresh reads at the same time (the rest of the client's calls, an
#: action's among them, must not wait behind a hundred of them).
_DETAIL_READS = 4


def _mean(value: float | None) -> str:
    """A mean for the batch table, to one decimal ("-" when there is none yet)."""
    return "-" if value is None else f"{value:.1f}"


def _message(exc: BaseException) -> str:
    """What an error says, for the status line (its type when it says nothing)."""
    text = str(exc).strip()
    return text or type(exc).__name__


# --------------------------------------------------------------------------- refresh data


@dataclass(frozen=True, slots=True)
class _Live:
    """A job's phase and progress as an event reported them, and when it arrived."""

    phase: str
    progress: Progress | None
    received: float


@dataclass(slots=True)
class _Snapshot:
    """What one refresh read from the service."""

    summaries: list[JobSummary]
    details: dict[str, Job]
    gone: set[str]
    metrics: BatchStats | None
    metrics_error: str | None
    models: list[str] | None


# --------------------------------------------------------------------------- guards

_P = ParamSpec("_P")
_R = TypeVar("_R")
_AppT = TypeVar("_AppT", bound=App[Any])


def _while_running(
    method: Callable[Concatenate[_AppT, _P], _R],
) -> Callable[Concatenate[_AppT, _P], _R | None]:
    """Skip a screen update once the app is closing: a refresh or a message queued
    before the user quit may arrive after the widgets are gone."""

    @functools.wraps(method)
    def guarded(self: _AppT, /, *args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        if not self.is_running:
            return None
        try:
            return method(self, *args, **kwargs)
        except NoMatches:
            if self.is_running:
                raise
            return None

    return guarded


# --------------------------------------------------------------------------- the app


class Dashboard(App[None]):
    """Live jobs, batches and job detail of one astro-otf service."""

    TITLE = "otf dashboard"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("r", "refresh_now", "Refresh"),
        Binding("x", "abort", "Abort"),
        Binding("d", "delete", "Delete"),
        Binding("s", "save_results", "Save results"),
        Binding("f", "cycle_phase", "Phase filter"),
        Binding("a", "all_phases", "All phases"),
        Binding("slash", "focus_filter", "Text filter", key_display="/"),
        Binding("escape", "focus_jobs", "Jobs", show=False),
    ]
    DEFAULT_CSS = """
    #main { height: 1fr; }
    #left { width: 1fr; }
    #right { width: 1fr; }
    #text-filter { margin: 0 0; }
    #jobs { height: 1fr; border: round $primary; }
    #batches { height: auto; max-height: 12; border: round $secondary; }
    #phases { height: auto; padding: 0 1; color: $text-muted; }
    #detail-box { height: 1fr; border: round $secondary; padding: 0 1; }
    #statusbar { height: 1; background: $panel; }
    #status { width: 1fr; padding: 0 1; }
    #sync { width: auto; padding: 0 1; color: $text-muted; }
    #status.error, #sync.error { color: $error; text-style: bold; }
    """

    def __init__(
        self,
        client: AsyncOTFClient,
        refresh: float = 2.0,
        download_dir: Path = Path("."),
        *,
        limit: int = 100,
        events: bool = True,
    ) -> None:
        if not refresh > 0:
            raise ValueError(f"refresh must be a positive number of seconds, got {refresh}")
        super().__init__()
        self.client = client
        self.refresh_interval = float(refresh)
        self.download_dir = Path(download_dir)
        self.limit = limit
        #: Phase the table is restricted to (None: all).
        self.phase_filter: str | None = None
        #: Case-insensitive text the job id, model, image or run id must contain.
        self.text_filter = ""
        #: The outcome of the latest action (left of the status line), as plain text.
        self.status_message = ""
        #: Whether that was a failure.
        self.status_error = False
        #: How the latest refresh went (right of the status line), as plain text.
        self.sync_message = ""
        #: Whether the latest refresh failed.
        self.sync_error = False
        #: The batch view as last read from the metrics.
        self.batch_stats: BatchStats | None = None
        #: Per model, the batches formed between the latest two scrapes that saw new ones.
        self.recent: dict[str, RecentBatches] = {}
        #: Completed refreshes (successful or not), for whoever waits for one.
        self.refreshes = 0
        self._summaries: list[JobSummary] = []
        self._details: dict[str, Job] = {}
        self._models: list[str] | None = None
        self._refreshing = False
        self._refresh_again = False
        self._generation = 0
        self._unreachable = False
        self._refresh_started = 0.0
        #: Phase and progress of jobs as the event stream last told (newer than the list).
        self._live: dict[str, _Live] = {}
        #: How the jobs are followed: "events" (the stream), "polling" (no stream) or "".
        self.follow_mode = ""
        #: Events received from the stream.
        self.events_seen = 0
        #: The worker that follows the event stream (None: not following it).
        self._events_worker: Worker[None] | None = None
        self._use_events = events

    # ----------------------------------------------------------------- layout

    def compose(self) -> ComposeResult:
        """Jobs (with the text filter) on the left; batches, jobs per phase and the
        selected job's detail on the right; the status line above the key bar."""
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Input(
                    placeholder="/ filter on job id, model, image or run id", id="text-filter"
                )
                jobs: DataTable[Any] = DataTable(id="jobs", cursor_type="row", zebra_stripes=True)
                yield jobs
            with Vertical(id="right"):
                batches: DataTable[Any] = DataTable(id="batches", show_cursor=False)
                batches.can_focus = False
                yield batches
                yield Static(id="phases")
                with VerticalScroll(id="detail-box"):
                    yield Static(Text("no job selected", style="dim"), id="detail")
        with Horizontal(id="statusbar"):
            yield Static(id="status")
            yield Static(id="sync")
        yield Footer()

    def on_mount(self) -> None:
        """Set the tables up, then start the refresh timer, a first refresh and the event
        stream (or polling alone when events are off)."""
        self.sub_title = self.client.url
        jobs = self.jobs_table
        for key, label in _JOB_COLUMNS:
            jobs.add_column(label, key=key)
        batches = self.batch_table
        for key, label in _BATCH_COLUMNS:
            batches.add_column(label, key=key)
        batches.border_title = "Batches"
        self.query_one("#detail-box").border_title = "Job detail"
        self._update_jobs_title()
        self._set_sync("connecting to " + self.client.url)
        jobs.focus()
        self.set_interval(self.refresh_interval, self._timer_refresh)
        self._request_refresh()
        if self._use_events:
            self._start_events()
        else:
            self.follow_mode = "polling"

    def on_unmount(self) -> None:
        """Stop following the event stream (which closes it) as the app goes."""
        if self._events_worker is not None:
            self._events_worker.cancel()

    # ----------------------------------------------------------------- events

    def _start_events(self) -> None:
        """Follow the event stream in a worker on the app's loop (the client reads the
        stream in a thread of its own). Without a stream (404) the dashboard polls."""
        self.follow_mode = "events"
        self._events_worker = self.run_worker(
            self._follow_events(), name="events", group="events", exit_on_error=False
        )

    async def _follow_events(self) -> None:
        """Hand each event to :meth:`_on_event` until the app goes (the worker is
        cancelled, which closes the stream) or the stream fails, which leaves the timer
        refresh to do the work."""
        try:
            async with contextlib.aclosing(self.client.events()) as events:
                async for event in events:
                    self._on_event(event)
        except OTFClientError as exc:
            if exc.status_code in (404, 405, 406, 501):
                self._events_unavailable("no event stream; polling")
            else:
                self._events_unavailable(f"events: {_message(exc)}")
        except Exception as exc:  # unreachable, broke off: the timer refresh goes on
            self._events_unavailable(f"events: {_message(exc)}")

    @_while_running
    def _events_unavailable(self, message: str) -> None:
        self.follow_mode = "polling"
        self._events_worker = None
        self._set_sync(message)

    @_while_running
    def _on_event(self, event: Event) -> None:
        self.events_seen += 1
        if event.event == "reset":
            self._request_refresh()
            return
        job_id = event.job_id
        if not job_id:
            return
        if event.event == "deleted":
            self._summaries = [s for s in self._summaries if s.job_id != job_id]
            self._details.pop(job_id, None)
            self._live.pop(job_id, None)
            self._render_jobs()
            self._render_detail()
            return
        known = any(s.job_id == job_id for s in self._summaries)
        phase = event.phase
        if phase is None:
            previous = self._live.get(job_id)
            phase = previous.phase if previous is not None else self._phase_of(job_id)
        self._live[job_id] = _Live(phase, event.progress, time.monotonic())
        if not known or event.event == "phase":
            self._request_refresh()  # a new job, or a new phase: read its document
        if known:
            self._render_jobs()
            if job_id == self.selected_job_id:
                self._render_detail()

    @property
    def jobs_table(self) -> DataTable[Any]:
        """The job table (one row per job, keyed by job id)."""
        return self.query_one("#jobs", DataTable)

    @property
    def batch_table(self) -> DataTable[Any]:
        """The batch table (one row per model, keyed by model id)."""
        return self.query_one("#batches", DataTable)

    @property
    def selected_job_id(self) -> str | None:
        """The job under the table cursor."""
        table = self.jobs_table
        if table.row_count == 0:
            return None
        row = min(max(table.cursor_row, 0), table.row_count - 1)
        key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
        return key

    def visible_job_ids(self) -> list[str]:
        """The job ids in the table, top to bottom."""
        return [str(row.key.value) for row in self.jobs_table.ordered_rows]

    def select_job(self, job_id: str) -> None:
        """Move the cursor to ``job_id`` (KeyError when it is not shown)."""
        table = self.jobs_table
        table.move_cursor(row=table.get_row_index(job_id))

    # ----------------------------------------------------------------- status

    @_while_running
    def _set_status(self, message: str, *, error: bool = False) -> None:
        self.status_message = message
        self.status_error = error
        status = self.query_one("#status", Static)
        status.update(Text(message))
        status.set_class(error, "error")

    @_while_running
    def _set_sync(self, message: str, *, error: bool = False) -> None:
        self.sync_message = message
        self.sync_error = error
        sync = self.query_one("#sync", Static)
        sync.update(Text(message))
        sync.set_class(error, "error")

    @_while_running
    def _failed(self, what: str, exc: BaseException) -> None:
        message = f"{what}: {_message(exc)}"
        self._set_status(message, error=True)
        self.notify(message, title="otf", severity="error", markup=False)

    # ----------------------------------------------------------------- refresh

    def _timer_refresh(self) -> None:
        if not self._refreshing:
            self._request_refresh()

    def _request_refresh(self) -> None:
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        self.run_worker(self._refresh_loop(), group="refresh", exit_on_error=False)

    async def _refresh_loop(self) -> None:
        try:
            while True:
                self._refresh_again = False
                generation = self._generation
                self._refresh_started = time.monotonic()
                settled = {k: j.phase for k, j in self._details.items() if not j.is_active}
                try:
                    snapshot = await self._collect(settled, self._models)
                except Exception as exc:  # OTFError; a bug here must not take the dashboard down
                    self._refresh_failed(exc)
                else:
                    if generation == self._generation:
                        self._apply(snapshot)
                    else:  # an action changed jobs meanwhile: this snapshot may be stale
                        self._refresh_again = True
                self.refreshes += 1
                if not self._refresh_again:
                    return
        finally:
            self._refreshing = False

    async def _collect(self, settled: Mapping[str, str], models: list[str] | None) -> _Snapshot:
        """Read jobs, the documents of those not ``settled`` (ended in the phase the list
        still gives), the model registry (until read once) and the metrics."""
        summaries = await self.client.jobs(last=self.limit)
        wanted = [s.job_id for s in summaries if settled.get(s.job_id) != s.phase]
        reads = asyncio.Semaphore(_DETAIL_READS)

        async def read(job_id: str) -> Job | None:
            async with reads:
                try:
                    return await self.client.job(job_id)
                except OTFClientError as exc:
                    if exc.status_code not in (404, 410):
                        raise
                    return None  # destroyed since the list was read

        documents = await asyncio.gather(*(read(job_id) for job_id in wanted))
        details = {j: job for j, job in zip(wanted, documents, strict=True) if job is not None}
        gone = {j for j, job in zip(wanted, documents, strict=True) if job is None}
        if models is None:
            try:
                registry = (await self.client.models()).get("models") or []
                models = [str(m["id"]) for m in registry if isinstance(m, Mapping) and "id" in m]
            except OTFClientError:
                models = None
        metrics: BatchStats | None = None
        metrics_error: str | None = None
        try:
            metrics = parse_batch_metrics(await self.client.metrics(), models or ())
        except OTFClientError as exc:
            metrics_error = f"metrics unavailable: {_message(exc)}"
        except ValueError as exc:
            metrics_error = f"metrics unreadable: {_message(exc)}"
        return _Snapshot(
            summaries=[s for s in summaries if s.job_id not in gone],
            details=details,
            gone=gone,
            metrics=metrics,
            metrics_error=metrics_error,
            models=models,
        )

    @_while_running
    def _refresh_failed(self, exc: BaseException) -> None:
        if isinstance(exc, ServerUnreachable):
            message = f"server unreachable ({_message(exc)}); retrying every "
            message += f"{self.refresh_interval:g} s"
            self._set_sync(message, error=True)
            if not self._unreachable:
                self.notify(message, title="otf", severity="error", markup=False)
            self._unreachable = True
        else:
            self._set_sync(f"refresh failed: {_message(exc)}", error=True)

    @_while_running
    def _apply(self, snapshot: _Snapshot) -> None:
        self._unreachable = False
        if snapshot.models is not None:
            self._models = snapshot.models
        self._summaries = sorted(
            snapshot.summaries,
            key=lambda s: (s.creation_time or datetime.min.replace(tzinfo=UTC), s.job_id),
            reverse=True,
        )
        self._details.update(snapshot.details)
        listed = {s.job_id for s in self._summaries}
        for job_id in list(self._details):
            if job_id not in listed:
                del self._details[job_id]
        # what the list says is newer than events received before it was read
        self._live = {
            k: v
            for k, v in self._live.items()
            if k in listed and v.received > self._refresh_started
        }
        self._render_jobs()
        self._render_detail()
        if snapshot.metrics is not None:
            self._render_batches(snapshot.metrics)
        else:
            self.batch_table.border_subtitle = snapshot.metrics_error or ""
        shown = self.jobs_table.row_count
        stamp = datetime.now().strftime("%H:%M:%S")
        message = f"updated {stamp}: {len(self._summaries)} jobs, {shown} shown"
        if self.follow_mode:
            message += f" ({self.follow_mode})"
        if snapshot.metrics_error:
            message += f"; {snapshot.metrics_error}"
        self._set_sync(message)

    # ----------------------------------------------------------------- rendering

    def _matches(self, summary: JobSummary) -> bool:
        if self.phase_filter is not None and summary.phase != self.phase_filter:
            return False
        if not self.text_filter:
            return True
        needle = self.text_filter.casefold()
        fields = (
            summary.job_id,
            self._model_of(summary.job_id) or "",
            summary.image or "",
            summary.run_id or "",
        )
        return any(needle in f.casefold() for f in fields)

    def _model_of(self, job_id: str) -> str | None:
        job = self._details.get(job_id)
        if job is not None:
            model = job.parameters.get("model") or job.parameters.get("MODEL")
            if model:
                return model
        summary = next((s for s in self._summaries if s.job_id == job_id), None)
        return summary.model_id if summary is not None else None

    def _phase_of(self, job_id: str) -> str:
        job = self._details.get(job_id)
        if job is not None:
            return job.phase
        summary = next((s for s in self._summaries if s.job_id == job_id), None)
        return summary.phase if summary is not None else "QUEUED"

    def live_state(self, summary: JobSummary) -> tuple[str, Progress | None]:
        """The newest phase and progress known of a job: from the event stream, else from
        its document (newer than the list after an action), else from the list."""
        live = self._live.get(summary.job_id)
        if live is not None:
            return live.phase, live.progress
        job = self._details.get(summary.job_id)
        if job is not None and job.phase != summary.phase:
            return job.phase, job.progress
        return summary.phase, summary.progress

    def _cells(self, summary: JobSummary, now: datetime) -> tuple[Any, ...]:
        job = self._details.get(summary.job_id)
        phase, progress = self.live_state(summary)
        image = summary.image or (job.image if job is not None else None)
        return (
            summary.job_id,
            phase_text(phase),
            image or "-",
            summary.run_id or "",
            self._model_of(summary.job_id) or "…",
            progress_cell(phase, progress, now),
            format_time(summary.creation_time),
            format_duration(run_seconds(job, now)),
        )

    @_while_running
    def _render_jobs(self) -> None:
        table = self.jobs_table
        visible = [s for s in self._summaries if self._matches(s)]
        keys = [s.job_id for s in visible]
        now = datetime.now(UTC)
        if keys == self.visible_job_ids():
            for summary in visible:
                for (column, _), value in zip(_JOB_COLUMNS, self._cells(summary, now), strict=True):
                    table.update_cell(summary.job_id, column, value, update_width=True)
        else:
            selected = self.selected_job_id
            table.clear()
            for summary in visible:
                table.add_row(*self._cells(summary, now), key=summary.job_id)
            if selected in keys:
                table.move_cursor(row=keys.index(selected), animate=False)
        self._update_jobs_title()

    @_while_running
    def _update_jobs_title(self) -> None:
        table = self.jobs_table
        title = f"Jobs · phase {self.phase_filter or 'ALL'}"
        if self.text_filter:
            title += f" · matching {self.text_filter!r}"
        table.border_title = title
        table.border_subtitle = f"{table.row_count} of {len(self._summaries)}"

    @_while_running
    def _render_batches(self, stats: BatchStats) -> None:
        previous = self.batch_stats
        for name, now in stats.models.items():
            before = previous.models.get(name) if previous is not None else None
            recent = recent_batches(before, now, self.recent.get(name))
            if recent is not None:
                self.recent[name] = recent
        self.batch_stats = stats
        table = self.batch_table
        table.clear()
        for name, m in stats.models.items():
            recent = self.recent.get(name)
            table.add_row(
                name,
                Text(str(m.queued), style="cyan" if m.queued else ""),
                str(m.batches),
                _mean(m.mean_jobs),
                _mean(m.mean_tiles),
                "-" if recent is None else f"{recent.mean_jobs:.1f}/{recent.mean_tiles:.1f}",
                key=name,
            )
        table.border_subtitle = ""
        line = Text("jobs in the store:")
        counted = [(phase, n) for phase, n in stats.phases.items() if n]
        for phase, count in counted:
            line.append(f" {phase}", style=PHASE_STYLES.get(phase, ""))
            line.append(f" {count}")
        if not counted:
            line.append(" none", style="dim")
        self.query_one("#phases", Static).update(line)

    def detail_text(self) -> Text:
        """The detail panel's content for the selected job."""
        job_id = self.selected_job_id
        if job_id is None:
            return Text("no job selected", style="dim")
        job = self._details.get(job_id)
        if job is None:
            return Text(f"{job_id}\n(loading…)", style="dim")
        text = Text()
        text.append(job.job_id, style="bold")
        text.append("  ")
        text.append_text(phase_text(job.phase))
        text.append("\n")
        summary = next((s for s in self._summaries if s.job_id == job_id), None)
        phase, progress = self.live_state(summary) if summary is not None else (job.phase, None)
        if phase in ("QUEUED", "EXECUTING"):
            text.append("progress: ")
            text.append_text(progress_cell(phase, progress))
            text.append("\n")
        if job.quote_time is not None and job.is_active:
            text.append(f"quote: {format_time(job.quote_time)}\n")
        if job.image:
            text.append(f"image: {job.image}\n")
        if job.cached_from:
            text.append(f"cached from: {job.cached_from}\n")
        if job.run_id:
            text.append(f"run id: {job.run_id}\n")
        if job.owner_id:
            text.append(f"owner: {job.owner_id}\n")
        text.append(f"created: {format_time(job.creation_time)}\n")
        text.append(f"started: {format_time(job.start_time)}\n")
        text.append(f"ended:   {format_time(job.end_time)}\n")
        text.append(f"run time: {format_duration(run_seconds(job))}\n")
        text.append("\nParameters\n", style="bold underline")
        if not job.parameters:
            text.append("  (none)\n", style="dim")
        for name, value in sorted(job.parameters.items()):
            text.append(f"  {name}", style="bold")
            text.append(f" = {value}\n")
        if job.error_summary is not None:
            text.append("\nError\n", style="bold underline red")
            text.append(f"  type: {job.error_summary.type}\n", style="red")
            text.append(f"  {job.error_summary.message}\n", style="red")
        text.append("\nResults\n", style="bold underline")
        if not job.results:
            text.append("  (none)\n", style="dim")
        for result in job.results:
            text.append(f"  {result.id:<11}", style="bold")
            text.append(f" {result.mime_type or '?':<28} {format_size(result.size):>9}\n")
        if job.job_info:
            text.append("\nJob info\n", style="bold underline")
            for name, value in sorted(job.job_info.items()):
                text.append(f"  {name} = {value}\n", style="dim")
        return text

    @_while_running
    def _render_detail(self) -> None:
        self.query_one("#detail", Static).update(self.detail_text())

    @on(DataTable.RowHighlighted, "#jobs")
    @_while_running
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._render_detail()

    # ----------------------------------------------------------------- filters

    def action_cycle_phase(self) -> None:
        """``f``: show only the next phase (ALL, PENDING, QUEUED ... ABORTED, ALL)."""
        index = PHASE_FILTERS.index(self.phase_filter)
        self.phase_filter = PHASE_FILTERS[(index + 1) % len(PHASE_FILTERS)]
        self._render_jobs()
        self._render_detail()

    def action_all_phases(self) -> None:
        """``a``: drop the phase filter."""
        self.phase_filter = None
        self._render_jobs()
        self._render_detail()

    def action_focus_filter(self) -> None:
        """``/``: type in the text filter."""
        self.query_one("#text-filter", Input).focus()

    def action_focus_jobs(self) -> None:
        """Esc: back from the text filter to the job table."""
        self.jobs_table.focus()

    @on(Input.Changed, "#text-filter")
    @_while_running
    def _text_filter_changed(self, event: Input.Changed) -> None:
        self.text_filter = event.value.strip()
        self._render_jobs()
        self._render_detail()

    @on(Input.Submitted, "#text-filter")
    def _text_filter_submitted(self, event: Input.Submitted) -> None:
        self.jobs_table.focus()

    # ----------------------------------------------------------------- actions

    def action_refresh_now(self) -> None:
        """``r``: read the service now rather than at the next tick."""
        self._set_sync("refreshing…")
        self._request_refresh()

    def _target(self, verb: str) -> str | None:
        job_id = self.selected_job_id
        if job_id is None:
            self._set_status(f"no job selected to {verb}", error=True)
        return job_id

    def _run_action(
        self, name: str, work: Callable[[], Awaitable[_R]], done: Callable[[_R], None]
    ) -> None:
        """Await ``work()`` in a worker; ``done`` gets its result, an error goes to the
        status line."""

        async def act() -> None:
            try:
                result = await work()
            except (OTFError, OSError) as exc:
                self._failed(f"{name} failed", exc)
                return
            done(result)

        self.run_worker(act(), group="actions", exit_on_error=False)

    def action_abort(self) -> None:
        """``x``: abort the selected job, once confirmed."""
        job_id = self._target("abort")
        if job_id is None:
            return

        def answered(confirmed: bool | None) -> None:
            if not confirmed:
                self._set_status(f"left job {job_id} as it was")
                return
            self._generation += 1
            self._set_status(f"aborting {job_id}…")

            def done(job: Job) -> None:
                self._details[job.job_id] = job
                self._set_status(f"job {job.job_id} is now {job.phase}")
                self._render_jobs()
                self._render_detail()
                self._request_refresh()

            self._run_action(f"abort {job_id}", lambda: self.client.abort(job_id), done)

        self.push_screen(ConfirmAbort(job_id), answered)

    def action_delete(self) -> None:
        """``d``: delete the selected job and its results, once confirmed."""
        job_id = self._target("delete")
        if job_id is None:
            return

        def answered(confirmed: bool | None) -> None:
            if not confirmed:
                self._set_status(f"kept job {job_id}")
                return
            self._generation += 1
            self._set_status(f"deleting {job_id}…")

            def done(_: None) -> None:
                self._summaries = [s for s in self._summaries if s.job_id != job_id]
                self._details.pop(job_id, None)
                self._set_status(f"deleted job {job_id}")
                self._render_jobs()
                self._render_detail()
                self._request_refresh()

            self._run_action(f"delete {job_id}", lambda: self.client.delete(job_id), done)

        self.push_screen(ConfirmDelete(job_id), answered)

    def action_save_results(self) -> None:
        """``s``: download every result of the selected job into the download folder."""
        job_id = self._target("save")
        if job_id is None:
            return
        self._set_status(f"saving the results of {job_id}…")

        def done(outcome: tuple[Path, list[Path], int]) -> None:
            folder, files, size = outcome
            if not files:
                self._set_status(f"job {job_id} has no results to save")
                return
            message = f"saved {len(files)} results of {job_id} ({format_size(size)}) to {folder}"
            self._set_status(message)
            self.notify(message, title="otf", markup=False)

        self._run_action(f"save {job_id}", lambda: self._save_results(job_id), done)

    async def _save_results(self, job_id: str) -> tuple[Path, list[Path], int]:
        """Download every result of ``job_id`` into ``download_dir/<job id>/``: the folder,
        the files and their total size in bytes."""
        job = await self.client.job(job_id)
        folder = self.download_dir / safe_name(job_id, "job")
        files: list[Path] = []
        total = 0
        if not job.results:
            return folder, files, total
        folder.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for result in job.results:
            name = result_filename(result)
            stem, dot, ext = name.partition(".")
            n = 1
            while name in used:
                n += 1
                name = f"{stem}-{n}{dot}{ext}"
            used.add(name)
            dest = folder / name
            total += await self.client.download_result(job_id, result.id, dest)
            files.append(dest)
        return folder, files, total


def run_dashboard(client: OTFClient, refresh: float = 2.0, download_dir: Path = Path(".")) -> None:
    """Run the dashboard in the terminal until the user quits.

    ``client`` (the command line's, with its URL, token and retry settings) is used
    through an :class:`AsyncOTFClient` that shares it; it stays open for its owner to close.
    """
    otf = AsyncOTFClient.from_sync(client)
    Dashboard(otf, refresh=refresh, download_dir=download_dir).run()
