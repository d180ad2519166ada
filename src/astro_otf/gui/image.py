"""FITS image and catalogue loading for the GUI, free of any Qt code.

This module exists so that the parts of the GUI that only handle data (reducing a radio
cube to a 2-D plane with its celestial WCS, parsing the VOTable catalogue a job returns,
turning a pixel rectangle into the service's ROI parameters) can be tested and reused
without a display.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.votable import parse
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales


class ImageLoadError(ValueError):
    """The file cannot be shown: not FITS, or no image data in it."""


@dataclass(frozen=True)
class LoadedImage:
    """A 2-D image plane ready for display."""

    path: Path
    data: np.ndarray
    wcs: WCS
    frame: str

    @property
    def pixel_scale_arcsec(self) -> float:
        """Mean pixel side in arcsec (1.0 when the WCS has no usable scale)."""
        try:
            scales = proj_plane_pixel_scales(self.wcs)
            value = float(np.mean(np.abs(scales)) * 3600.0)
        except Exception:  # a WCS without a celestial scale
            return 1.0
        return value if math.isfinite(value) and value > 0 else 1.0


def _frame_of(wcs: WCS) -> str:
    ctype = str(wcs.wcs.ctype[0]).upper()
    if ctype.startswith("GLON"):
        return "galactic"
    if ctype.startswith("ELON"):
        return "ecliptic"
    return "icrs"


def load_image(path: Path) -> LoadedImage:
    """The first HDU with image data in ``path``, squeezed to 2-D (index 0 along extra
    axes), with its celestial WCS. Raises :class:`ImageLoadError` for anything else."""
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU):
                    continue
                if hdu.data is None or hdu.data.ndim < 2:
                    continue
                data = np.asarray(hdu.data, dtype=np.float64)
                header = hdu.header.copy()
                break
            else:
                raise ImageLoadError(f"{path.name}: no image data in this FITS file")
    except ImageLoadError:
        raise
    except (OSError, ValueError, TypeError) as exc:
        raise ImageLoadError(f"{path.name}: not a readable FITS image ({exc})") from exc
    while data.ndim > 2:
        data = data[0]
    try:
        with warnings.catch_warnings():
            # radio headers routinely describe more axes than the data keep
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header).celestial
    except Exception as exc:
        raise ImageLoadError(f"{path.name}: unusable WCS ({exc})") from exc
    if wcs.naxis != 2:
        raise ImageLoadError(f"{path.name}: no celestial WCS in the header")
    return LoadedImage(path=path, data=data, wcs=wcs, frame=_frame_of(wcs))


def roi_parameters(wcs: WCS, x0: float, y0: float, x1: float, y1: float) -> dict[str, str]:
    """The service's ROI parameters for the pixel rectangle (x0, y0)-(x1, y1).

    RA/DEC are the rectangle centre in ICRS, whatever the image's frame (Galactic, FK5,
    ...): the service always reads them as ICRS and converts them to the image's frame.
    WIDTH/HEIGHT are the rectangle's size in whole pixels.
    """
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centre = wcs.pixel_to_world(cx, cy).icrs
    return {
        "RA": f"{float(centre.ra.deg) % 360.0:.8f}",
        "DEC": f"{float(centre.dec.deg):.8f}",
        "WIDTH": str(max(1, round(abs(x1 - x0)))),
        "HEIGHT": str(max(1, round(abs(y1 - y0)))),
    }


@dataclass(frozen=True)
class Catalogue:
    """A job's source catalogue: column names and units, and the rows as a masked
    structured array."""

    names: list[str]
    units: list[str]
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> np.ndarray:
        """One column as floats, masked values as NaN."""
        return np.ma.filled(np.ma.asarray(self.rows[name]).astype(np.float64), np.nan)

    def cell(self, row: int, name: str) -> str:
        """One value as display text (empty when masked)."""
        value = self.rows[name][row]
        if value is np.ma.masked:
            return ""
        if isinstance(value, float | np.floating):
            return f"{float(value):.6g}"
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return str(value)


def parse_catalogue(votable: bytes) -> Catalogue:
    """The first table of a VOTable document."""
    table = parse(io.BytesIO(votable)).get_first_table()
    rows = np.ma.asarray(table.array)
    names = [str(f.name) for f in table.fields]
    units = [str(f.unit) if f.unit is not None else "" for f in table.fields]
    return Catalogue(names=names, units=units, rows=rows)
