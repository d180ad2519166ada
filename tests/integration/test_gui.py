"""The desktop GUI against a real astro-otf server, driven through pytest-qt.

Everything goes over HTTP to a server started for this module; SAMP goes through a real
hub started in-process. Set ``OTF_SAVE_SCREENSHOTS=1`` to refresh the screenshot in
``docs/screenshots/gui.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse
from astropy.wcs import WCS
from PySide6.QtCore import QPoint, QTimer
from PySide6.QtGui import QImage

from astro_otf.client import OTFClient
from astro_otf.gui import MainWindow, run_gui
from astro_otf.gui.app import OVERLAY_COLOUR
from tests.conftest import REAL_DATA, REPO_ROOT, ServerProcess, free_port

SYNTHETIC = REAL_DATA / "aegean" / "synthetic_test.fits"
GALACTIC = REAL_DATA / "astroquery" / "magpis_G10.5+0.0.fits"
SCREENSHOT = REPO_ROOT / "docs" / "screenshots" / "gui.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("gui") / "data", None)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[OTFClient]:
    with OTFClient(server.url) as otf:
        yield otf


@pytest.fixture()
def window(qtbot, client: OTFClient) -> MainWindow:  # type: ignore[no-untyped-def]
    win = MainWindow(client)
    qtbot.addWidget(win)
    win.show()
    return win


@pytest.fixture(scope="module")
def finished(server: ServerProcess, qapp) -> Iterator[MainWindow]:  # type: ignore[no-untyped-def]
    """One window that has run a sep job on the synthetic image (shared: ~2 s a job)."""
    with OTFClient(server.url) as otf:
        win = MainWindow(otf)
        win.resize(1300, 820)
        win.show()
        assert win.open_image(SYNTHETIC)
        win.select_model("sep")
        finished_ids: list[str] = []
        win.jobFinished.connect(finished_ids.append)
        assert win.submit()
        assert win.wait_for_job(60)
        assert finished_ids == [win.job_id]
        yield win
        win.close()
        win.deleteLater()


def _qimage_rgb(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height = image.width(), image.height()
    buffer = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.sizeInBytes())
    stride = image.bytesPerLine()
    return buffer.reshape(height, stride)[:, : width * 3].reshape(height, width, 3).copy()


# --------------------------------------------------------------------------- image


def test_open_image_shows_it(window: MainWindow) -> None:
    assert window.open_image(SYNTHETIC)
    assert window.axes is not None and window.image_artist is not None
    shape = np.asarray(window.image_artist.get_array()).shape
    assert shape == fits.getdata(SYNTHETIC).shape == (256, 512)
    for stretch in ("linear", "sqrt", "log", "asinh"):
        window.stretch_combo.setCurrentText(stretch)
        for percentile in ("99", "100"):
            window.percentile_combo.setCurrentText(percentile)
            norm = window.image_artist.norm
            assert norm.vmin is not None and norm.vmax is not None
            assert norm.vmin < norm.vmax
    assert "synthetic_test.fits" in window.statusBar().currentMessage()


def test_non_fits_file_is_an_error_in_the_status_bar(window: MainWindow, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.fits"
    bogus.write_text("this is not FITS\n" * 50)
    assert not window.open_image(bogus)
    assert "Cannot open notes.fits" in window.statusBar().currentMessage()
    assert not window.open_image(tmp_path / "missing.fits")
    assert window.image is None
    assert window.open_image(SYNTHETIC)  # still usable


# --------------------------------------------------------------------------- models / ROI


def test_model_combo_and_form_follow_the_schema(window: MainWindow) -> None:
    ids = [window.model_combo.itemText(i) for i in range(window.model_combo.count())]
    assert {"sep", "matched-filter"} <= set(ids)
    window.select_model("sep")
    assert window.form is not None
    assert "thresh" in window.form.editors and "threshold" not in window.form.editors
    assert not {"image", "model", "ra", "dec", "width", "height"} & set(window.form.editors)
    assert window.form_parameters() == {"MODEL": "sep"}
    window.form.editors["thresh"].setValue(4.5)  # type: ignore[attr-defined]
    window.form.editors["PRECISION"].setCurrentText("fp32")  # type: ignore[attr-defined]
    window.form.editors["filter"].setChecked(True)  # type: ignore[attr-defined]
    assert window.form_parameters() == {
        "MODEL": "sep",
        "thresh": "4.5",
        "PRECISION": "fp32",
        "filter": "true",
    }
    window.select_model("matched-filter")
    assert window.form is not None
    assert "threshold" in window.form.editors and "thresh" not in window.form.editors
    assert window.form_parameters() == {"MODEL": "matched-filter"}


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
@pytest.mark.parametrize("path", [SYNTHETIC, GALACTIC], ids=["icrs", "galactic"])
def test_roi_parameters_follow_the_wcs(window: MainWindow, path: Path) -> None:
    assert window.roi_parameters() == {}
    assert window.open_image(path)
    window.set_roi_pixels(120.0, 40.0, 20.0, 100.0)  # any corner order
    params = window.roi_parameters()
    centre = WCS(fits.getheader(path)).celestial.pixel_to_world(70.0, 70.0).icrs  # always ICRS
    assert float(params["RA"]) == pytest.approx(centre.ra.deg % 360, abs=1e-7)
    assert float(params["DEC"]) == pytest.approx(centre.dec.deg, abs=1e-7)
    assert (params["WIDTH"], params["HEIGHT"]) == ("100", "60")
    window.clear_roi()
    assert window.roi_parameters() == {}


# --------------------------------------------------------------------------- jobs


def test_job_fills_table_and_overlay(finished: MainWindow) -> None:
    win = finished
    assert win.job is not None and win.job.phase == "COMPLETED"
    assert 100 <= win.table.rowCount() <= 104
    assert win.catalogue is not None and len(win.catalogue) == win.table.rowCount()
    assert win.overlay_artist is not None
    assert len(win.overlay_artist.get_offsets()) == win.table.rowCount()
    assert win.progress.value() == 1000
    assert "COMPLETED" in win.phase_label.text()


def test_selecting_a_row_highlights_the_source(finished: MainWindow) -> None:
    win = finished
    assert win.catalogue is not None and win.highlight_artist is not None
    for row in (0, 17, win.table.rowCount() - 1):
        win.select_source(row)
        assert win.selected_source() == row
        x = float(win.catalogue.column("x")[row])
        y = float(win.catalogue.column("y")[row])
        assert list(win.highlight_artist.get_xdata()) == pytest.approx([x])
        assert list(win.highlight_artist.get_ydata()) == pytest.approx([y])


def test_right_click_on_a_source_selects_its_row(finished: MainWindow, qtbot) -> None:  # type: ignore[no-untyped-def]
    win = finished
    assert win.catalogue is not None and win.axes is not None
    win.canvas.draw()
    row = 42
    x, y = win.catalogue.column("x")[row], win.catalogue.column("y")[row]
    sx, sy = win.axes.transData.transform((x, y))
    from matplotlib.backend_bases import MouseButton, MouseEvent

    event = MouseEvent("button_press_event", win.canvas, sx + 2, sy - 2, MouseButton.RIGHT)
    win.canvas.callbacks.process("button_press_event", event)
    assert win.selected_source() == row


def test_export_results(finished: MainWindow, tmp_path: Path) -> None:
    win = finished
    for result_id, name in (("result", "cat.xml"), ("csv", "cat.csv"), ("ds9", "cat.reg")):
        assert win.export(result_id, tmp_path / name), win.statusBar().currentMessage()
        assert (tmp_path / name).stat().st_size > 0
    table = parse(str(tmp_path / "cat.xml")).get_first_table()
    assert len(table.array) == win.table.rowCount()
    assert len((tmp_path / "cat.csv").read_text().splitlines()) == win.table.rowCount() + 1
    assert "ellipse" in (tmp_path / "cat.reg").read_text()
    assert not win.export("no-such-result", tmp_path / "x")
    assert "Export of no-such-result failed" in win.statusBar().currentMessage()


def test_screenshot_shows_the_overlay(finished: MainWindow, tmp_path: Path) -> None:
    win = finished
    assert win.overlay_artist is not None and win.axes is not None
    win.select_source(0)
    win.overlay_artist.set_visible(False)
    win.canvas.draw()
    before = win.grab()
    win.overlay_artist.set_visible(True)
    win.canvas.draw()
    after = win.grab()
    path = tmp_path / "gui.png"
    assert after.save(str(path))
    assert path.stat().st_size > 20_000  # a real picture, not a blank window

    ratio = after.devicePixelRatio()
    origin = win.canvas.mapTo(win, QPoint(0, 0))
    height = win.canvas.height()
    green = np.array([int(OVERLAY_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])

    def green_pixels(image: QImage) -> int:
        rgb = _qimage_rgb(image).astype(int)
        assert win.catalogue is not None and win.axes is not None
        count = 0
        xy = np.column_stack([win.catalogue.column("x"), win.catalogue.column("y")])
        for sx, sy in win.axes.transData.transform(xy)[:20]:
            wx = (origin.x() + sx / ratio) * ratio
            wy = (origin.y() + height - sy / ratio) * ratio
            patch = rgb[int(wy) - 12 : int(wy) + 13, int(wx) - 12 : int(wx) + 13]
            count += int(np.sum(np.abs(patch - green).sum(axis=-1) < 120))
        return count

    assert green_pixels(before.toImage()) == 0
    assert green_pixels(after.toImage()) > 100
    if os.environ.get("OTF_SAVE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        assert after.save(str(SCREENSHOT))


def test_failed_job_reports_its_error_summary(
    window: MainWindow,
    qtbot,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    blank = tmp_path / "blank.fits"
    fits.writeto(blank, np.full((64, 64), np.nan, dtype="f4"), fits.getheader(SYNTHETIC))
    assert window.open_image(blank)  # an all-NaN image still displays
    window.select_model("sep")
    with qtbot.waitSignal(window.jobFinished, timeout=30_000) as blocker:
        assert window.submit()
    assert blocker.args == [window.job_id]
    assert window.job is not None and window.job.phase == "ERROR"
    message = window.statusBar().currentMessage()
    assert message.startswith(f"Job {window.job_id} ended ERROR: ")
    assert "blank" in message
    assert window.table.rowCount() == 0
    assert not window.export_csv_button.isEnabled()


def test_refused_submission_is_reported(window: MainWindow, qtbot) -> None:  # type: ignore[no-untyped-def]
    assert window.open_image(SYNTHETIC)
    window.select_model("sep")
    assert window.form is not None
    window.form.editors["back_size"].setText("not an angle")  # type: ignore[attr-defined]
    with qtbot.waitSignal(window.jobFinished, timeout=30_000):
        assert window.submit()
    message = window.statusBar().currentMessage()
    assert message.startswith("The service refused: BACK_SIZE"), message
    assert window.job_id is None and "Submission failed" in window.phase_label.text()
    assert window.submit_button.isEnabled()


# --------------------------------------------------------------------------- SAMP


def test_send_to_samp_reaches_a_receiver(finished: MainWindow, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from astropy.samp import SAMPHubServer, SAMPIntegratedClient

    hub = SAMPHubServer(web_profile=False, lockfile=str(tmp_path / "samp.lock"), mode="single")
    hub.start()
    receiver = SAMPIntegratedClient(name="test-receiver")
    got: dict[str, dict[str, str]] = {}
    arrived = threading.Event()

    def receive(private_key, sender_id, mtype, params, extra):  # type: ignore[no-untyped-def]
        got[mtype] = dict(params)
        if "table.load.votable" in got and "image.load.fits" in got:
            arrived.set()

    try:
        receiver.connect(hub_params=hub.params)
        receiver.bind_receive_notification("table.load.votable", receive)
        receiver.bind_receive_notification("image.load.fits", receive)
        finished.samp_hub_params = hub.params
        assert finished.send_to_samp(), finished.statusBar().currentMessage()
        assert arrived.wait(10), got
    finally:
        finished.samp_hub_params = None
        finished.samp.close()
        receiver.disconnect()
        hub.stop()
    assert finished.job is not None
    job_id = finished.job.job_id
    table, image = got["table.load.votable"], got["image.load.fits"]
    assert table["url"].endswith(f"/jobs/{job_id}/results/result")
    # TOPCAT and Aladin list the catalogue by image and job, not as "astro-otf catalogue"
    assert table["name"] == f"synthetic_test.fits — job {job_id} (sep)"
    assert table["table-id"] == table["url"]
    assert image["url"] == SYNTHETIC.resolve().as_uri()
    assert image["name"] == "synthetic_test.fits"


def test_samp_without_hub_is_a_status_message(window: MainWindow, tmp_path: Path) -> None:
    assert window.open_image(SYNTHETIC)
    window.samp_hub_params = {
        "samp.secret": "x",
        "samp.hub.xmlrpc.url": f"http://127.0.0.1:{free_port()}/",
    }
    assert not window.send_to_samp()
    assert window.statusBar().currentMessage().startswith("SAMP:")


# --------------------------------------------------------------------------- uploads / progress


def _set(editor: object, value: float) -> None:
    if hasattr(editor, "setValue"):
        editor.setValue(value)
    else:
        getattr(editor, "setText")(str(value))  # noqa: B009 - a QLineEdit


def test_one_upload_serves_several_jobs_and_the_bar_follows_the_job(
    window: MainWindow, qtbot: Any, client: OTFClient
) -> None:
    shown: list[tuple[str, int]] = []
    window.progressChanged.connect(lambda text, value: shown.append((text, value)))
    assert window.open_image(SYNTHETIC)
    window.select_model("sep")
    with qtbot.waitSignal(window.jobFinished, timeout=60_000):
        assert window.submit()
    first = window.job
    assert first is not None and first.phase == "COMPLETED", window.statusBar().currentMessage()
    assert window.last_submission_sent_image
    assert len(window.upload_ids) == 1
    upload_id = next(iter(window.upload_ids.values()))
    assert first.input["upload_id"] == upload_id
    assert any(text == "upload %p%" and value == 1000 for text, value in shown)

    # the same file again, with another model: no bytes sent, the progress bar follows it
    window.select_model("sleep")
    assert window.form is not None
    _set(window.form.editors["duration"], 2.5)
    shown.clear()
    with qtbot.waitSignal(window.jobFinished, timeout=60_000):
        assert window.submit()
    second = window.job
    assert second is not None and second.phase == "COMPLETED"
    assert not window.last_submission_sent_image
    assert second.input["upload_id"] == upload_id
    running = [(t, v) for t, v in shown if "inference" in t]
    assert running and all(0 < v < 1000 for _, v in running), shown
    assert shown[-1] == ("COMPLETED", 1000) and window.progress.value() == 1000
    assert [u["upload_id"] for u in client.uploads()].count(upload_id) == 1

    # the service lost the upload: the window stores the file again and goes on
    client.delete_upload(upload_id)
    window.select_model("sep")
    with qtbot.waitSignal(window.jobFinished, timeout=60_000):
        assert window.submit()
    assert window.job is not None and window.job.phase == "COMPLETED"
    assert window.last_submission_sent_image
    assert window.job.input["upload_id"] == next(iter(window.upload_ids.values()))


# --------------------------------------------------------------------------- errors


def test_unreachable_server_keeps_the_window_usable(qtbot) -> None:  # type: ignore[no-untyped-def]
    with OTFClient(f"http://127.0.0.1:{free_port()}", timeout=5) as dead:
        win = MainWindow(dead)
        qtbot.addWidget(win)
        assert "cannot reach" in win.statusBar().currentMessage().lower()
        assert win.model_combo.count() == 0
        assert win.open_image(SYNTHETIC)
        assert not win.submit()  # no model: refused before any request
        assert "No model" in win.statusBar().currentMessage()
        win.set_roi_pixels(10, 10, 50, 50)
        assert win.roi_parameters()["WIDTH"] == "40"


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
def test_region_on_a_galactic_image_is_sent_in_icrs_and_runs(window: MainWindow, qtbot) -> None:  # type: ignore[no-untyped-def]
    """A box drawn on a GLON/GLAT image is sent as its ICRS centre; the job completes and
    finds only sources inside the box."""
    assert window.open_image(GALACTIC)
    window.select_model("sep")
    window.set_roi_pixels(60.0, 60.0, 240.0, 240.0)
    params = window.roi_parameters()
    centre = WCS(fits.getheader(GALACTIC)).celestial.pixel_to_world(150.0, 150.0).icrs
    assert float(params["RA"]) == pytest.approx(centre.ra.deg, abs=1e-7)
    assert float(params["DEC"]) == pytest.approx(centre.dec.deg, abs=1e-7)
    with qtbot.waitSignal(window.jobFinished, timeout=60_000):
        assert window.submit()
    assert window.job is not None and window.job.phase == "COMPLETED", (
        window.statusBar().currentMessage()
    )
    assert window.catalogue is not None and len(window.catalogue) > 0
    x, y = window.catalogue.column("x"), window.catalogue.column("y")
    assert np.all((x >= 59.5) & (x < 239.5) & (y >= 59.5) & (y < 239.5))


def test_otf_gui_without_a_usable_x11_says_what_is_missing(server: ServerProcess) -> None:
    """On the xcb platform with no display (and, on a machine without them, without the
    xcb plugin's libraries), ``otf gui`` exits with a message instead of Qt's abort."""
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb"}
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "astro_otf.cli.main", "--url", server.url, "gui", str(SYNTHETIC)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stderr.startswith("error: otf gui cannot open a window: "), done.stderr
    assert "QT_QPA_PLATFORM=offscreen" in done.stderr
    assert ("apt-get install libxcb" in done.stderr) or ("DISPLAY is not set" in done.stderr)
    assert "qt.qpa" not in done.stderr and "Aborted" not in done.stderr


def test_run_gui_shows_the_window_and_returns_the_exit_code(qapp, client: OTFClient) -> None:  # type: ignore[no-untyped-def]
    seen: list[MainWindow] = []

    def check_and_quit() -> None:
        windows = [w for w in qapp.topLevelWidgets() if isinstance(w, MainWindow)]
        seen.extend(w for w in windows if w.isVisible() and w.image is not None)
        for w in windows:
            w.close()
        qapp.exit(3)

    QTimer.singleShot(300, check_and_quit)
    assert run_gui(client, SYNTHETIC) == 3
    assert seen and seen[0].image is not None and seen[0].image.path == SYNTHETIC
