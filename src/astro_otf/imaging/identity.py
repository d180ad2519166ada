"""What an image is, from its header alone: object, telescope, frequency and size.

Job lists, stored uploads and the web page show a scientist which image a job ran on; that
needs a few header cards, read without touching the pixels (the file is opened memory-mapped
and only the header of the image HDU is parsed), and it must not fail on a header that lacks
them: every field is None when the header does not say. The client's file name is kept too,
so it is cleaned here of anything that is not a plain base name.
"""

from __future__ import annotations

import math
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import astropy.units as u
from astropy.io import fits

__all__ = ["DEFAULT_FILENAME", "MAX_FILENAME", "describe_image", "sanitise_filename"]

#: The name of an upload whose client gave none that can be kept.
DEFAULT_FILENAME = "image.fits"
#: The longest file name kept, in characters.
MAX_FILENAME = 200
#: The longest OBJECT or TELESCOP value kept, in characters.
MAX_TEXT = 200
#: HDUs looked at, at most, for the image.
MAX_HDUS = 1000
#: Header cards naming the frequency, in the order they are trusted after the spectral axis.
FREQUENCY_CARDS = ("RESTFRQ", "RESTFREQ", "FREQ")

_IMAGE_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


def describe_image(path: Path) -> dict[str, Any]:
    """``{"object", "telescope", "frequency_hz", "shape": [ny, nx]}`` from the header of the
    image HDU of ``path``: the primary HDU when it holds pixels, else the first image
    extension (as :func:`astro_otf.imaging.fits.load_image` chooses). The pixels are never
    read. Raises ValueError when the file is not FITS or holds no image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hdul = fits.open(Path(path), memmap=True, lazy_load_hdus=True)
        except Exception as exc:  # astropy raises OSError, ValueError, ... on non-FITS bytes
            raise ValueError(f"not a FITS file: {_first_line(exc)}") from None
        try:
            header = _image_header(hdul)
        finally:
            hdul.close()
    if header is None:
        raise ValueError("the FITS file holds no image HDU")
    return describe_header(header)


def describe_header(header: fits.Header) -> dict[str, Any]:
    """The fields of :func:`describe_image` from an image header already read."""
    return {
        "object": _text(header, "OBJECT"),
        "telescope": _text(header, "TELESCOP"),
        "frequency_hz": frequency_hz(header),
        "shape": _celestial_shape(header),
    }


def _image_header(hdul: fits.HDUList) -> fits.Header | None:
    for index in range(MAX_HDUS):
        try:
            hdu = hdul[index]
        except Exception:  # IndexError past the last HDU, or an unreadable header
            return None
        if not isinstance(hdu, _IMAGE_HDUS) or isinstance(hdu, fits.GroupsHDU):
            continue
        header = hdu.header
        naxis = _int(header, "NAXIS") or 0
        axes = [_int(header, f"NAXIS{k}") for k in range(1, naxis + 1)]
        if naxis > 0 and all(n is not None and n > 0 for n in axes):
            return header
    return None


def frequency_hz(header: fits.Header) -> float | None:
    """The frequency of the image's first plane, in Hz: the spectral axis (``CTYPEn`` FREQ)
    at pixel 1, in the unit ``CUNITn`` gives (Hz when absent), which is the frequency of the
    pixels; else RESTFRQ, RESTFREQ or FREQ (Hz). None when none is a finite positive
    number."""
    naxis = _int(header, "NAXIS") or 0
    for k in range(1, max(naxis, _int(header, "WCSAXES") or 0) + 1):
        ctype = str(header.get(f"CTYPE{k}", "")).strip().upper()
        if ctype.split("-", 1)[0] != "FREQ":
            continue
        crval = _float(header, f"CRVAL{k}")
        if crval is None:
            continue
        crpix = _float(header, f"CRPIX{k}")
        cdelt = _float(header, f"CDELT{k}")
        if crpix is not None and cdelt is not None:
            crval += (1.0 - crpix) * cdelt  # the first plane, the one a job reads
        value = _in_hz(crval, str(header.get(f"CUNIT{k}", "")).strip())
        if value is not None:
            return value
    for card in FREQUENCY_CARDS:
        value = _float(header, card)
        if value is not None and value > 0:
            return value
    return None


def _celestial_shape(header: fits.Header) -> list[int]:
    """``[ny, nx]``: the lengths of the two celestial axes (x the lower-numbered one), found
    from their CTYPEs (RA/DEC, GLON/GLAT, ELON/ELAT, ...); the first two axes when the
    header names none. A missing length is 1."""
    naxis = _int(header, "NAXIS") or 0
    lng = lat = None
    for k in range(1, naxis + 1):
        ctype = str(header.get(f"CTYPE{k}", "")).strip().upper()
        if lng is None and _is_longitude(ctype):
            lng = k
        elif lat is None and _is_latitude(ctype):
            lat = k
    if lng is None or lat is None:
        x_axis, y_axis = 1, 2
    else:
        x_axis, y_axis = min(lng, lat), max(lng, lat)
    nx = _int(header, f"NAXIS{x_axis}") if x_axis <= naxis else None
    ny = _int(header, f"NAXIS{y_axis}") if y_axis <= naxis else None
    return [ny if ny is not None else 1, nx if nx is not None else 1]


def _is_longitude(ctype: str) -> bool:
    # FITS WCS paper II: RA, or xLON / xyLN for the other celestial systems
    return ctype.startswith("RA") or ctype[1:4] == "LON" or ctype[2:4] == "LN"


def _is_latitude(ctype: str) -> bool:
    return ctype.startswith("DEC") or ctype[1:4] == "LAT" or ctype[2:4] == "LT"


def _in_hz(value: float, unit: str) -> float | None:
    if unit:
        try:
            value = float((value * u.Unit(unit, format="fits")).to_value(u.Hz))
        except (ValueError, TypeError, u.UnitsError):
            try:  # a unit FITS does not spell this way but astropy knows ("MHZ", "ghz")
                value = float((value * _loose_unit(unit)).to_value(u.Hz))
            except (ValueError, TypeError, u.UnitsError):
                return None
    return value if math.isfinite(value) and value > 0 else None


def _loose_unit(unit: str) -> u.UnitBase:
    table = {"HZ": u.Hz, "KHZ": u.kHz, "MHZ": u.MHz, "GHZ": u.GHz, "THZ": u.THz}
    found = table.get(unit.upper())
    if found is None:
        raise ValueError(f"unknown frequency unit {unit!r}")
    return found


def _text(header: fits.Header, key: str) -> str | None:
    try:
        value = header.get(key)
    except Exception:  # a card astropy cannot parse
        return None
    if value is None or isinstance(value, bool):
        return None
    text = "".join(ch for ch in str(value) if unicodedata.category(ch)[0] != "C").strip()
    return text[:MAX_TEXT] or None


def _float(header: fits.Header, key: str) -> float | None:
    try:
        value = header.get(key)
    except Exception:
        return None
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(header: fits.Header, key: str) -> int | None:
    number = _float(header, key)
    return int(number) if number is not None and number == int(number) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


_SEPARATORS = re.compile(r"[/\\]")


def sanitise_filename(name: str) -> str:
    r"""The base name of a client's file name, fit to keep and show: no folders (``/`` or
    ``\``), no control characters, no leading dots or spaces, at most
    :data:`MAX_FILENAME` characters (the extension kept); ``image.fits`` when nothing is
    left."""
    base = _SEPARATORS.split(name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = base.strip().lstrip(".").strip()
    if len(base) > MAX_FILENAME:
        tail = base[-16:]  # the extension (".fits.gz") is kept when it lies in the last 16
        dot = tail.find(".")
        ext = tail[dot:] if dot >= 0 else ""
        base = base[: MAX_FILENAME - len(ext)].rstrip() + ext
    return base or DEFAULT_FILENAME
