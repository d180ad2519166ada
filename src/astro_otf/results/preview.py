"""A PNG quick-look of the searched image with the detections drawn on it, drawn on demand.

A scientist's first question about a catalogue is whether the finder found what the eye
sees, and a picture answers it before any file is downloaded. But most jobs' previews are
never looked at, and drawing one cost a worker 0.3-0.5 s (a third to a half of a small job).
So a worker only writes the preview's *plan* (:func:`write_plan`: which HDU, which region of
the input image was searched), a few hundred bytes listed as the ``preview`` result; the
service draws the PNG from the job's input image and its catalogue (``catalogue.json``) the
first time a client asks for it (:func:`draw_from_plan`), and keeps it beside the plan.

The drawing is cheap on purpose: Pillow, not matplotlib; an image larger than ``max_side``
pixels on a side is shown by every k-th pixel (basic slicing of a memory-mapped image reads
only those rows from disk); the asinh stretch's limits come from a sample of the shown
pixels; one palette image (1 byte a pixel) compressed at level 1; sources drawn as ellipse
outlines (polygons) or, when tiny, as markers; one line of text for the coordinates.
Blank (all-NaN) and constant images still give a picture rather than an error.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import io
import json
import math
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import astropy.units as u
import numpy as np
from astropy.coordinates import Galactic, SkyCoord
from astropy.table import Table
from PIL import Image, ImageDraw, ImageFont

from astro_otf.imaging.fits import SkyImage, load_image
from astro_otf.results.catalogue import Catalogue, float_column
from astro_otf.results.formats import write_atomically

__all__ = [
    "PLAN_SUFFIX",
    "PreviewCache",
    "PreviewPlan",
    "PreviewUnavailable",
    "display_shape",
    "draw_from_plan",
    "draw_preview",
    "is_plan",
    "png_path",
    "write_plan",
    "write_preview",
]

#: The preview's plan is listed under a name ending with this (``preview.plan.json``).
PLAN_SUFFIX = ".plan.json"
#: An image larger than this on a side is shown by every k-th pixel (the PNG's cost is
#: mostly deflating its pixels: 1024 on a side took twice as long as 800).
MAX_SIDE = 800
#: Percentage of the finite pixels between the display limits.
PERCENTILE = 99.5
#: At most this many pixels are sorted to find the display limits.
STRETCH_SAMPLE = 1 << 16
#: Softening of the asinh stretch (astropy's AsinhStretch default).
ASINH_A = 0.1
#: A small image is enlarged by a whole factor until its longer side is at least this.
MIN_SIDE = 512
#: Smallest drawn radius of a detection, in displayed pixels, so that each shows.
MIN_RADIUS_DISPLAY_PIX = 1.5
#: Radius in image pixels of a detection whose size is unknown and with no beam.
DEFAULT_RADIUS_PIX = 5.0
#: Vertices of each large ellipse's outline.
ELLIPSE_VERTICES = 36
#: Height of the caption strip under the image, in pixels.
CAPTION_HEIGHT = 34
OVERLAY_RGB = (0x00, 0xE5, 0xFF)
BLANK_RGB = (140, 140, 140)
CAPTION_RGB = (235, 235, 235)
# Palette indices: 0..LEVELS-1 the colour map, then blank pixels, overlay, caption text.
LEVELS = 252
BLANK_INDEX, OVERLAY_INDEX, TEXT_INDEX, BACKGROUND_INDEX = 252, 253, 254, 255


class PreviewUnavailable(Exception):
    """The preview cannot be drawn (the input image or catalogue is gone or unreadable)."""


# -- the plan a worker writes ---------------------------------------------------------------


@dataclass(frozen=True)
class PreviewPlan:
    """What the service needs to draw a job's preview later: the image HDU the worker read,
    the searched region in that image's pixels, and the catalogue file to overlay."""

    hdu_index: int
    x0: int
    y0: int
    width: int
    height: int
    catalogue: str = "catalogue.json"

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "astro-otf preview plan 1",
                "hdu_index": self.hdu_index,
                "region": [self.x0, self.y0, self.width, self.height],
                "catalogue": self.catalogue,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PreviewPlan:
        doc = json.loads(text)
        x0, y0, width, height = (int(v) for v in doc["region"])
        catalogue = str(doc.get("catalogue", "catalogue.json"))
        if "/" in catalogue or "\\" in catalogue or catalogue.startswith("."):
            raise ValueError(f"the plan names an odd catalogue file {catalogue!r}")
        return cls(int(doc["hdu_index"]), x0, y0, width, height, catalogue)


def is_plan(filename: str) -> bool:
    """Whether a listed result file is a preview plan (drawn into a PNG on demand)."""
    return filename.endswith(PLAN_SUFFIX)


def png_path(plan_path: Path) -> Path:
    """Where the PNG drawn from the plan at ``plan_path`` is kept."""
    return plan_path.with_name(plan_path.name.removesuffix(PLAN_SUFFIX) + ".png")


def write_plan(image: SkyImage, path: Path, *, catalogue: str = "catalogue.json") -> Path:
    """Write the plan of the preview of the searched ``image`` (a cut-out or the whole
    loaded image) at ``path``; returns ``path``."""
    ny, nx = image.shape
    plan = PreviewPlan(image.hdu_index, image.origin[0], image.origin[1], nx, ny, catalogue)
    write_atomically(Path(path), plan.to_json().encode("utf-8"))
    return Path(path)


def draw_from_plan(
    plan_path: Path, image_path: Path, out: Path, *, max_side: int = MAX_SIDE
) -> Path:
    """Draw the PNG of the plan at ``plan_path`` from the input image at ``image_path`` and
    the catalogue beside the plan; written at ``out`` (under a temporary name first).

    Raises :class:`PreviewUnavailable` saying why when a file is missing or unreadable.
    """
    try:
        plan = PreviewPlan.from_json(Path(plan_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PreviewUnavailable("the preview's plan is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PreviewUnavailable(f"the preview's plan cannot be read: {exc}") from None
    try:
        loaded = load_image(Path(image_path))
    except Exception as exc:  # JobFailure (a message for people), OSError, ...
        text = getattr(exc, "message", None) or str(exc)
        raise PreviewUnavailable(f"the job's input image cannot be read: {text}") from None
    if loaded.hdu_index != plan.hdu_index:
        raise PreviewUnavailable(
            f"the input image's HDU {loaded.hdu_index} is not the one searched ({plan.hdu_index})"
        )
    ny, nx = loaded.shape
    x0, y0 = plan.x0 - loaded.origin[0], plan.y0 - loaded.origin[1]
    if not (0 <= x0 < nx and 0 <= y0 < ny and plan.width > 0 and plan.height > 0):
        raise PreviewUnavailable("the searched region lies outside the input image")
    x1, y1 = min(nx, x0 + plan.width), min(ny, y0 + plan.height)
    image = SkyImage(
        data=loaded.data[y0:y1, x0:x1],  # a view: the memory map is read by stride later
        wcs=loaded.wcs.slice((slice(y0, y1), slice(x0, x1))),
        header=loaded.header,
        hdu_index=loaded.hdu_index,
        origin=(plan.x0, plan.y0),
    )
    table = read_catalogue_json(Path(plan_path).with_name(plan.catalogue))
    return draw_preview(image, table, out, max_side=max_side)


class PreviewCache:
    """Draws each preview once, on its first request, and keeps it beside its plan.

    Concurrent requests for one preview in this process wait on one asyncio lock (without
    a thread each); the drawing runs in a worker thread, never on the event loop, under an
    exclusive ``flock`` of the plan file, so that service replicas sharing the data folder
    also draw it once. ``draws`` counts the previews this cache drew.
    """

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[Path, asyncio.Lock] = weakref.WeakValueDictionary()
        self.draws = 0

    async def png(self, plan_path: Path, image_path: Path) -> Path:
        """The PNG of the plan at ``plan_path``, drawn from ``image_path`` if not yet drawn.

        Raises :class:`PreviewUnavailable` (or the drawing's own error) when it cannot be.
        """
        png = png_path(plan_path)
        if await anyio.to_thread.run_sync(png.is_file):
            return png
        lock = self._locks.get(plan_path)
        if lock is None:
            lock = self._locks[plan_path] = asyncio.Lock()
        async with lock:
            return await anyio.to_thread.run_sync(self._draw_once, plan_path, image_path, png)

    def _draw_once(self, plan_path: Path, image_path: Path, png: Path) -> Path:
        try:
            handle = plan_path.open("rb")
        except FileNotFoundError:
            raise PreviewUnavailable(
                "the preview's plan is missing (was the job deleted?)"
            ) from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
            if not png.is_file():
                draw_from_plan(plan_path, image_path, png)
                self.draws += 1
        return png


#: The catalogue columns the drawing uses.
_DRAWN_COLUMNS = ("ra", "dec", "x", "y", "maj", "min", "pa")


def read_catalogue_json(path: Path) -> Table:
    """The drawn columns of a catalogue written by ``write_json`` (null -> NaN)."""
    try:
        doc = json.loads(path.read_bytes())
        names = [c["name"] for c in doc["columns"]]
        rows = doc["rows"]
    except FileNotFoundError:
        raise PreviewUnavailable(f"the catalogue {path.name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PreviewUnavailable(f"the catalogue {path.name} cannot be read: {exc}") from None
    columns: dict[str, Any] = {}
    for name in _DRAWN_COLUMNS:
        if name in names:
            i = names.index(name)
            columns[name] = np.array([row[i] for row in rows], dtype=float)  # null -> NaN
    return Table(columns)


# -- the drawing ----------------------------------------------------------------------------


def write_preview(
    catalogue: Catalogue, image: SkyImage, path: Path, *, max_side: int = MAX_SIDE
) -> Path:
    """Draw ``image`` with the sources of ``catalogue`` over it as a PNG at ``path`` (see
    :func:`draw_preview`)."""
    return draw_preview(image, catalogue.table, path, max_side=max_side)


def draw_preview(image: SkyImage, table: Table, path: Path, *, max_side: int = MAX_SIDE) -> Path:
    """Draw ``image`` with the sources of ``table`` over it as a PNG at ``path``.

    ``image`` is the image that was searched (the cut-out when a region of interest was
    asked for); the table's ``x``/``y`` are pixels of the uploaded image, so
    ``image.origin`` is subtracted from them (a source without them is placed from its
    ``ra``/``dec``). The image is shown with an asinh stretch between the limits of the
    central 99.5 % of its finite pixels (blank pixels grey), north up as the pixels lie.
    Sources with ``maj``, ``min`` and ``pa`` are ellipses of those FWHM axes; others are
    circles of the beam's major axis (5 pixels without a beam). When the image is larger
    than ``max_side`` on a side only every k-th pixel is read and shown (:func:`_stride`);
    a small one is enlarged by a whole factor. Under the image, one caption line: the
    number of sources, the frame and the sky position of the centre and the field size.
    The file is written under a temporary name and renamed into place; returns ``path``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    ny, nx = image.shape
    k = _stride((ny, nx), max_side)
    # Basic slicing of a memory-mapped array reads only the strided rows from disk.
    data = np.array(image.data[::k, ::k], dtype=np.float32)
    zoom = _zoom(data.shape)
    indices = _colour_indices(data)[::-1]  # row 0 of a PNG is the top: north up
    if zoom > 1:
        indices = np.repeat(np.repeat(indices, zoom, axis=0), zoom, axis=1)
    height, width = indices.shape
    canvas = np.full((height + CAPTION_HEIGHT, max(width, 1)), BACKGROUND_INDEX, dtype=np.uint8)
    canvas[:height, :width] = indices
    n_drawn, polygons = _overlay(canvas[:height, :width], table, image, k, zoom)
    picture = Image.fromarray(canvas, mode="P")
    picture.putpalette(_palette())
    draw = ImageDraw.Draw(picture)
    for outline in polygons:
        draw.line(outline, fill=OVERLAY_INDEX)
    n = len(table)
    caption = f"{n} source{'s' if n != 1 else ''}"
    if n_drawn != n:
        caption += f" ({n_drawn} drawn)"
    if k > 1:
        caption += f"; every {_ordinal(k)} pixel shown"
    draw.text((4, height + 3), caption, fill=TEXT_INDEX, font=_font())
    draw.text((4, height + 18), _where(image), fill=TEXT_INDEX, font=_font())
    buffer = _png_bytes(picture)
    write_atomically(Path(path), buffer)
    return Path(path)


def display_shape(shape: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(height, width) in pixels of the PNG of an image of ``shape`` (ny, nx)."""
    ny, nx = max(int(shape[0]), 0), max(int(shape[1]), 0)
    k = _stride((ny, nx), max_side)
    sy, sx = len(range(0, ny, k)), len(range(0, nx, k))
    zoom = _zoom((sy, sx))
    return sy * zoom + CAPTION_HEIGHT, max(sx * zoom, 1)


def _stride(shape: tuple[int, int], max_side: int) -> int:
    """The step k such that every k-th pixel of an image of ``shape`` is at most
    ``max_side`` pixels on a side (1 when it already is)."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return max(1, math.ceil(longest / max(1, max_side)))


def _zoom(shape: tuple[int, ...]) -> int:
    """The whole factor that brings the longer side of a small image to ``MIN_SIDE``."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return max(1, MIN_SIDE // longest)


def _limits(data: np.ndarray) -> tuple[float, float]:
    """Display limits: the central ``PERCENTILE`` % of a sample of the finite pixels; the
    full range when most are equal; around the one value of a constant image."""
    step = max(1, math.isqrt(data.size // STRETCH_SAMPLE))
    sample = data[::step, ::step].ravel()
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    cut = (100.0 - PERCENTILE) / 200.0
    lo, hi = (round(q * (finite.size - 1)) for q in (cut, 1.0 - cut))
    part = np.partition(finite, (lo, hi))
    vmin, vmax = float(part[lo]), float(part[hi])
    if not vmax > vmin:  # most pixels equal: use the full range
        vmin, vmax = float(finite.min()), float(finite.max())
    if not vmax > vmin:  # a constant image: mid-grey around its value
        spread = abs(vmin) if vmin != 0.0 else 1.0
        vmin, vmax = vmin - spread, vmax + spread
    return vmin, vmax


def _colour_indices(data: np.ndarray) -> np.ndarray:
    """Palette indices of the pixels: the asinh-stretched value, or the blank colour."""
    vmin, vmax = _limits(data)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scaled = (data - np.float32(vmin)) * np.float32(1.0 / (vmax - vmin))
        np.clip(scaled, 0.0, 1.0, out=scaled)
        stretched = np.arcsinh(scaled / np.float32(ASINH_A)) * np.float32(
            (LEVELS - 1) / math.asinh(1.0 / ASINH_A)
        )
    blank = ~np.isfinite(stretched)
    stretched[blank] = 0.0
    indices = (stretched + 0.5).astype(np.uint8)
    indices[blank] = BLANK_INDEX
    return indices


@functools.cache
def _palette() -> list[int]:
    """The inferno colour map in ``LEVELS`` steps, then the blank, overlay, text and
    background colours (built once per process)."""
    from matplotlib import colormaps  # the colour table only: no figure is made

    lut = colormaps["inferno"](np.linspace(0.0, 1.0, LEVELS))[:, :3]
    rgb = [round(v * 255) for v in lut.ravel()]
    return [*rgb, *BLANK_RGB, *OVERLAY_RGB, *CAPTION_RGB, 0, 0, 0]


@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default()


def _png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _overlay(canvas: np.ndarray, table: Table, image: SkyImage, k: int, zoom: int) -> Overlay:
    """Draw the detections on ``canvas`` (palette indices, north up, the image's display
    pixels): a 5-pixel cross for a source too small to show as a ring, a ring of sampled
    points for a small ellipse (all at once, in numpy), and the outline of each large one
    as a polygon for Pillow (returned, with how many sources were drawn)."""
    if len(table) == 0:
        return 0, []
    geometry = overlay_geometry(table, image)
    if geometry is None:
        return 0, []
    x, y, widths, heights, angles = geometry
    rows = canvas.shape[0]
    # Image pixel (x, y) is at display column x/k*zoom + (zoom-1)/2 and, north up, at
    # display row (strided rows - 1 - y/k)*zoom + (zoom-1)/2.
    scale = zoom / k
    cx = x * scale + (zoom - 1) / 2.0
    cy = rows - 1 - y * scale - (zoom - 1) / 2.0
    a = np.maximum(widths * scale / 2.0, MIN_RADIUS_DISPLAY_PIX)
    b = np.maximum(heights * scale / 2.0, MIN_RADIUS_DISPLAY_PIX)
    theta = np.radians(angles)
    radius = np.maximum(a, b)
    tiny = radius <= 2.5
    ring = ~tiny & (radius <= RING_MAX_RADIUS)
    if np.any(tiny):
        arm = np.arange(-2, 3)
        px = np.concatenate([cx[tiny, None] + arm, np.repeat(cx[tiny, None], 5, axis=1)], 1)
        py = np.concatenate([np.repeat(cy[tiny, None], 5, axis=1), cy[tiny, None] + arm], 1)
        _plot(canvas, px, py)
    if np.any(ring):
        px, py = _outline(cx[ring], cy[ring], a[ring], b[ring], theta[ring], RING_SAMPLES)
        _plot(canvas, px, py)
    big = ~(tiny | ring)
    polygons: list[list[tuple[float, float]]] = []
    if np.any(big):
        px, py = _outline(cx[big], cy[big], a[big], b[big], theta[big], ELLIPSE_VERTICES + 1)
        polygons = [
            list(zip(u_, v_, strict=True)) for u_, v_ in zip(px.tolist(), py.tolist(), strict=True)
        ]
    return len(x), polygons


#: How many sources were drawn, and the outlines of the large ones (display pixels).
Overlay = tuple[int, list[list[tuple[float, float]]]]
#: Ellipses up to this radius (display pixels) are drawn as rings of RING_SAMPLES points,
#: under one pixel apart (2 pi 12 < 80).
RING_MAX_RADIUS = 12.0
RING_SAMPLES = 80


def _outline(
    cx: np.ndarray, cy: np.ndarray, a: np.ndarray, b: np.ndarray, theta: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray]:
    """``m`` points (closed) on each ellipse of semi-axes a, b at angle theta (radians,
    anticlockwise from +x, y up) around (cx, cy) in display pixels (rows down)."""
    phi = np.linspace(0.0, 2.0 * math.pi, m)
    cos_p, sin_p = np.cos(phi)[None, :], np.sin(phi)[None, :]
    cos_t, sin_t = np.cos(theta)[:, None], np.sin(theta)[:, None]
    a, b = a[:, None], b[:, None]
    px = cx[:, None] + a * cos_p * cos_t - b * sin_p * sin_t
    py = cy[:, None] - (a * cos_p * sin_t + b * sin_p * cos_t)
    return px, py


def _plot(canvas: np.ndarray, px: np.ndarray, py: np.ndarray) -> None:
    """Set the canvas pixels nearest to the points (px, py) inside it to the overlay."""
    cols = np.rint(px).astype(np.int64).ravel()
    rows = np.rint(py).astype(np.int64).ravel()
    inside = (cols >= 0) & (cols < canvas.shape[1]) & (rows >= 0) & (rows < canvas.shape[0])
    canvas[rows[inside], cols[inside]] = OVERLAY_INDEX


def overlay_geometry(
    table: Table, image: SkyImage
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Each drawable source's centre in the pixels of ``image``, its full axes in those
    pixels and its major axis's angle in degrees anticlockwise from +x; None when none."""
    x = float_column(table, "x") - image.origin[0]
    y = float_column(table, "y") - image.origin[1]
    ra, dec = float_column(table, "ra"), float_column(table, "dec")
    # A source without pixel coordinates is placed from its sky position.
    missing = ~(np.isfinite(x) & np.isfinite(y)) & np.isfinite(ra) & np.isfinite(dec)
    if np.any(missing):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sky = SkyCoord(ra[missing] * u.deg, dec[missing] * u.deg, frame="icrs")
            px, py = image.wcs.world_to_pixel(sky)
        x[missing], y[missing] = np.asarray(px, dtype=float), np.asarray(py, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if not np.any(keep):
        return None
    scale = image.pixel_scale_arcsec
    maj = float_column(table, "maj") / scale
    minor = float_column(table, "min") / scale
    pa = float_column(table, "pa")
    beam_pix = image.beam_major_pix
    fallback = beam_pix if beam_pix is not None else 2.0 * DEFAULT_RADIUS_PIX
    with np.errstate(invalid="ignore"):
        ellipse = np.isfinite(maj) & np.isfinite(minor) & np.isfinite(pa) & (maj > 0) & (minor > 0)
    widths = np.where(ellipse, maj, fallback)
    heights = np.where(ellipse, minor, fallback)
    angles = np.zeros(len(x))
    if np.any(ellipse & keep):
        angles = np.nan_to_num(np.where(ellipse, _pixel_angles(image, x, y, pa), 0.0))
    return x[keep], y[keep], widths[keep], heights[keep], angles[keep]


def _pixel_angles(image: SkyImage, x: np.ndarray, y: np.ndarray, pa: np.ndarray) -> np.ndarray:
    """The angle in degrees (0 to 360), anticlockwise from the +x pixel axis, of the direction at
    position angle ``pa`` (east of ICRS north) from each pixel (x, y); NaN where unknown.

    Taken from the WCS at each source (one vectorised transform for all), so rotated,
    flipped and Galactic images are right.
    """
    angles = np.full(x.shape, np.nan)
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(pa)
    if not np.any(good):
        return angles
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centre = image.wcs.pixel_to_world(x[good], y[good]).icrs
        step = max(image.pixel_scale_arcsec, 1e-6) * u.arcsec
        ahead = centre.directional_offset_by(pa[good] * u.deg, step)
        ax_, ay_ = image.wcs.world_to_pixel(ahead)
    dx = np.asarray(ax_, dtype=float) - x[good]
    dy = np.asarray(ay_, dtype=float) - y[good]
    angles[good] = np.degrees(np.arctan2(dy, dx)) % 360.0
    return angles


def _where(image: SkyImage) -> str:
    """The caption's coordinate line: the frame, the sky position of the centre and the
    field size, e.g. "ICRS centre RA 12:34:56.7 Dec +12:34:56; 8.5' x 8.5'"."""
    ny, nx = image.shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            centre = image.wcs.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
            frame = image.frame
        scale = image.pixel_scale_arcsec
    except Exception:  # an odd WCS: the picture is still worth having
        return ""
    size = f"{_angle_text(nx * scale)} x {_angle_text(ny * scale)}"
    if isinstance(frame, Galactic):
        gal = centre.galactic
        return f"Galactic centre l {gal.l.deg:.4f} b {gal.b.deg:+.4f}; {size}"
    name = frame.name.upper()
    ra = centre.spherical.lon.to_string(unit=u.hourangle, sep=":", precision=1, pad=True)
    dec = centre.spherical.lat.to_string(
        unit=u.deg, sep=":", precision=0, alwayssign=True, pad=True
    )
    return f"{name} centre RA {ra} Dec {dec}; {size}"


def _angle_text(arcsec: float) -> str:
    if arcsec >= 3600:
        return f"{arcsec / 3600:.3g} deg"
    if arcsec >= 60:
        return f"{arcsec / 60:.3g}'"
    return f'{arcsec:.3g}"'


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
