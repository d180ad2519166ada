"""``otf dashboard`` driven headless by Textual's pilot against a real ``otf serve``: the job
table and its filters, the job detail, abort / delete / save, the batch view read from
``/metrics``, and a server that refuses or is not there. The app talks to the service through
:class:`AsyncOTFClient`, as ``otf dashboard`` makes it do (:func:`run_dashboard`)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static

from astro_otf.cli.common import result_filename
from astro_otf.client import AsyncOTFClient, OTFClient, ResultRef
from astro_otf.tui.batches import ModelBatches, RecentBatches, parse_batch_metrics, recent_batches
from astro_otf.tui.confirm import ConfirmAbort, ConfirmDelete
from astro_otf.tui.dashboard import Dashboard, run_dashboard
from tests.conftest import REPO_ROOT, ServerProcess, free_port
from tests.integration.test_uws_api import create, job_json, sleep_job, wait_final, wait_phase

SIZE = (150, 45)
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


@dataclass(frozen=True)
class Finished:
    completed: str  # a sep job on a real image, with results
    failed: str  # a sep job on an all-NaN image: ERROR with an errorSummary


@pytest.fixture(scope="module")
def dash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("dash") / "data", None)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def http(dash_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=dash_server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def finished(http: httpx.Client, real_data: Path, test_data: Path) -> Finished:
    image = real_data / "aegean" / "synthetic_test.fits"
    completed = create(http, {"PHASE": "RUN", "thresh": "6"}, image)
    failed = create(http, {"PHASE": "RUN"}, test_data / "all_nan.fits")
    assert wait_final(http, completed)["phase"] == "COMPLETED"
    assert wait_final(http, failed)["phase"] == "ERROR"
    return Finished(completed, failed)


def drive(
    url: str,
    scenario: Callable[[Dashboard, Pilot[None]], Coroutine[Any, Any, None]],
    download_dir: Path = Path("."),
    refresh: float = 0.5,
) -> Dashboard:
    """Run ``scenario`` against a headless dashboard on ``url``; return the app."""

    async def main() -> Dashboard:
        async with AsyncOTFClient(url, max_retries=0) as client:
            app = Dashboard(client, refresh=refresh, download_dir=download_dir)
            async with app.run_test(size=SIZE) as pilot:
                await scenario(app, pilot)
            return app

    return asyncio.run(main())


async def until(pilot: Pilot[None], check: Callable[[], object], what: str, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def cell(app: Dashboard, job_id: str, column: str) -> str:
    return str(app.jobs_table.get_cell(job_id, column))


async def shown_with_model(app: Dashboard, pilot: Pilot[None], *job_ids: str) -> None:
    """Wait until every job is in the table with its model known (its detail fetched)."""

    def ready() -> bool:
        ids = app.visible_job_ids()
        return all(j in ids and cell(app, j, "model") != "…" for j in job_ids)

    await until(pilot, ready, f"rows for {job_ids}")


async def select(app: Dashboard, pilot: Pilot[None], job_id: str) -> None:
    await shown_with_model(app, pilot, job_id)
    app.select_job(job_id)
    await pilot.pause()
    assert app.selected_job_id == job_id


def detail(app: Dashboard) -> str:
    return str(app.query_one("#detail", Static).content)


# -- the job table ---------------------------------------------------------------------------


def test_table_shows_jobs_with_coloured_phases(
    dash_server: ServerProcess, http: httpx.Client, finished: Finished
) -> None:
    pending = sleep_job(http, 5)

    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await shown_with_model(app, pilot, finished.completed, finished.failed, pending)
        table = app.jobs_table
        phase = table.get_cell(finished.completed, "phase")
        assert phase.plain == "COMPLETED" and str(phase.style) == "green"
        assert table.get_cell(finished.failed, "phase").plain == "ERROR"
        assert table.get_cell(pending, "phase").plain == "PENDING"
        assert str(table.get_cell(pending, "phase").style) == "yellow"
        assert cell(app, finished.completed, "model") == "sep"
        assert cell(app, pending, "model") == "sleep"
        assert cell(app, pending, "runtime") == "-"
        assert cell(app, finished.completed, "runtime").endswith("s")
        assert "updated" in app.sync_message and not app.sync_error

    drive(dash_server.url, scenario)


def test_phase_and_text_filters_hide_rows(
    dash_server: ServerProcess, http: httpx.Client, finished: Finished
) -> None:
    pending = sleep_job(http, 5)

    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await shown_with_model(app, pilot, finished.completed, pending)
        await pilot.press("f")  # ALL -> PENDING
        assert app.phase_filter == "PENDING"
        ids = app.visible_job_ids()
        assert pending in ids and finished.completed not in ids
        assert all(cell(app, j, "phase") == "PENDING" for j in ids)
        await pilot.press("f", "f", "f")  # -> QUEUED -> EXECUTING -> COMPLETED
        assert app.phase_filter == "COMPLETED"
        ids = app.visible_job_ids()
        assert finished.completed in ids and pending not in ids
        await pilot.pause(1.2)  # a refresh or two keeps the filter
        assert pending not in app.visible_job_ids()
        await pilot.press("a")
        assert app.phase_filter is None
        assert {pending, finished.completed} <= set(app.visible_job_ids())

        await pilot.press("slash", *"sleep")
        assert app.text_filter == "sleep"
        ids = app.visible_job_ids()
        assert pending in ids and finished.completed not in ids
        assert all(cell(app, j, "model") == "sleep" for j in ids)
        await pilot.press("escape")
        assert app.focused is app.jobs_table
        app.query_one("#text-filter", Input).value = finished.completed[:10]
        await pilot.pause()
        assert app.visible_job_ids() == [finished.completed]

    drive(dash_server.url, scenario)


def test_text_filter_matches_the_image_and_the_run_id(
    dash_server: ServerProcess, http: httpx.Client, real_data: Path
) -> None:
    image = real_data / "aegean" / "synthetic_test.fits"

    def pending(name: str, run_id: str) -> str:
        with image.open("rb") as f:
            r = http.post(
                "/jobs",
                data={"MODEL": "sleep", "DURATION": "5", "RUNID": run_id},
                files={"IMAGE": (name, f, "application/fits")},
            )
        assert r.status_code == 303, r.text
        return r.headers["location"].rsplit("/", 1)[-1]

    orion = pending("orion-field.fits", "survey-north")
    vela = pending("vela-field.fits", "survey-south")

    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await shown_with_model(app, pilot, orion, vela)
        await until(pilot, lambda: cell(app, vela, "image") == "vela-field.fits", "image names")
        assert cell(app, orion, "run") == "survey-north"
        await pilot.press("slash", *"ORION")  # the image's name, any case
        assert app.text_filter == "ORION"
        assert app.visible_job_ids() == [orion]
        assert "matching 'ORION'" in str(app.jobs_table.border_title)
        filter_input = app.query_one("#text-filter", Input)
        filter_input.value = "survey-south"  # the run id
        await pilot.pause()
        assert app.visible_job_ids() == [vela]
        filter_input.value = "survey"  # both run ids, no other job
        await pilot.pause()
        assert set(app.visible_job_ids()) == {orion, vela}
        filter_input.value = "field.fits"  # both images (the others are img.fits)
        await pilot.pause()
        assert set(app.visible_job_ids()) == {orion, vela}
        await pilot.pause(1.2)  # refreshes keep the filter
        assert set(app.visible_job_ids()) == {orion, vela}

    drive(dash_server.url, scenario)


def test_detail_panel_shows_parameters_results_and_error(
    dash_server: ServerProcess, finished: Finished
) -> None:
    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await select(app, pilot, finished.failed)
        text = detail(app)
        assert "every pixel of the image is blank" in text
        assert "type: fatal" in text
        assert "Results\n  (none)" in text

        await select(app, pilot, finished.completed)
        text = detail(app)
        assert text.startswith(f"{finished.completed}  COMPLETED")
        assert "thresh = 6" in text and "model = sep" in text
        assert "image = http://" in text
        assert "application/x-votable+xml" in text
        assert "\n  preview " in text and "image/png" in text
        assert "Error" not in text
        await until(pilot, lambda: app.batch_stats is not None, "the batch view")
        if os.environ.get("OTF_SAVE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            app.save_screenshot(filename="dashboard.svg", path=str(SCREENSHOTS))

    drive(dash_server.url, scenario)


# -- actions ---------------------------------------------------------------------------------


def test_abort_running_job(dash_server: ServerProcess, http: httpx.Client) -> None:
    running = sleep_job(http, 60, run=True)
    wait_phase(http, running, "EXECUTING")

    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await select(app, pilot, running)
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmAbort)
        assert running in app.screen.question
        await pilot.press("n")  # changed my mind
        assert not isinstance(app.screen, ConfirmAbort)
        assert app.status_message == f"left job {running} as it was"
        await pilot.pause(0.6)  # a refresh or so: nothing was sent
        assert job_json(http, running)["phase"] == "EXECUTING"
        assert cell(app, running, "phase") == "EXECUTING"

        await pilot.press("x")
        assert isinstance(app.screen, ConfirmAbort)
        await pilot.press("x")  # the second press confirms
        assert not isinstance(app.screen, ConfirmAbort)
        await until(pilot, lambda: "is now" in app.status_message, "the abort")
        assert not app.status_error, app.status_message
        await until(pilot, lambda: cell(app, running, "phase") == "ABORTED", "ABORTED row")

    drive(dash_server.url, scenario)
    assert wait_final(http, running, timeout=10)["phase"] == "ABORTED"


def test_abort_of_finished_job_shows_the_server_message(
    dash_server: ServerProcess, http: httpx.Client, finished: Finished
) -> None:
    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await select(app, pilot, finished.completed)
        await pilot.press("x", "y")  # asked, and confirmed with y
        await until(pilot, lambda: app.status_error, "the refusal")
        assert "cannot be aborted" in app.status_message
        assert "already COMPLETED" in app.status_message
        seen = app.refreshes
        await until(pilot, lambda: app.refreshes > seen + 1, "refreshes after the refusal")
        assert app.is_running
        assert cell(app, finished.completed, "phase") == "COMPLETED"

    drive(dash_server.url, scenario)
    assert job_json(http, finished.completed)["phase"] == "COMPLETED"


def test_delete_asks_first(dash_server: ServerProcess, http: httpx.Client) -> None:
    doomed = sleep_job(http, 5)

    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await select(app, pilot, doomed)
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmDelete)
        assert doomed in app.screen.question and "results" in app.screen.question
        await pilot.press("n")  # changed my mind
        assert not isinstance(app.screen, ConfirmDelete)
        assert app.status_message == f"kept job {doomed}"
        assert http.get(f"/jobs/{doomed}").status_code == 200

        await pilot.press("d")
        assert isinstance(app.screen, ConfirmDelete)
        await pilot.press("d")  # the second press confirms
        await until(pilot, lambda: app.status_message == f"deleted job {doomed}", "the delete")
        assert doomed not in app.visible_job_ids()
        await pilot.pause(0.8)  # a refresh does not bring it back
        assert doomed not in app.visible_job_ids()

    drive(dash_server.url, scenario)
    assert http.get(f"/jobs/{doomed}").status_code == 404


def test_save_downloads_every_result(
    dash_server: ServerProcess, http: httpx.Client, finished: Finished, tmp_path: Path
) -> None:
    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await select(app, pilot, finished.completed)
        await pilot.press("s")
        await until(pilot, lambda: app.status_message.startswith("saved"), "the download")
        assert str(tmp_path / finished.completed) in app.status_message

        await select(app, pilot, finished.failed)
        await pilot.press("s")
        await until(pilot, lambda: "no results" in app.status_message, "no results")

    drive(dash_server.url, scenario, download_dir=tmp_path)
    folder = tmp_path / finished.completed
    results = job_json(http, finished.completed)["results"]
    names = {p.name for p in folder.iterdir()}
    assert "catalogue.xml" in names
    assert len(names) == len(results) >= 5
    catalogue = (folder / "catalogue.xml").read_bytes()
    assert catalogue == http.get(f"/jobs/{finished.completed}/results/result").content
    assert b"VOTABLE" in catalogue
    assert not (tmp_path / finished.failed).exists()


# -- the batch view --------------------------------------------------------------------------


def test_batch_view_reads_the_metrics(dash_server: ServerProcess, finished: Finished) -> None:
    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.batch_stats is not None, "the batch view")
        stats = app.batch_stats
        assert stats is not None
        sep = stats.models["sep"]
        assert sep.batches >= 1 and sep.mean_jobs is not None and sep.mean_jobs >= 1
        assert sep.queued == 0
        assert "sleep" in stats.models  # from the registry, or batches of earlier tests
        assert stats.phases["COMPLETED"] >= 1 and stats.phases["ERROR"] >= 1
        table = app.batch_table
        row = [str(c) for c in table.get_row("sep")]
        assert row[0] == "sep" and row[1] == "0" and int(row[2]) == sep.batches
        assert float(row[3]) == pytest.approx(sep.mean_jobs, abs=0.05)
        phases = str(app.query_one("#phases", Static).content)
        assert "COMPLETED" in phases

    drive(dash_server.url, scenario)


METRICS = """\
# HELP otf_queue_depth QUEUED jobs, by model.
# TYPE otf_queue_depth gauge
otf_queue_depth{model="sep"} 3.0
# HELP otf_batch_jobs Jobs per batch sent to a worker.
# TYPE otf_batch_jobs histogram
otf_batch_jobs_bucket{le="1.0",model="sep"} 1.0
otf_batch_jobs_bucket{le="+Inf",model="sep"} 2.0
otf_batch_jobs_count{model="sep"} 2.0
otf_batch_jobs_sum{model="sep"} 5.0
# HELP otf_batch_tiles Tiles per batch sent to a worker.
# TYPE otf_batch_tiles histogram
otf_batch_tiles_bucket{le="+Inf",model="sep"} 2.0
otf_batch_tiles_count{model="sep"} 2.0
otf_batch_tiles_sum{model="sep"} 12.0
# HELP otf_jobs Jobs in the store, by phase.
# TYPE otf_jobs gauge
otf_jobs{phase="QUEUED"} 3.0
otf_jobs{phase="COMPLETED"} 7.0
"""


def test_parse_batch_metrics() -> None:
    stats = parse_batch_metrics(METRICS, models=["sep", "sleep"])
    assert stats.models["sep"] == ModelBatches("sep", queued=3, batches=2, jobs=5.0, tiles=12.0)
    assert stats.models["sep"].mean_jobs == 2.5 and stats.models["sep"].mean_tiles == 6.0
    assert stats.models["sleep"] == ModelBatches("sleep")
    assert stats.models["sleep"].mean_jobs is None
    assert stats.phases == {"QUEUED": 3, "COMPLETED": 7}
    with pytest.raises(ValueError):
        parse_batch_metrics('otf_jobs{phase="QUEUED" 3')

    before = ModelBatches("sep", batches=2, jobs=5.0, tiles=12.0)
    now = ModelBatches("sep", batches=4, jobs=13.0, tiles=20.0)
    assert recent_batches(before, now, None) == RecentBatches(2, 4.0, 4.0)
    kept = RecentBatches(1, 1.0, 1.0)
    assert recent_batches(now, now, kept) is kept
    # a restarted server: the counters start again
    assert recent_batches(now, before, None) == RecentBatches(2, 2.5, 6.0)


def test_refresh_must_be_positive() -> None:
    client = AsyncOTFClient.from_sync(OTFClient("http://127.0.0.1:9"))
    with pytest.raises(ValueError, match="refresh"):
        Dashboard(client, refresh=0)
    client.sync.close()


def test_run_dashboard_uses_the_callers_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``otf dashboard`` hands its client over: the app awaits it through an AsyncOTFClient
    on the same client, which stays open for the command to close."""
    ran: list[Dashboard] = []
    monkeypatch.setattr(Dashboard, "run", lambda self, *a, **k: ran.append(self))
    with OTFClient("http://127.0.0.1:9", max_retries=0) as client:
        run_dashboard(client, 1.5, tmp_path)
        (app,) = ran
        assert isinstance(app.client, AsyncOTFClient) and app.client.sync is client
        assert app.refresh_interval == 1.5 and app.download_dir == tmp_path
        assert not client._http.is_closed


def test_result_file_names() -> None:
    assert result_filename(ResultRef("result", "h", "application/x-votable+xml")) == "catalogue.xml"
    assert result_filename(ResultRef("extra", "h", "text/csv")) == "extra.csv"
    assert result_filename(ResultRef("../../etc", "h", None)) == "_.._etc"


# -- no server -------------------------------------------------------------------------------


def test_unreachable_server_is_reported_and_the_app_keeps_running(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: "unreachable" in app.sync_message, "the unreachable line")
        assert app.sync_error
        seen = app.refreshes
        await until(pilot, lambda: app.refreshes >= seen + 2, "refreshes while unreachable")
        await pilot.press("r", "x", "d", "s", "f")
        assert app.status_message == "no job selected to save"
        assert not isinstance(app.screen, ConfirmDelete | ConfirmAbort)
        seen = app.refreshes
        await until(pilot, lambda: app.refreshes > seen, "the next refresh")
        assert "unreachable" in app.sync_message
        assert app.is_running
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")

    drive(url, scenario, download_dir=tmp_path, refresh=0.2)


# -- progress from the event stream ----------------------------------------------------------


def test_progress_column_follows_the_event_stream(
    dash_server: ServerProcess, http: httpx.Client, real_data: Path
) -> None:
    image = real_data / "aegean" / "synthetic_test.fits"
    fields = {"MODEL": "sleep", "DURATION": "3", "PHASE": "RUN", "RUNID": "dash-run"}

    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.follow_mode == "events" and app.refreshes, "first read")
        running = create(http, fields, image)  # after the first read: only events tell
        await until(
            pilot,
            lambda: (
                running in app.visible_job_ids() and "inference" in cell(app, running, "progress")
            ),
            "the progress of the running job",
        )
        progress = cell(app, running, "progress")
        assert "%" in progress and "ETA" in progress, progress
        assert cell(app, running, "image") == "img.fits"  # the name create() sends
        assert cell(app, running, "run") == "dash-run"
        assert cell(app, running, "model") == "sleep"
        app.select_job(running)
        await pilot.pause()
        assert "progress: " in detail(app) and "inference" in detail(app)
        await until(pilot, lambda: cell(app, running, "phase") == "COMPLETED", "COMPLETED", 20)
        assert cell(app, running, "progress") == ""
        assert app.events_seen >= 2
        assert "(events)" in app.sync_message

    # a refresh timer that never fires while the test runs: the events do the work
    drive(dash_server.url, scenario, refresh=120)


def test_a_service_without_events_is_polled(dash_server: ServerProcess) -> None:
    async def scenario(app: Dashboard, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: app.refreshes >= 2, "two refreshes")
        assert app.follow_mode == "polling" and app.events_seen == 0

    async def main() -> None:
        async with AsyncOTFClient(dash_server.url) as client:
            app = Dashboard(client, refresh=0.5, events=False)
            async with app.run_test(size=SIZE) as pilot:
                await scenario(app, pilot)

    asyncio.run(main())
