"""The astro-otf main window and the ``otf gui`` entry point.

This module exists to put the whole interactive workflow in one window: open a FITS
image, adjust its display stretch, draw a region of interest, choose a model and its
parameters from the service's own schema, run the job in a background thread, and look
at the detections on the image and in a linked table before exporting them or sending
them to other tools over SAMP. Errors never open modal dialogs: they are shown in the
status bar and a message label so that the window stays usable (and testable).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from astropy.visualization import (
    AsinhStretch,
    ImageNormalize,
    LinearStretch,
    LogStretch,
    MinMaxInterval,
    PercentileInterval,
    SqrtStretch,
)
from matplotlib.axes import Axes
from matplotlib.backend_bases import Event, MouseButton, MouseEvent
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.widgets import RectangleSelector
from PySide6.QtCore import QEventLoop, QThread, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from astro_otf.cli.common import progress_fraction, progress_text
from astro_otf.client import Job, OTFClient, Progress
from astro_otf.gui.image import (
    Catalogue,
    ImageLoadError,
    LoadedImage,
    load_image,
    parse_catalogue,
    roi_parameters,
)
from astro_otf.gui.platform import platform_problem
from astro_otf.gui.samp import SAMPSender, SAMPSendError, catalogue_name
from astro_otf.gui.worker import JobWorker, describe_error

#: matplotlib's Qt canvas class, called through a typed name (its Qt backend is untyped).
_new_canvas: Callable[[Figure], FigureCanvasQTAgg] = FigureCanvasQTAgg

#: Parameters the window sets itself (file, model, ROI) and so leaves out of the form.
SKIPPED_PARAMETERS = frozenset({"image", "model", "ra", "dec", "width", "height", "precision"})
STRETCHES = {
    "linear": LinearStretch,
    "sqrt": SqrtStretch,
    "log": LogStretch,
    "asinh": AsinhStretch,
}
PERCENTILES = ["99", "99.5", "99.9", "100"]
#: Colour of the detection overlay and of the selected source.
OVERLAY_COLOUR = "#00ff00"
HIGHLIGHT_COLOUR = "#ff0000"
#: Screen pixels within which a right-click on the image selects a source.
PICK_RADIUS = 10.0
#: Drawn size (pixels) of a source without a usable size in the catalogue.
DEFAULT_MARKER = 6.0


class ParameterForm(QWidget):
    """A form built from one model's parameter schema (``GET /models``)."""

    def __init__(self, model: Mapping[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = dict(model)
        self.editors: dict[str, QWidget] = {}
        self.defaults: dict[str, str] = {}
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        precisions = [str(p) for p in self.model.get("precisions") or []]
        if precisions:
            combo = QComboBox()
            combo.addItems(precisions)
            combo.setToolTip("Numeric precision of the run")
            self.editors["PRECISION"] = combo
            self.defaults["PRECISION"] = precisions[0]
            layout.addRow("precision", combo)
        for spec in self.model.get("parameters") or []:
            name = str(spec.get("name", ""))
            if not name or name.lower() in SKIPPED_PARAMETERS:
                continue
            editor = self._editor(spec)
            tip = str(spec.get("description") or "")
            if spec.get("unit"):
                tip = f"{tip} [{spec['unit']}]".strip()
            editor.setToolTip(tip)
            self.editors[name] = editor
            self.defaults[name] = self._value(editor)
            label = f"{name} ({spec['unit']})" if spec.get("unit") else name
            layout.addRow(label, editor)

    @staticmethod
    def _editor(spec: Mapping[str, Any]) -> QWidget:
        kind = spec.get("type")
        default = spec.get("default")
        allowed = spec.get("allowed")
        lo, hi = spec.get("minimum"), spec.get("maximum")
        if allowed:
            combo = QComboBox()
            combo.addItems([str(a) for a in allowed])
            if default is not None:
                combo.setCurrentText(str(default))
            return combo
        if kind == "bool":
            box = QCheckBox()
            box.setChecked(bool(default))
            return box
        if kind == "int" and default is not None:
            spin = QSpinBox()
            spin.setRange(
                int(lo) if lo is not None else -(2**31) + 1,
                int(hi) if hi is not None else 2**31 - 1,
            )
            spin.setValue(int(default))
            return spin
        if kind == "float" and default is not None:
            dspin = QDoubleSpinBox()
            dspin.setDecimals(6)
            dspin.setRange(
                float(lo) if lo is not None else -1e12, float(hi) if hi is not None else 1e12
            )
            step = abs(float(default)) / 10 if float(default) else 0.1
            dspin.setSingleStep(10 ** math.floor(math.log10(step)))
            dspin.setValue(float(default))
            return dspin
        # free text; also numbers without a default, so that "empty" means "server
        # default" rather than some invented value
        line = QLineEdit()
        if default is not None:
            line.setText(str(default))
        else:
            line.setPlaceholderText("default")
        return line

    @staticmethod
    def _value(editor: QWidget) -> str:
        if isinstance(editor, QComboBox):
            return editor.currentText()
        if isinstance(editor, QCheckBox):
            return "true" if editor.isChecked() else "false"
        if isinstance(editor, QSpinBox):
            return str(editor.value())
        if isinstance(editor, QDoubleSpinBox):
            return repr(float(editor.value()))
        if isinstance(editor, QLineEdit):
            return editor.text().strip()
        raise TypeError(type(editor).__name__)

    def values(self) -> dict[str, str]:
        """The values that differ from the schema's defaults."""
        out: dict[str, str] = {}
        for name, editor in self.editors.items():
            value = self._value(editor)
            if value != self.defaults[name] and value != "":
                out[name] = value
        return out


class MainWindow(QMainWindow):
    """The astro-otf GUI, talking to the service through ``client``.

    Signals: ``jobFinished(str)`` carries the job id (``""`` when no job was created)
    once a submission has ended, whatever its outcome; ``imageOpened(str)`` the path of
    a newly shown image; ``errorShown(str)`` every error message shown;
    ``progressChanged(str, int)`` the progress bar's text and value (0..1000) of the
    running job.

    An image is uploaded once (``POST /uploads``) and its upload id remembered by path,
    modification time and size: later jobs on the same file name it (``upload:<id>``)
    instead of sending it again. A service without ``/uploads`` gets the image with
    each job.
    """

    jobFinished = Signal(str)
    imageOpened = Signal(str)
    errorShown = Signal(str)
    progressChanged = Signal(str, int)

    def __init__(self, client: OTFClient, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.client = client
        self.image: LoadedImage | None = None
        self.catalogue: Catalogue | None = None
        self.job: Job | None = None
        self.job_id: str | None = None
        self.models: list[dict[str, Any]] = []
        self.form: ParameterForm | None = None
        self.samp_hub_params: Mapping[str, Any] | None = None
        self.samp = SAMPSender()
        self.axes: Axes | None = None
        self.image_artist: AxesImage | None = None
        self.overlay_artist: EllipseCollection | None = None
        self.highlight_artist: Line2D | None = None
        self.selector: RectangleSelector | None = None
        self._roi: tuple[float, float, float, float] | None = None
        self._thread: QThread | None = None
        self._worker: JobWorker | None = None
        self._upload_total = 1
        self._pending_finish = ""
        #: Upload ids by (resolved path, mtime in ns, size) of the file.
        self.upload_ids: dict[tuple[str, int, int], str] = {}
        #: False once the service has answered that it has no ``/uploads``.
        self.uploads_supported = True
        #: Whether the latest submission sent the image's bytes (False: it reused an upload).
        self.last_submission_sent_image = False
        self._upload_key: tuple[str, int, int] | None = None
        self.setWindowTitle(f"astro-otf — {client.url}")
        self.resize(1300, 820)
        self._build_ui()
        self._build_menu()
        self.reload_models()

    # ------------------------------------------------------------------ layout

    def _build_ui(self) -> None:
        self.figure = Figure(figsize=(7, 6), layout="constrained")
        self.canvas = _new_canvas(self.figure)
        self.canvas.mpl_connect("button_press_event", self._on_click)

        self.stretch_combo = QComboBox()
        self.stretch_combo.addItems(list(STRETCHES))
        self.stretch_combo.setCurrentText("asinh")
        self.percentile_combo = QComboBox()
        self.percentile_combo.addItems(PERCENTILES)
        self.percentile_combo.setCurrentText("99.5")
        self.stretch_combo.currentTextChanged.connect(lambda _t: self.update_stretch())
        self.percentile_combo.currentTextChanged.connect(lambda _t: self.update_stretch())
        self.clear_roi_button = QPushButton("Clear ROI")
        self.clear_roi_button.clicked.connect(self.clear_roi)
        self.roi_label = QLabel("ROI: whole image")

        display = QHBoxLayout()
        display.addWidget(QLabel("Stretch"))
        display.addWidget(self.stretch_combo)
        display.addWidget(QLabel("Percentile"))
        display.addWidget(self.percentile_combo)
        display.addWidget(self.clear_roi_button)
        display.addWidget(self.roi_label, 1)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addLayout(display)
        left_layout.addWidget(self.canvas, 1)

        self.model_combo = QComboBox()
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        self.model_description = QLabel()
        self.model_description.setWordWrap(True)
        self.form_box = QGroupBox("Parameters")
        self.form_layout = QVBoxLayout(self.form_box)
        self.submit_button = QPushButton("Submit")
        self.submit_button.clicked.connect(self.submit)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setFormat("upload %p%")
        self.phase_label = QLabel("No job")
        self.message_label = QLabel()
        self.message_label.setWordWrap(True)
        self.message_label.setStyleSheet("color: #b00020")

        self.export_votable_button = QPushButton("VOTable…")
        self.export_csv_button = QPushButton("CSV…")
        self.export_ds9_button = QPushButton("DS9…")
        self.samp_button = QPushButton("Send to TOPCAT/Aladin")
        for button, rid, suffix in (
            (self.export_votable_button, "result", "xml"),
            (self.export_csv_button, "csv", "csv"),
            (self.export_ds9_button, "ds9", "reg"),
        ):
            button.clicked.connect(lambda _c=False, r=rid, s=suffix: self._export_dialog(r, s))
            button.setEnabled(False)
        self.samp_button.clicked.connect(self.send_to_samp)
        exports = QHBoxLayout()
        exports.addWidget(QLabel("Export"))
        exports.addWidget(self.export_votable_button)
        exports.addWidget(self.export_csv_button)
        exports.addWidget(self.export_ds9_button)

        self.table = QTableWidget()
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.itemSelectionChanged.connect(self._on_row_selected)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        model_row = QHBoxLayout()
        model_row.addWidget(QLabel("Model"))
        model_row.addWidget(self.model_combo, 1)
        right_layout.addLayout(model_row)
        right_layout.addWidget(self.model_description)
        right_layout.addWidget(self.form_box)
        right_layout.addWidget(self.submit_button)
        right_layout.addWidget(self.progress)
        right_layout.addWidget(self.phase_label)
        right_layout.addWidget(self.message_label)
        right_layout.addLayout(exports)
        right_layout.addWidget(self.samp_button)
        right_layout.addWidget(self.table, 1)

        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        self.setCentralWidget(splitter)
        self.statusBar().showMessage(f"Service: {self.client.url}")

    def _redraw(self) -> None:
        """Redraw the figure when Qt next paints. Through ``self.figure.canvas``, which is
        ``self.canvas`` typed by matplotlib's stubs (its Qt backend is untyped)."""
        self.figure.canvas.draw_idle()

    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_action = QAction("&Open FITS…", self)
        self.open_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_action.triggered.connect(self._open_dialog)
        file_menu.addAction(self.open_action)
        export_menu = file_menu.addMenu("&Export")
        for label, rid, suffix in (
            ("VOTable catalogue…", "result", "xml"),
            ("CSV catalogue…", "csv", "csv"),
            ("DS9 regions…", "ds9", "reg"),
        ):
            action = QAction(label, self)
            action.triggered.connect(lambda _c=False, r=rid, s=suffix: self._export_dialog(r, s))
            export_menu.addAction(action)
        self.samp_action = QAction("Send to TOPCAT/Aladin (SAMP)", self)
        self.samp_action.triggered.connect(self.send_to_samp)
        file_menu.addAction(self.samp_action)
        reload_action = QAction("Reload models", self)
        reload_action.triggered.connect(self.reload_models)
        file_menu.addAction(reload_action)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)

    # ------------------------------------------------------------------ messages

    def show_error(self, message: str) -> None:
        """Report a problem without a modal dialog."""
        self.message_label.setText(message)
        self.statusBar().showMessage(message)
        self.errorShown.emit(message)

    def show_info(self, message: str) -> None:
        """Show a passing note in the status bar, clearing the last error message."""
        self.message_label.setText("")
        self.statusBar().showMessage(message)

    # ------------------------------------------------------------------ models

    @Slot()
    def reload_models(self) -> None:
        """(Re)read the model list and schemas from the service."""
        try:
            doc = self.client.models()
        except Exception as exc:
            self.show_error(f"Cannot list models: {describe_error(exc)}")
            self.models = []
            self.model_combo.clear()
            return
        self.models = [dict(m) for m in doc.get("models") or []]
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for model in self.models:
            self.model_combo.addItem(str(model.get("id")))
        default = doc.get("default")
        index = self.model_combo.findText(str(default)) if default else 0
        self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)
        self._on_model_changed(self.model_combo.currentIndex())

    @Slot(int)
    def _on_model_changed(self, index: int) -> None:
        if self.form is not None:
            self.form_layout.removeWidget(self.form)
            self.form.deleteLater()
            self.form = None
        if not 0 <= index < len(self.models):
            self.model_description.setText("")
            return
        model = self.models[index]
        self.model_description.setText(
            f"{model.get('id')} {model.get('version') or ''}: {model.get('description') or ''}"
        )
        self.form = ParameterForm(model)
        self.form_layout.addWidget(self.form)

    def select_model(self, model_id: str) -> None:
        """Choose the model ``model_id`` (its form replaces the current one); KeyError when
        the service has no such model."""
        index = self.model_combo.findText(model_id)
        if index < 0:
            raise KeyError(model_id)
        self.model_combo.setCurrentIndex(index)

    def form_parameters(self) -> dict[str, str]:
        """MODEL plus the form's values that differ from the model's defaults."""
        if self.form is None:
            return {}
        return {"MODEL": str(self.form.model.get("id")), **self.form.values()}

    # ------------------------------------------------------------------ image

    @Slot()
    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open FITS image", "", "FITS images (*.fits *.fit *.fts *.fits.gz);;All (*)"
        )
        if path:
            self.open_image(Path(path))

    def open_image(self, path: Path) -> bool:
        """Show the FITS image ``path``; False (and an error message) when it cannot."""
        try:
            image = load_image(Path(path))
        except (ImageLoadError, OSError) as exc:
            self.show_error(f"Cannot open {Path(path).name}: {exc}")
            return False
        self.image = image
        self.catalogue = None
        self.table.clear()
        self.table.setRowCount(0)
        self.table.setColumnCount(0)
        self._draw_image()
        self.show_info(f"Opened {image.path} ({image.data.shape[1]}x{image.data.shape[0]} px)")
        self.imageOpened.emit(str(image.path))
        return True

    def _norm(self) -> ImageNormalize:
        assert self.image is not None
        percentile = float(self.percentile_combo.currentText())
        interval = MinMaxInterval() if percentile >= 100 else PercentileInterval(percentile)
        stretch = STRETCHES[self.stretch_combo.currentText()]()
        data = self.image.data
        finite = data[np.isfinite(data)]
        if finite.size == 0:
            finite = np.zeros(1)
        return ImageNormalize(finite, interval=interval, stretch=stretch, clip=True)

    def _draw_image(self) -> None:
        assert self.image is not None
        self.figure.clear()
        self.overlay_artist = None
        self.highlight_artist = None
        self._roi = None
        self.roi_label.setText("ROI: whole image")
        ax = self.figure.add_subplot(projection=self.image.wcs)
        self.axes = ax
        self.image_artist = ax.imshow(
            self.image.data, origin="lower", cmap="gray", norm=self._norm(), interpolation="nearest"
        )
        frame = self.image.frame
        ax.set_xlabel("Galactic longitude" if frame == "galactic" else "RA")
        ax.set_ylabel("Galactic latitude" if frame == "galactic" else "Dec")
        ax.set_title(self.image.path.name)
        self.selector = RectangleSelector(
            ax,
            self._on_rectangle,
            useblit=False,
            button=[MouseButton.LEFT],
            minspanx=2,
            minspany=2,
            spancoords="pixels",
            interactive=True,
            props={"edgecolor": "cyan", "fill": False, "linewidth": 1.5},
        )
        self._redraw()

    @Slot()
    def update_stretch(self) -> None:
        """Apply the stretch and percentile combos to the shown image."""
        if self.image is None or self.image_artist is None:
            return
        self.image_artist.set_norm(self._norm())
        self._redraw()

    # ------------------------------------------------------------------ ROI

    def _on_rectangle(self, press: Event, release: Event) -> None:
        assert isinstance(press, MouseEvent) and isinstance(release, MouseEvent)
        if None in (press.xdata, press.ydata, release.xdata, release.ydata):
            return
        assert press.xdata is not None and press.ydata is not None
        assert release.xdata is not None and release.ydata is not None
        x0, x1 = sorted((float(press.xdata), float(release.xdata)))
        y0, y1 = sorted((float(press.ydata), float(release.ydata)))
        if x1 - x0 < 1 or y1 - y0 < 1:
            return
        self._set_roi(x0, y0, x1, y1)

    def _set_roi(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self._roi = (x0, y0, x1, y1)
        params = self.roi_parameters()
        self.roi_label.setText(
            f"ROI: {params['WIDTH']}x{params['HEIGHT']} px at "
            f"({float(params['RA']):.5f}, {float(params['DEC']):.5f})"
        )

    def set_roi_pixels(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """Set the ROI rectangle in 0-based pixel coordinates (as if drawn)."""
        if self.image is None:
            self.show_error("Open an image before setting a region of interest")
            return
        x0, x1 = sorted((float(x0), float(x1)))
        y0, y1 = sorted((float(y0), float(y1)))
        if self.selector is not None:
            self.selector.extents = (x0, x1, y0, y1)
            self.selector.set_visible(True)
        self._set_roi(x0, y0, x1, y1)
        self._redraw()

    @Slot()
    def clear_roi(self) -> None:
        """Forget the ROI: the next job searches the whole image."""
        self._roi = None
        if self.selector is not None:
            self.selector.clear()
        self.roi_label.setText("ROI: whole image")
        self._redraw()

    def roi_pixels(self) -> tuple[float, float, float, float] | None:
        """The ROI as drawn, in image pixels (x0, y0, x1, y1); None for the whole image."""
        return self._roi

    def roi_parameters(self) -> dict[str, str]:
        """RA, DEC (deg, image frame) of the ROI centre and WIDTH, HEIGHT in pixels;
        empty when there is no ROI."""
        if self._roi is None or self.image is None:
            return {}
        return roi_parameters(self.image.wcs, *self._roi)

    # ------------------------------------------------------------------ jobs

    def is_busy(self) -> bool:
        """True while a submission runs in its background thread."""
        return self._thread is not None

    @Slot()
    def submit(self) -> bool:
        """Start a job on the shown image with the form and ROI; False when it cannot
        start (the reason is shown)."""
        if self.is_busy():
            self.show_error("A job is already running")
            return False
        if self.image is None:
            self.show_error("Open a FITS image first")
            return False
        if self.form is None:
            self.show_error("No model available: is the service reachable? (File → Reload)")
            return False
        params = {**self.form_parameters(), **self.roi_parameters()}
        try:
            stat = self.image.path.stat()
        except OSError as exc:
            self.show_error(f"Cannot read {self.image.path}: {exc}")
            return False
        self._upload_total = max(1, stat.st_size)
        self._upload_key = (str(self.image.path.resolve()), stat.st_mtime_ns, stat.st_size)
        upload_id = self.upload_ids.get(self._upload_key)
        self.last_submission_sent_image = False
        self.job = None
        self.job_id = None
        self._set_exports_enabled(False)
        self._show_progress("reusing the upload" if upload_id else "upload %p%", 0)
        self.phase_label.setText("Submitting…" if upload_id else "Uploading…")
        self.show_info(f"Submitting {self.image.path.name} with {params}")
        self.submit_button.setEnabled(False)

        thread = QThread(self)
        worker = JobWorker(
            self.client,
            self.image.path,
            params,
            use_uploads=self.uploads_supported,
            upload_id=upload_id,
        )
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.uploaded.connect(self._on_uploaded)
        worker.stored.connect(self._on_stored)
        worker.phase.connect(self._on_phase)
        worker.progressed.connect(self._on_progress)
        worker.done.connect(self._on_done)
        worker.failed.connect(self._on_failed)
        worker.done.connect(thread.quit)
        worker.failed.connect(thread.quit)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        thread.start()
        return True

    def _show_progress(self, text: str, value: int) -> None:
        """Set the progress bar (``text`` may hold Qt's ``%p``) and announce it."""
        value = max(0, min(1000, value))
        if self.progress.format() != text or self.progress.value() != value:
            self.progress.setFormat(text)
            self.progress.setValue(value)
            self.progressChanged.emit(text, value)

    @Slot(int)
    def _on_uploaded(self, nbytes: int) -> None:
        self.last_submission_sent_image = True
        self._show_progress("upload %p%", int(1000 * nbytes / self._upload_total))

    @Slot(str)
    def _on_stored(self, upload_id: str) -> None:
        if not upload_id:
            self.uploads_supported = False
        elif self._upload_key is not None:
            self.upload_ids[self._upload_key] = upload_id

    @Slot(str, str)
    def _on_phase(self, job_id: str, phase: str) -> None:
        self.job_id = job_id
        self.phase_label.setText(f"Job {job_id}: {phase}")

    @Slot(str, str, object)
    def _on_progress(self, job_id: str, phase: str, progress: object) -> None:
        if phase not in ("QUEUED", "EXECUTING"):
            self._show_progress(phase, 1000)
            return
        job_progress = progress if isinstance(progress, Progress) else None
        text = progress_text(phase, job_progress).replace("%", "%%")
        self._show_progress(text, int(1000 * progress_fraction(phase, job_progress)))

    @Slot(str, object, bytes)
    def _on_done(self, job_id: str, job: object, votable: bytes) -> None:
        assert isinstance(job, Job)
        self.job_id, self.job = job_id, job
        self.phase_label.setText(f"Job {job_id}: {job.phase}")
        cached = f" (results of job {job.cached_from})" if job.cached_from else ""
        self._show_progress(job.phase + cached, 1000)
        if job.phase != "COMPLETED":
            reason = job.error_summary.message if job.error_summary else "no reason given"
            self.show_error(f"Job {job_id} ended {job.phase}: {reason}")
        else:
            try:
                catalogue = parse_catalogue(bytes(votable))
            except Exception as exc:
                self.show_error(f"Job {job_id}: unreadable catalogue ({exc})")
            else:
                self.show_catalogue(catalogue)
                self.show_info(f"Job {job_id} COMPLETED: {len(catalogue)} sources")
            self._set_exports_enabled(True)
        self._finish(job_id)

    @Slot(str, str)
    def _on_failed(self, job_id: str, message: str) -> None:
        if job_id:
            self.job_id = job_id
        self.phase_label.setText(f"Job {job_id}: failed" if job_id else "Submission failed")
        self.show_error(message)
        self._finish(job_id)

    def _finish(self, job_id: str) -> None:
        self.submit_button.setEnabled(True)
        # Announce once the thread has really stopped, so a test may start the next job.
        self._pending_finish = job_id

    @Slot()
    def _on_thread_finished(self) -> None:
        thread, self._thread, self._worker = self._thread, None, None
        if thread is not None:
            thread.wait()
            thread.deleteLater()
        self.jobFinished.emit(self._pending_finish)

    def wait_for_job(self, timeout: float = 60.0) -> bool:
        """Process events until the running job ends; False on timeout."""
        if not self.is_busy():
            return True
        loop = QEventLoop()
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        self.jobFinished.connect(loop.quit)
        timer.start(int(timeout * 1000))
        loop.exec()
        self.jobFinished.disconnect(loop.quit)
        return not self.is_busy()

    # ------------------------------------------------------------------ catalogue

    def show_catalogue(self, catalogue: Catalogue) -> None:
        """Fill the table and draw the sources on the image."""
        self.catalogue = catalogue
        self.table.blockSignals(True)
        self.table.clear()
        self.table.setColumnCount(len(catalogue.names))
        self.table.setHorizontalHeaderLabels(
            [
                f"{n} [{u}]" if u and u != "None" else n
                for n, u in zip(catalogue.names, catalogue.units, strict=True)
            ]
        )
        self.table.setRowCount(len(catalogue))
        for row in range(len(catalogue)):
            for col, name in enumerate(catalogue.names):
                self.table.setItem(row, col, QTableWidgetItem(catalogue.cell(row, name)))
        self.table.resizeColumnsToContents()
        self.table.blockSignals(False)
        self._draw_overlay()

    def _source_xy(self) -> np.ndarray:
        if self.catalogue is None or not {"x", "y"} <= set(self.catalogue.names):
            return np.empty((0, 2))
        return np.column_stack([self.catalogue.column("x"), self.catalogue.column("y")])

    def _draw_overlay(self) -> None:
        if self.axes is None or self.image is None or self.catalogue is None:
            return
        for artist in (self.overlay_artist, self.highlight_artist):
            if artist is not None:
                artist.remove()
        self.overlay_artist = self.highlight_artist = None
        xy = self._source_xy()
        n = len(xy)
        scale = self.image.pixel_scale_arcsec
        names = set(self.catalogue.names)

        def sizes(name: str) -> np.ndarray:
            if name not in names:
                return np.full(n, DEFAULT_MARKER)
            values = self.catalogue.column(name) / scale if self.catalogue else np.zeros(n)
            return np.where(np.isfinite(values) & (values > 0), values, DEFAULT_MARKER)

        widths, heights = sizes("maj"), sizes("min")
        # PA is east of north; with north up and east left that is 90° + PA from +x.
        angles = self.catalogue.column("pa") + 90.0 if "pa" in names else np.zeros(n)
        angles = np.where(np.isfinite(angles), angles, 0.0)
        self.overlay_artist = EllipseCollection(
            widths,
            heights,
            angles,
            units="xy",
            offsets=xy,
            offset_transform=self.axes.transData,
            facecolors="none",
            edgecolors=OVERLAY_COLOUR,
            linewidths=1.2,
        )
        self.axes.add_collection(self.overlay_artist)
        (self.highlight_artist,) = self.axes.plot(
            [],
            [],
            marker="o",
            markersize=22,
            markerfacecolor="none",
            markeredgecolor=HIGHLIGHT_COLOUR,
            markeredgewidth=2.5,
            linestyle="none",
        )
        self._redraw()

    def select_source(self, row: int) -> None:
        """Select catalogue row ``row`` in the table (and so highlight it)."""
        self.table.selectRow(row)

    def selected_source(self) -> int | None:
        """The selected catalogue row (0-based), or None."""
        rows = self.table.selectionModel().selectedRows()
        return rows[0].row() if rows else None

    @Slot()
    def _on_row_selected(self) -> None:
        row = self.selected_source()
        if self.highlight_artist is None:
            return
        xy = self._source_xy()
        if row is None or not 0 <= row < len(xy):
            self.highlight_artist.set_data([], [])
        else:
            x, y = xy[row]
            self.highlight_artist.set_data([x], [y])
            self.statusBar().showMessage(f"Source row {row + 1}: x={x:.2f}, y={y:.2f}")
        self._redraw()

    def _on_click(self, event: Event) -> None:
        """A right-click on the image selects the nearest source within reach."""
        if not isinstance(event, MouseEvent) or event.button != 3 or self.axes is None:
            return
        if event.inaxes is not self.axes or event.x is None or event.y is None:
            return
        xy = self._source_xy()
        if len(xy) == 0:
            return
        screen = self.axes.transData.transform(xy)
        distance = np.hypot(screen[:, 0] - event.x, screen[:, 1] - event.y)
        distance = np.where(np.isfinite(distance), distance, np.inf)
        nearest = int(np.argmin(distance))
        if distance[nearest] <= PICK_RADIUS:
            self.select_source(nearest)
            item = self.table.item(nearest, 0)
            if item is not None:
                self.table.scrollToItem(item)

    # ------------------------------------------------------------------ export / SAMP

    def _set_exports_enabled(self, enabled: bool) -> None:
        for button in (self.export_votable_button, self.export_csv_button, self.export_ds9_button):
            button.setEnabled(enabled)

    def _export_dialog(self, result_id: str, suffix: str) -> None:
        if self.job_id is None:
            self.show_error("No job to export yet")
            return
        path, _ = QFileDialog.getSaveFileName(
            self, f"Save {result_id}", f"{self.job_id}-{result_id}.{suffix}"
        )
        if path:
            self.export(result_id, Path(path))

    def export(self, result_id: str, path: Path) -> bool:
        """Save result ``result_id`` (``result``, ``csv``, ``ds9`` ...) of the current job
        to ``path``; False (and an error message) when it cannot."""
        if self.job_id is None:
            self.show_error("No job to export yet")
            return False
        try:
            size = self.client.download_result(self.job_id, result_id, Path(path))
        except Exception as exc:
            self.show_error(f"Export of {result_id} failed: {describe_error(exc)}")
            return False
        self.show_info(f"Saved {result_id} to {path} ({size} bytes)")
        return True

    def result_url(self, result_id: str = "result") -> str | None:
        """The service URL of a result of the current job, when there is one."""
        if self.job is None:
            return None
        ref = self.job.result(result_id)
        if ref is None:
            return None
        return ref.href or f"{self.client.url}/jobs/{self.job.job_id}/results/{result_id}"

    def samp_table_name(self) -> str | None:
        """The name the current job's catalogue gets in TOPCAT or Aladin: the image it was
        found in, the job and its model (None without a job)."""
        if self.job is None:
            return None
        image = self.job.image or (self.image.path.name if self.image is not None else None)
        params = {k.lower(): v for k, v in self.job.parameters.items()}
        return catalogue_name(image, self.job.job_id, params.get("model"))

    @Slot()
    def send_to_samp(self) -> bool:
        """Broadcast the catalogue URL and the image file to SAMP clients, each named so
        that the receiving tool lists it by image and job."""
        image = self.image.path if self.image is not None else None
        table_url = self.result_url()
        try:
            sent = self.samp.broadcast(
                table_url,
                image,
                hub_params=self.samp_hub_params,
                table_name=self.samp_table_name(),
                table_id=table_url,
            )
        except SAMPSendError as exc:
            self.show_error(f"SAMP: {exc}")
            return False
        except Exception as exc:  # the user must never lose the window over SAMP
            self.show_error(f"SAMP: {describe_error(exc)}")
            return False
        self.show_info(f"SAMP: sent {', '.join(sent)}")
        return True

    # ------------------------------------------------------------------ lifecycle

    def closeEvent(self, event: Any) -> None:
        """Qt's close handler: stop a running submission's thread (waiting up to 2 s) and
        leave the SAMP hub before the window closes."""
        if self._thread is not None:
            self._thread.quit()
            self._thread.wait(2000)
        self.samp.close()
        super().closeEvent(event)


#: Exit code of :func:`run_gui` when Qt cannot open a window here (as the CLI's usage errors).
EXIT_NO_WINDOW = 2


def run_gui(client: OTFClient, image: Path | None = None) -> int:
    """Show the main window (with ``image`` open when given); return the exit code.

    Before Qt loads its platform plugin, :func:`~astro_otf.gui.platform.platform_problem`
    checks that it can: without the system libraries of the xcb plugin, or without a
    display, this prints what is missing (and how to install it) to stderr and returns
    :data:`EXIT_NO_WINDOW`, where Qt itself would print a paragraph and abort."""
    app = QApplication.instance()
    if app is None:
        problem = platform_problem()
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_NO_WINDOW
        app = QApplication(sys.argv[:1])
    window = MainWindow(client)
    if image is not None:
        window.open_image(Path(image))
    window.show()
    return int(app.exec())
