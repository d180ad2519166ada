"""A PNG quick-look of the searched image with the detections drawn on it, drawn on demand.

A scientist's first question about a catalogue is whether the finder found what the eye
sees, and a picture answers it before any file is downloaded. But most jobs' previews are
never looked at, and drawing one cost a worker 0.3-0.5 s (a third to a half of a small job).
So a worker only writes the preview's *plan* (:func:`write_plan`: which HDU, which region of
the input image was searched), a few hundred bytes listed as the ``preview`` result; the
service draws the PNG from the job's input image and its catalogue (``catalogue.json``) the
first time a client asks for it (:func:`draw_from_plan`), and keeps it beside the plan.

A radio image is mostly noise with a few sources a handful of sigma above it, so the
display limits come from the image's own noise (median and a robust sigma from the pixels
below the median, which sources do not reach): the background is dark and an 8-sigma
point source white, where limits from the extreme percentiles of the pixels made the noise
as bright as the sources. When bright (extended) emission reaches far above the noise, the
range above a few sigma is compressed by an asinh stretch instead of saturated. The axes
are labelled as the catalogue is, in ICRS right ascension and declination, whatever the
image's own frame (FK5, Galactic, ...).

The drawing is cheap on purpose: Pillow, not matplotlib; an image larger than ``max_side``
pixels on a side is shown by every k-th pixel (basic slicing of a memory-mapped image reads
only those rows from disk); the display limits come from a sample of the shown pixels; one
palette image (1 byte a pixel) compressed at level 1; sources drawn as ellipse outlines
(polygons) or, when tiny, as markers; the axes' ticks from a few hundred WCS transforms of
points on the image's edges; Pillow's own font. Blank (all-NaN) and constant images still
give a picture rather than an error.
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
from astropy.visualization import ZScaleInterval
from PIL import Image, ImageDraw, ImageFont

from astro_otf.imaging.fits import SkyImage, load_image
from astro_otf.results.catalogue import Catalogue, float_column
from astro_otf.results.formats import write_atomically

__all__ = [
    "PLAN_SUFFIX",
    "PreviewCache",
    "PreviewPlan",
    "PreviewUnavailable",
    "axis_ticks",
    "display_shape",
    "draw_from_plan",
    "draw_preview",
    "image_box",
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
#: The display stretches: ``noise`` (the default) from the image's noise, ``zscale`` (IRAF's
#: zscale limits, linear), ``percentile`` (the central PERCENTILE % of the pixels, asinh).
STRETCHES = ("noise", "zscale", "percentile")
DEFAULT_STRETCH = "noise"
#: ``noise``: the limits are the median minus NOISE_BELOW and plus NOISE_ABOVE robust sigma
#: (linear between), so the noise is a dark texture and a source above ~6 sigma is white.
NOISE_BELOW = 2.0
NOISE_ABOVE = 6.0
#: ``noise``: when the brightest pixels (the top of the central PERCENTILE %) reach above
#: median + NOISE_ABOVE sigma, the upper limit is raised to them and an asinh stretch shows
#: median + NOISE_ABOVE sigma at this fraction of the colour map (bright emission is
#: compressed, not saturated).
NOISE_KNEE = 0.6
#: Percentage of the finite pixels between the display limits (``percentile``; and the
#: reach of the bright emission for ``noise``).
PERCENTILE = 99.5
#: At most this many pixels are sorted to find the display limits.
STRETCH_SAMPLE = 1 << 16
#: Softening of the ``percentile`` asinh stretch (astropy's AsinhStretch default).
ASINH_A = 0.1
#: A small image is enlarged by a whole factor until its longer side is at least this.
MIN_SIDE = 512
#: Smallest drawn radius of a detection, in displayed pixels, so that each shows.
MIN_RADIUS_DISPLAY_PIX = 1.5
#: Radius in image pixels of a detection whose size is unknown and with no beam.
DEFAULT_RADIUS_PIX = 5.0
#: Vertices of each large ellipse's outline.
ELLIPSE_VERTICES = 36
#: Height of the caption strip under the axes, in pixels.
CAPTION_HEIGHT = 34
#: Margins around the image (pixels): room for the declination (or RA) tick labels and the
#: axis title on the left, the RA (or Dec) labels and title below, half a label right and top.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 90, 36, 10, 38
#: The PNG is at least this wide, so that the caption fits under a narrow image.
MIN_WIDTH = 490
TICK_LENGTH = 4
FONT_SIZE = 11
#: Tick labels along the bottom (left) edge are at least this far apart, in pixels.
TICK_SPACING_X, TICK_SPACING_Y = 80, 50
#: Points sampled along each edge to find where the RA and Dec lines cross it.
EDGE_SAMPLES = 200
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
        """The plan as the JSON document the worker leaves in the results folder."""
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
        """A plan read back; a ValueError (or KeyError) when it names an odd catalogue file
        or lacks a field."""
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
    plan_path: Path,
    image_path: Path,
    out: Path,
    *,
    max_side: int = MAX_SIDE,
    stretch: str = DEFAULT_STRETCH,
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
    return draw_preview(image, table, out, max_side=max_side, stretch=stretch)


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
    catalogue: Catalogue,
    image: SkyImage,
    path: Path,
    *,
    max_side: int = MAX_SIDE,
    stretch: str = DEFAULT_STRETCH,
) -> Path:
    """Draw ``image`` with the sources of ``catalogue`` over it as a PNG at ``path`` (see
    :func:`draw_preview`)."""
    return draw_preview(image, catalogue.table, path, max_side=max_side, stretch=stretch)


def draw_preview(
    image: SkyImage,
    table: Table,
    path: Path,
    *,
    max_side: int = MAX_SIDE,
    stretch: str = DEFAULT_STRETCH,
) -> Path:
    """Draw ``image`` with the sources of ``table`` over it as a PNG at ``path``.

    ``image`` is the image that was searched (the cut-out when a region of interest was
    asked for); the table's ``x``/``y`` are pixels of the uploaded image, so
    ``image.origin`` is subtracted from them (a source without them is placed from its
    ``ra``/``dec``). The image is shown north up as the pixels lie, blank pixels grey, with
    the ``stretch`` of :data:`STRETCHES` (see :func:`_limits`; the default from the image's
    noise). Sources with ``maj``, ``min`` and ``pa`` are ellipses of those FWHM axes; others
    are circles of the beam's major axis (5 pixels without a beam). When the image is larger
    than ``max_side`` on a side only every k-th pixel is read and shown (:func:`_stride`);
    a small one is enlarged by a whole factor. The image is framed by axes with ICRS RA and
    Dec ticks (:func:`_axes`); under them, the number of sources and a line with the ICRS
    position of the centre and the field size. The file is written under a temporary name
    and renamed into place; returns ``path``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    if stretch not in STRETCHES:
        raise ValueError(f"stretch must be one of {', '.join(STRETCHES)}, not {stretch!r}")
    ny, nx = image.shape
    k = _stride((ny, nx), max_side)
    # Basic slicing of a memory-mapped array reads only the strided rows from disk.
    data = np.array(image.data[::k, ::k], dtype=np.float32)
    zoom = _zoom(data.shape)
    indices = _colour_indices(data, stretch)[::-1]  # row 0 of a PNG is the top: north up
    if zoom > 1:
        indices = np.repeat(np.repeat(indices, zoom, axis=0), zoom, axis=1)
    indices = np.ascontiguousarray(indices)
    n_drawn, polygons = _overlay(indices, table, image, k, zoom)
    shown = Image.fromarray(indices, mode="P")
    if polygons:  # drawn on the image alone, so that they stop at its edges
        draw = ImageDraw.Draw(shown)
        for outline in polygons:
            draw.line(outline, fill=OVERLAY_INDEX)
    left, top, width, height = image_box((ny, nx), max_side)
    full_height, full_width = display_shape((ny, nx), max_side)
    picture = Image.new("P", (full_width, full_height), BACKGROUND_INDEX)
    picture.paste(shown, (left, top))
    picture.putpalette(_palette())
    draw = ImageDraw.Draw(picture)
    draw.rectangle((left - 1, top - 1, left + width, top + height), outline=TEXT_INDEX)
    _axes(picture, draw, image, k, zoom, (left, top, width, height))
    n = len(table)
    caption = f"{n} source{'s' if n != 1 else ''}"
    if n_drawn != n:
        caption += f" ({n_drawn} drawn)"
    if k > 1:
        caption += f"; every {_ordinal(k)} pixel shown"
    if stretch != DEFAULT_STRETCH:
        caption += f"; {stretch} stretch"
    below = top + height + MARGIN_BOTTOM
    draw.text((4, below + 3), caption, fill=TEXT_INDEX, font=_font())
    draw.text((4, below + 18), _where(image), fill=TEXT_INDEX, font=_font())
    buffer = _png_bytes(picture)
    write_atomically(Path(path), buffer)
    return Path(path)


def display_shape(shape: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(height, width) in pixels of the PNG of an image of ``shape`` (ny, nx)."""
    left, top, width, height = image_box(shape, max_side)
    return top + height + MARGIN_BOTTOM + CAPTION_HEIGHT, max(
        left + width + MARGIN_RIGHT, MIN_WIDTH
    )


def image_box(shape: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int, int, int]:
    """Where the image of ``shape`` (ny, nx) lies in its PNG: (left, top, width, height)
    in pixels; the axes, their labels and the caption are around it."""
    ny, nx = max(int(shape[0]), 0), max(int(shape[1]), 0)
    k = _stride((ny, nx), max_side)
    sy, sx = len(range(0, ny, k)), len(range(0, nx, k))
    zoom = _zoom((sy, sx))
    return MARGIN_LEFT, MARGIN_TOP, sx * zoom, sy * zoom


def _stride(shape: tuple[int, int], max_side: int) -> int:
    """The step k such that every k-th pixel of an image of ``shape`` is at most
    ``max_side`` pixels on a side (1 when it already is)."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return max(1, math.ceil(longest / max(1, max_side)))


def _zoom(shape: tuple[int, ...]) -> int:
    """The whole factor that brings the longer side of a small image to ``MIN_SIDE``."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return max(1, MIN_SIDE // longest)


#: Display limits (vmin, vmax) and the softening of the asinh stretch between them (None:
#: linear).
Limits = tuple[float, float, float | None]


def _limits(data: np.ndarray, stretch: str = DEFAULT_STRETCH) -> Limits:
    """The display limits of ``data`` for ``stretch``, from a sample of its finite pixels.

    ``noise``: the median ``m`` and a robust sigma ``s`` (1.4826 times the median distance
    below ``m`` of the pixels below it; exact zeros, the blank of many mosaics, left out when
    there are other pixels) give linear limits ``m - 2 s`` to ``m + 6 s``; when the bright
    end of the central PERCENTILE % reaches above ``m + 6 s`` it becomes the upper limit and
    an asinh stretch keeps ``m + 6 s`` at NOISE_KNEE of the colour map. ``zscale``:
    astropy's ZScaleInterval, linear. ``percentile``: the central PERCENTILE %, asinh
    (ASINH_A). A sample without spread (most pixels equal) falls back to ``percentile``,
    then to the full range; a constant image is mid-grey around its value.
    """
    step = max(1, math.isqrt(data.size // STRETCH_SAMPLE))
    sample = data[::step, ::step].ravel()
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0, None
    if stretch == "noise":
        limits = _noise_limits(finite)
        if limits is not None:
            return limits
    elif stretch == "zscale":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lo_z, hi_z = ZScaleInterval().get_limits(finite)
        if float(hi_z) > float(lo_z):
            return float(lo_z), float(hi_z), None
    vmin, vmax = _percentile_range(finite)
    if not vmax > vmin:  # most pixels equal: use the full range
        vmin, vmax = float(finite.min()), float(finite.max())
    if not vmax > vmin:  # a constant image: mid-grey around its value
        spread = abs(vmin) if vmin != 0.0 else 1.0
        vmin, vmax = vmin - spread, vmax + spread
    return vmin, vmax, ASINH_A


def _percentile_range(finite: np.ndarray) -> tuple[float, float]:
    """The limits of the central PERCENTILE % of ``finite`` (a 1-D sample)."""
    cut = (100.0 - PERCENTILE) / 200.0
    lo, hi = (round(q * (finite.size - 1)) for q in (cut, 1.0 - cut))
    part = np.partition(finite, (lo, hi))
    return float(part[lo]), float(part[hi])


def _noise_limits(finite: np.ndarray) -> Limits | None:
    """The ``noise`` limits of a sample of finite pixels (see :func:`_limits`); None when
    its noise cannot be measured (most pixels equal)."""
    values = finite[finite != 0.0]
    if values.size < 16:
        values = finite
    # One partition gives the median and the bright end of the central PERCENTILE %.
    cut = (100.0 - PERCENTILE) / 200.0
    mid, top = values.size // 2, round((1.0 - cut) * (values.size - 1))
    part = np.partition(values, (mid, top))
    median, bright = float(part[mid]), float(part[top])
    below = np.float32(median) - part[:mid]
    below = below[below > 0.0]
    if below.size < 8:
        return None
    sigma = 1.4826 * float(np.partition(below, below.size // 2)[below.size // 2])
    if not (math.isfinite(sigma) and sigma > 0.0):
        return None
    vmin = median - NOISE_BELOW * sigma
    knee = median + NOISE_ABOVE * sigma
    if not knee > vmin:  # sigma lost in the values' precision
        return None
    if not bright > knee:
        return vmin, knee, None
    t = (knee - vmin) / (bright - vmin)  # where the knee lies on a linear scale
    if t >= NOISE_KNEE:
        return vmin, bright, None
    return vmin, bright, _softening(t, NOISE_KNEE)


def _softening(t: float, target: float) -> float:
    """The softening ``a`` with asinh(t / a) / asinh(1 / a) == target (0 < t < target < 1):
    the asinh stretch that shows the fraction ``t`` of the range at ``target``."""
    lo, hi = -12.0, 12.0  # log10(a): from nearly logarithmic to nearly linear
    for _ in range(60):
        mid = (lo + hi) / 2.0
        a = 10.0**mid
        if math.asinh(t / a) / math.asinh(1.0 / a) > target:
            lo = mid  # too compressed: soften less
        else:
            hi = mid
    return float(10.0 ** ((lo + hi) / 2.0))


def _colour_indices(data: np.ndarray, stretch: str = DEFAULT_STRETCH) -> np.ndarray:
    """Palette indices of the pixels: the stretched value, or the blank colour."""
    return _stretched(data, _limits(data, stretch))


def _stretched(data: np.ndarray, limits: Limits) -> np.ndarray:
    """Palette indices of the pixels between ``limits`` (linear, or asinh with the given
    softening), the blank colour where not finite."""
    vmin, vmax, softening = limits
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        scaled = (data - np.float32(vmin)) * np.float32(1.0 / (vmax - vmin))
        np.clip(scaled, 0.0, 1.0, out=scaled)
        if softening is None:
            stretched = scaled * np.float32(LEVELS - 1)
        else:
            stretched = np.arcsinh(scaled * np.float32(1.0 / softening)) * np.float32(
                (LEVELS - 1) / math.asinh(1.0 / softening)
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
    """Pillow's own font (no font file needed): scalable when Pillow has FreeType."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (OSError, ValueError):  # pragma: no cover - a Pillow without FreeType
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
    """The caption's coordinate line: the ICRS position of the centre, the field size and,
    when the image is in another frame, that frame, e.g.
    "ICRS centre RA 12:34:56.7 Dec +12:34:56; 8.5' x 8.5'; image frame FK5"."""
    ny, nx = image.shape
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            centre = image.wcs.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
            frame = image.frame
            icrs = centre.icrs
        scale = image.pixel_scale_arcsec
    except Exception:  # an odd WCS: the picture is still worth having
        return ""
    size = f"{_angle_text(nx * scale)} x {_angle_text(ny * scale)}"
    ra = icrs.ra.to_string(unit=u.hourangle, sep=":", precision=1, pad=True)
    dec = icrs.dec.to_string(unit=u.deg, sep=":", precision=0, alwayssign=True, pad=True)
    text = f"ICRS centre RA {ra} Dec {dec}; {size}"
    if isinstance(frame, Galactic):
        gal = centre.galactic
        text += f"; image frame Galactic (l {gal.l.deg:.4f} b {gal.b.deg:+.4f})"
    elif frame.name != "icrs":
        text += f"; image frame {frame.name.upper()}"
    return text


# -- the axes: ICRS ticks on the image's edges --------------------------------------------

#: Steps between RA ticks, in seconds of time, and between Dec ticks, in arcsec.
RA_STEPS_S: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600)
RA_STEPS_S += (900, 1200, 1800, 3600, 7200, 10800, 14400, 21600, 43200)
DEC_STEPS_AS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600)
DEC_STEPS_AS += (900, 1200, 1800, 3600, 7200, 18000, 36000, 54000, 72000, 108000, 162000)


@dataclass(frozen=True)
class Tick:
    """One tick on an edge: its place along the edge (display pixels from the image's left
    or top) and its label."""

    at: float
    label: str


def axis_ticks(
    image: SkyImage, k: int, zoom: int, length: tuple[int, int]
) -> tuple[tuple[str, list[Tick]], tuple[str, list[Tick]]]:
    """The ICRS ticks of the bottom and the left edge of the shown image: for each, the
    coordinate it carries ("RA" or "Dec") and its ticks (display pixels along the edge from
    the image's left, or top, and sexagesimal labels). ``length`` is the shown image's
    (width, height) in display pixels; ``k`` its stride, ``zoom`` its enlargement.

    RA goes on the edge along which it changes more (the bottom for a north-up image),
    Dec on the other. A tick is where a round RA or Dec line crosses the edge, found from
    ``EDGE_SAMPLES`` points along it converted to ICRS with the image's WCS (so rotated,
    FK5 and Galactic images are right); the step is the smallest round one that keeps the
    labels apart. No ticks where the WCS gives no sky position.
    """
    width, height = length
    n = EDGE_SAMPLES
    along_x = np.linspace(-0.5, width - 0.5, n)  # display columns of the bottom edge
    along_y = np.linspace(-0.5, height - 0.5, n)  # display rows of the left edge
    # Image pixel (x, y) is at display column x*zoom/k + (zoom-1)/2 and, north up, at
    # display row height-1 - y*zoom/k - (zoom-1)/2 (as in _overlay); the display's bottom
    # and left edges are at image y = -k/2 and x = -k/2.
    to_image = k / zoom
    offset = (zoom - 1) / 2.0
    bx = (along_x - offset) * to_image
    by = np.full(n, -k / 2.0)
    lx = np.full(n, -k / 2.0)
    ly = (height - 1 - along_y - offset) * to_image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sky = image.wcs.pixel_to_world(np.concatenate([bx, lx]), np.concatenate([by, ly]))
            icrs = sky.icrs
            ra = np.asarray(icrs.ra.deg, dtype=float)
            dec = np.asarray(icrs.dec.deg, dtype=float)
    except Exception:  # an odd WCS: no ticks, the picture is still worth having
        return ("RA", []), ("Dec", [])
    edges = ((along_x, ra[:n], dec[:n]), (along_y, ra[n:], dec[n:]))
    spans = [(_ra_span(r, d), _span(d)) for _, r, d in edges]
    ra_bottom = spans[0][0] + spans[1][1] >= spans[0][1] + spans[1][0]
    result: list[tuple[str, list[Tick]]] = []
    for i, (positions, r, d) in enumerate(edges):
        on_ra = ra_bottom == (i == 0)
        spacing = TICK_SPACING_X if i == 0 else TICK_SPACING_Y
        room = max(2, int((length[i] + 1) // spacing))
        if on_ra:
            ticks = _edge_ticks(positions, _unwrap_degrees(r), RA_STEPS_S, 15.0, room, spacing)
            labels = [Tick(at, _ra_label(v, step)) for at, v, step in ticks]
        else:
            ticks = _edge_ticks(positions, d, DEC_STEPS_AS, 1.0, room, spacing)
            labels = [Tick(at, _dec_label(v, step)) for at, v, step in ticks]
        result.append(("RA" if on_ra else "Dec", labels))
    return result[0], result[1]


def _span(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max() - finite.min()) if finite.size else 0.0


def _ra_span(ra: np.ndarray, dec: np.ndarray) -> float:
    """How far RA changes along an edge, in degrees on the sky (times cos Dec)."""
    good = np.isfinite(ra) & np.isfinite(dec)
    if not np.any(good):
        return 0.0
    return _span(_unwrap_degrees(ra[good])) * float(np.cos(np.radians(np.median(dec[good]))))


def _unwrap_degrees(values: np.ndarray) -> np.ndarray:
    """``values`` (degrees, NaN where unknown) without their jumps at 0/360."""
    out = np.array(values, dtype=float)
    good = np.isfinite(out)
    out[good] = np.degrees(np.unwrap(np.radians(out[good])))
    return out


def _edge_ticks(
    positions: np.ndarray,
    values: np.ndarray,
    steps: tuple[float, ...],
    unit_arcsec: float,
    room: int,
    spacing: float,
) -> list[tuple[float, float, float]]:
    """(position, value in degrees, step in ``steps``' unit) of each tick on an edge whose
    coordinate is ``values`` (degrees) at ``positions``: where the multiples of the
    smallest of ``steps`` (in units of ``unit_arcsec`` arcsec) giving at most ``room``
    ticks cross it, at least ``spacing`` apart."""
    good = np.isfinite(values)
    if np.count_nonzero(good) < 2:
        return []
    low, high = float(values[good].min()), float(values[good].max())
    step, first, last = steps[-1], 0, -1
    for candidate in steps:  # the smallest step giving at most ``room`` ticks
        step_deg = candidate * unit_arcsec / 3600.0
        first, last = math.ceil(low / step_deg - 1e-9), math.floor(high / step_deg + 1e-9)
        step = candidate
        if last - first + 1 <= room:
            break
    step_deg = step * unit_arcsec / 3600.0
    if last < first:
        return []
    marks = np.arange(first, last + 1) * step_deg
    # Segments between neighbouring known samples, and where each mark crosses them.
    v0, v1 = values[:-1], values[1:]
    p0, p1 = positions[:-1], positions[1:]
    segment = np.isfinite(v0) & np.isfinite(v1) & (v0 != v1)
    v0, v1, p0, p1 = v0[segment], v1[segment], p0[segment], p1[segment]
    d0 = v0[None, :] - marks[:, None]
    d1 = v1[None, :] - marks[:, None]
    crossing = ((d0 <= 0) & (d1 >= 0)) | ((d0 >= 0) & (d1 <= 0))
    which, seg = np.nonzero(crossing)
    fraction = (marks[which] - v0[seg]) / (v1[seg] - v0[seg])
    at = p0[seg] + fraction * (p1[seg] - p0[seg])
    ticks: list[tuple[float, float, float]] = []
    for i in np.argsort(at, kind="stable"):
        if ticks and at[i] - ticks[-1][0] < spacing:
            continue
        ticks.append((float(at[i]), float(marks[which[i]]), step))
    return ticks


def _ra_label(ra_deg: float, step_s: float) -> str:
    """RA as hours, minutes and seconds, to the precision of the tick step (seconds of
    time), e.g. "10h", "10h05m", "10h05m30s", "10h05m30.5s"."""
    tenths = round((ra_deg % 360.0) / 15.0 * 36000.0) % 864000
    h, rest = divmod(tenths, 36000)
    m, rest = divmod(rest, 600)
    if step_s >= 3600:
        return f"{h:02d}h"
    if step_s >= 60:
        return f"{h:02d}h{m:02d}m"
    if step_s >= 1:
        return f"{h:02d}h{m:02d}m{rest // 10:02d}s"
    return f"{h:02d}h{m:02d}m{rest // 10:02d}.{rest % 10}s"


def _dec_label(dec_deg: float, step_as: float) -> str:
    """Dec as signed degrees, arcminutes and arcseconds, to the precision of the tick step
    (arcsec), e.g. ``+30°``, ``+30°05'``, ``-30°05'30"``, ``+30°05'30.5"``."""
    tenths = round(dec_deg * 36000.0)
    sign = "-" if tenths < 0 else "+"
    d, rest = divmod(abs(tenths), 36000)
    m, rest = divmod(rest, 600)
    if step_as >= 3600:
        return f"{sign}{d:02d}\N{DEGREE SIGN}"
    if step_as >= 60:
        return f"{sign}{d:02d}\N{DEGREE SIGN}{m:02d}'"
    if step_as >= 1:
        return f"{sign}{d:02d}\N{DEGREE SIGN}{m:02d}'{rest // 10:02d}\""
    return f"{sign}{d:02d}\N{DEGREE SIGN}{m:02d}'{rest // 10:02d}.{rest % 10}\""


def _axes(
    picture: Image.Image,
    draw: ImageDraw.ImageDraw,
    image: SkyImage,
    k: int,
    zoom: int,
    box: tuple[int, int, int, int],
) -> None:
    """Draw the ICRS ticks, their labels and the axis titles around the shown image at
    ``box`` (left, top, width, height) of ``picture``."""
    left, top, width, height = box
    font = _font()
    (bottom_name, bottom), (left_name, left_ticks) = axis_ticks(image, k, zoom, (width, height))
    edge_y = top + height  # the frame's bottom line
    right_limit = picture.width - 1
    for tick in bottom:
        x = left + round(tick.at)
        draw.line(((x, edge_y), (x, edge_y + TICK_LENGTH)), fill=TEXT_INDEX)
        text_width = draw.textlength(tick.label, font=font)
        tx = min(max(x - text_width / 2.0, 0.0), right_limit - text_width)
        draw.text((tx, edge_y + TICK_LENGTH + 2), tick.label, fill=TEXT_INDEX, font=font)
    edge_x = left - 1  # the frame's left line
    for tick in left_ticks:
        y = top + round(tick.at)
        draw.line(((edge_x - TICK_LENGTH, y), (edge_x, y)), fill=TEXT_INDEX)
        text_width = draw.textlength(tick.label, font=font)
        ty = min(max(y - FONT_SIZE / 2.0 - 2, 0.0), picture.height - FONT_SIZE - 2)
        draw.text(
            (edge_x - TICK_LENGTH - 3 - text_width, ty), tick.label, fill=TEXT_INDEX, font=font
        )
    bottom_title = f"{bottom_name} (ICRS)"
    title_width = draw.textlength(bottom_title, font=font)
    tx = min(max(left + width / 2.0 - title_width / 2.0, 0.0), right_limit - title_width)
    draw.text((tx, edge_y + TICK_LENGTH + FONT_SIZE + 8), bottom_title, fill=TEXT_INDEX, font=font)
    _vertical_text(picture, f"{left_name} (ICRS)", 2, top + height / 2.0)


def _vertical_text(picture: Image.Image, text: str, x: int, centre_y: float) -> None:
    """Write ``text`` upwards (rotated a quarter turn) at column ``x``, centred on row
    ``centre_y``, in the text colour (not anti-aliased: the picture is a palette image)."""
    font = _font()
    _, _, x1, y1 = font.getbbox(text)
    mask = Image.new("1", (int(x1) + FONT_SIZE, int(y1) + FONT_SIZE), 0)
    ImageDraw.Draw(mask).text((2, 2), text, fill=1, font=font)
    inked = mask.getbbox()
    if inked is None:
        return
    mask = mask.crop(inked).rotate(90, expand=True)
    y = round(centre_y - mask.height / 2.0)
    y = min(max(y, 0), max(picture.height - mask.height, 0))
    picture.paste(TEXT_INDEX, (x, y, x + mask.width, y + mask.height), mask)


def _angle_text(arcsec: float) -> str:
    if arcsec >= 3600:
        return f"{arcsec / 3600:.3g} deg"
    if arcsec >= 60:
        return f"{arcsec / 60:.3g}'"
    return f'{arcsec:.3g}"'


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
