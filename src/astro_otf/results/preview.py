"""A PNG quick-look of the searched image with the detections drawn on it.

A scientist's first question about a catalogue is whether the finder found what the eye
sees, and a picture answers it before any file is downloaded. This module draws that
picture in the worker processes, so it must not touch matplotlib's global state (no pyplot:
a ``Figure`` on its own Agg canvas, dropped when done) and must not read a large
memory-mapped image whole: an image larger than ``max_side`` pixels on a side is shown by
every k-th pixel, which reads only those rows from disk. Blank (all-NaN) and constant
images still give a picture rather than an error.
"""

from __future__ import annotations

import math
import os
import uuid
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import Galactic, SkyCoord
from astropy.table import Table
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from astropy.visualization.wcsaxes import WCSAxes
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure

from astro_otf.imaging.fits import SkyImage
from astro_otf.results.catalogue import Catalogue, float_column

__all__ = ["PREVIEW_DPI", "figure_size", "write_preview"]

#: Resolution of the PNG; its size in pixels is :func:`figure_size` times this.
PREVIEW_DPI = 100
#: Percentage of the finite pixels between the display limits.
PERCENTILE = 99.5
#: Smallest drawn radius of a detection, in displayed (strided) pixels, so that each shows.
MIN_RADIUS_DISPLAY_PIX = 1.5
#: Radius in image pixels of a detection whose size is unknown and with no beam.
DEFAULT_RADIUS_PIX = 5.0
OVERLAY_COLOUR = "#00e5ff"


def write_preview(
    catalogue: Catalogue, image: SkyImage, path: Path, *, max_side: int = 1200
) -> Path:
    """Draw ``image`` with the sources of ``catalogue`` over it as a PNG at ``path``.

    ``image`` is the image that was searched (the cut-out when a region of interest was
    asked for); the catalogue's ``x``/``y`` are pixels of the uploaded image, so
    ``image.origin`` is subtracted from them. The image is shown with an asinh stretch
    between the limits of the central 99.5 % of its finite pixels, on celestial axes (RA/Dec,
    or Galactic l/b). Sources with ``maj``, ``min`` and ``pa`` are ellipses of those FWHM
    axes; others are circles of the beam's major axis (5 pixels without a beam). When the
    image is larger than ``max_side`` on a side only every k-th pixel is read and shown (see
    :func:`_stride`). The file is written under a temporary name and renamed into place;
    returns ``path``.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    path = Path(path)
    ny, nx = image.shape
    k = _stride((ny, nx), max_side)
    # Basic slicing of a memory-mapped array reads only the strided rows from disk.
    data = np.array(image.data[::k, ::k], dtype=np.float64)
    norm = _normalize(data)

    width_in, height_in = figure_size((ny, nx))
    fig = Figure(figsize=(width_in, height_in), dpi=PREVIEW_DPI)
    FigureCanvasAgg(fig)
    try:
        ax = fig.add_axes((0.14, 0.1, 0.8, 0.82), projection=image.wcs)
        assert isinstance(ax, WCSAxes)
        cmap = colormaps["inferno"].with_extremes(bad="0.55")
        # Sample [j, i] of the strided array is pixel (k i, k j) of ``image``: the axes stay
        # in the pixels of ``image`` (so its WCS is exact, with CD matrices too) and each
        # sample covers the k x k block it stands for.
        half = k / 2.0
        extent = (-half, k * data.shape[1] - half, -half, k * data.shape[0] - half)
        ax.imshow(
            data,
            origin="lower",
            cmap=cmap,
            norm=norm,
            extent=extent,
            interpolation="nearest",
            aspect="equal",
        )
        ax.set_xlim(-0.5, nx - 0.5)
        ax.set_ylim(-0.5, ny - 0.5)
        _label_axes(ax, image)
        n_drawn = _overlay(ax, catalogue.table, image, k)
        n = len(catalogue.table)
        title = f"{n} source{'s' if n != 1 else ''}"
        if n_drawn != n:
            title += f" ({n_drawn} drawn)"
        if k > 1:
            title += f"; every {_ordinal(k)} pixel shown"
        ax.set_title(title)

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tick-label and WCS warnings only
                fig.savefig(tmp, format="png", dpi=PREVIEW_DPI)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        fig.clear()
    return path


def _stride(shape: tuple[int, int], max_side: int) -> int:
    """The step k such that every k-th pixel of an image of ``shape`` is at most
    ``max_side`` pixels on a side (1 when it already is)."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return max(1, math.ceil(longest / max(1, max_side)))


def figure_size(shape: tuple[int, int]) -> tuple[float, float]:
    """Width and height in inches of the preview of an image of ``shape`` (ny, nx): 9 inches
    wide, and tall enough for the image's aspect ratio within 5 to 12 inches."""
    ny, nx = max(int(shape[0]), 1), max(int(shape[1]), 1)
    height = min(max(9.0 * ny / nx, 5.0), 12.0) + 0.5  # room for the title and labels
    return 9.0, round(height, 2)


def _normalize(data: np.ndarray) -> ImageNormalize:
    """Asinh stretch between the percentile limits of the finite pixels; an image whose
    pixels are (nearly) all equal gets its full range, a blank or constant one limits
    around its one value."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        vmin, vmax = 0.0, 1.0
    else:
        vmin, vmax = (float(v) for v in PercentileInterval(PERCENTILE).get_limits(finite))
        if not vmax > vmin:  # most pixels equal: use the full range
            vmin, vmax = float(finite.min()), float(finite.max())
        if not vmax > vmin:  # a constant image: mid-grey around its value
            spread = abs(vmin) if vmin != 0.0 else 1.0
            vmin, vmax = vmin - spread, vmax + spread
    # clip=False: matplotlib shows values beyond the limits in the end colours and NaN
    # (blank) pixels in the colour map's "bad" colour, which clipping would overwrite.
    return ImageNormalize(vmin=vmin, vmax=vmax, stretch=AsinhStretch(), clip=False)


def _label_axes(ax: WCSAxes, image: SkyImage) -> None:
    """Name the longitude and latitude axes after the image's frame: "RA (ICRS)", "Dec
    (FK5)", "l (Galactic)", ..."""
    frame = image.frame
    lon, lat = list(frame.representation_component_names)[:2]
    names = {"ra": "RA", "dec": "Dec"}
    frame_name = "Galactic" if isinstance(frame, Galactic) else frame.name.upper()
    wcs = image.wcs
    ax.coords[int(wcs.wcs.lng)].set_axislabel(f"{names.get(lon, lon)} ({frame_name})")
    ax.coords[int(wcs.wcs.lat)].set_axislabel(f"{names.get(lat, lat)} ({frame_name})")


def _overlay(ax: WCSAxes, table: Table, image: SkyImage, k: int) -> int:
    """Draw the detections in pixels of ``image``; return how many were drawn."""
    n = len(table)
    if n == 0:
        return 0
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
        return 0

    scale = image.pixel_scale_arcsec
    maj = float_column(table, "maj") / scale
    minor = float_column(table, "min") / scale
    pa = float_column(table, "pa")
    beam_pix = image.beam_major_pix
    fallback = beam_pix if beam_pix is not None else 2.0 * DEFAULT_RADIUS_PIX
    ellipse = np.isfinite(maj) & np.isfinite(minor) & np.isfinite(pa) & (maj > 0) & (minor > 0)
    widths = np.where(ellipse, maj, fallback)
    heights = np.where(ellipse, minor, fallback)
    angles = np.nan_to_num(np.where(ellipse, _pixel_angles(image, x, y, pa), 0.0))
    smallest = 2.0 * MIN_RADIUS_DISPLAY_PIX * k
    widths, heights = np.maximum(widths, smallest), np.maximum(heights, smallest)

    collection = EllipseCollection(
        widths[keep],
        heights[keep],
        angles[keep],
        units="xy",
        offsets=np.column_stack([x[keep], y[keep]]),
        offset_transform=ax.transData,
        facecolors="none",
        edgecolors=OVERLAY_COLOUR,
        linewidths=0.8,
    )
    ax.add_collection(collection)
    return int(np.count_nonzero(keep))


def _pixel_angles(image: SkyImage, x: np.ndarray, y: np.ndarray, pa: np.ndarray) -> np.ndarray:
    """The angle in degrees (0 to 360), anticlockwise from the +x pixel axis, of the direction at
    position angle ``pa`` (east of ICRS north) from each pixel (x, y); NaN where unknown.

    Taken from the WCS at each source, so rotated, flipped and Galactic images are right.
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


def _ordinal(k: int) -> str:
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"
