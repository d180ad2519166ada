"""``otf submit --roi RA DEC W H``: a region of interest as the job parameters RA, DEC,
WIDTH and HEIGHT.

It exists so that a person can give the centre as they read it off a sky atlas (degrees,
or sexagesimal with or without unit letters) and the size in pixels or as an angle, while
the service gets one syntax. Astropy is imported only when ``--roi`` is used, so that the
other commands start fast.
"""

from __future__ import annotations

import math
import re
from typing import Any

from astro_otf.cli.context import EXIT_USAGE, fail

#: The parameters ``--roi`` sets (a ``-p`` of the same name gives way to it).
ROI_NAMES = ("RA", "DEC", "WIDTH", "HEIGHT")
#: Sexagesimal without unit letters: ``17:09:38.4``, ``-43 12 45``.
_SEXAGESIMAL = re.compile(r"[+-]?\d{1,3}(?:[: ]\d{1,2}){1,2}(?:\.\d*)?")
#: A size in pixels: ``100``, ``100pix``, ``100 px``.
_PIXELS = re.compile(r"\d+(?:\.\d*)?(?:pix|pixels|px)?")


def _roi_angle(text: str, sexagesimal_unit: str, what: str) -> Any:
    """An :class:`astropy.coordinates.Angle` from a number of degrees, a sexagesimal
    string (in ``sexagesimal_unit``) or anything with its units (``17h09m38.4s``, ``5'``)."""
    from astropy import units as u
    from astropy.coordinates import Angle

    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            fail(f"--roi: {what} {text!r} is not a finite angle", EXIT_USAGE)
        return Angle(number, unit=u.deg)
    try:
        if _SEXAGESIMAL.fullmatch(value):
            return Angle(value, unit=sexagesimal_unit)
        angle = Angle(value)
    except (ValueError, TypeError, u.UnitsError) as exc:
        fail(f"--roi: {what} {text!r} is not an angle ({exc})", EXIT_USAGE)
    if not angle.unit.is_equivalent(u.deg) or not math.isfinite(float(angle.degree)):
        fail(f"--roi: {what} {text!r} is not an angle", EXIT_USAGE)
    return angle


def _number(value: float) -> str:
    """A float as a parameter value: 12 significant digits, no trailing zeros."""
    return f"{value:.12g}"


def _roi_extent(text: str, what: str) -> str:
    """A width or height as the service's parameter syntax: pixels as given, an angle as
    ``<number> arcsec|arcmin|deg``."""
    from astropy import units as u

    if _PIXELS.fullmatch(text.strip().lower().replace(" ", "")):
        return text.strip()
    angle = _roi_angle(text, "deg", what)
    names = {u.deg: "deg", u.arcmin: "arcmin", u.arcsec: "arcsec"}
    unit = angle.unit if angle.unit in names else u.deg
    value = float(angle.to_value(unit))
    if value <= 0:
        fail(f"--roi: {what} {text!r} must be a positive size", EXIT_USAGE)
    return f"{_number(value)} {names[unit]}"


def roi_params(ra: str, dec: str, width: str, height: str) -> dict[str, str]:
    """The RA, DEC, WIDTH and HEIGHT parameters of ``--roi``: the centre in degrees (RA
    in 0..360, so that -0.5 is 359.5; sexagesimal RA is in hours, DEC in degrees), sizes in
    pixels or as angles the service reads (``5'`` -> ``5 arcmin``)."""
    from astropy import units as u

    ra_angle = _roi_angle(ra, "hourangle", "RA")
    dec_angle = _roi_angle(dec, "deg", "DEC")
    ra_deg = float(ra_angle.wrap_at(360 * u.deg).degree) % 360.0
    dec_deg = float(dec_angle.degree)
    if not -90.0 <= dec_deg <= 90.0:
        fail(f"--roi: DEC {dec!r} is outside -90..90 degrees", EXIT_USAGE)
    return {
        "RA": _number(ra_deg),
        "DEC": _number(dec_deg),
        "WIDTH": _roi_extent(width, "width"),
        "HEIGHT": _roi_extent(height, "height"),
    }
