"""Measure detected sources with physics: merge, fit, and turn pixels into sky quantities.

Why a module of its own: the detector app proposes candidate positions (with its network's
own estimates of flux and size); this module decides which candidates are one source
(:mod:`.merge`), fits each source's Gaussian to the image's pixels on the local background
(:mod:`.gaussfit`, :mod:`.background`), falls back on the network's estimate where a fit fails,
and converts the results to the catalogue's sky units through the WCS, whatever the
projection, rotation or frame.

Block-averaged images (a wide beam brought within what the network saw) are measured on the
averaged pixels the network saw, and the results mapped back: averaging f x f blocks
convolves the sky with a one-pixel box (variance 1/12 in averaged pixels), which is removed
from fitted sizes and peaks, so fluxes and sizes refer to the uploaded image.

Integrated flux for a Jy/beam image is peak x maj min / (bmaj bmin) with the fitted axes
(beam-convolved); errors follow Condon (1997).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS

from astro_otf.imaging.background import NoiseMap
from astro_otf.imaging.gaussfit import (
    FWHM_PER_SIGMA,
    axes_of,
    condon_errors,
    covariance_of,
    deconvolve,
    fit_gaussians,
)
from astro_otf.imaging.merge import close_pairs, merge_candidates

__all__ = [
    "MeasureSettings",
    "Measured",
    "beam_pixel_cov",
    "measure",
    "pixel_jacobians",
    "sky_shapes",
]

#: Variance (pixels^2) that averaging pixels in blocks adds, in units of the averaged pixel.
BOX_VARIANCE = 1.0 / 12.0


@dataclass(frozen=True)
class MeasureSettings:
    """How candidates are merged and fitted (the manifest's ``[measure]`` table)."""

    stamp_beams: float = 1.5
    max_sep_beams: float = 2.0
    near_beams: float = 1.0
    dip_sigma: float = 2.0
    excess_sigma: float = 3.0
    #: Fitted sources closer than this (beams) are one source: the fainter is dropped.
    duplicate_beams: float = 0.5


@dataclass
class Measured:
    """Measured sources in the uploaded image's pixels and units: one row per kept
    candidate (``kept`` indexes the candidates given)."""

    kept: np.ndarray
    x: np.ndarray
    y: np.ndarray
    peak: np.ndarray
    peak_err: np.ndarray
    int_beams: np.ndarray  #: integrated flux over peak, in beams (maj min / bmaj bmin)
    int_rel_err: np.ndarray
    cov: np.ndarray  #: (N, 2, 2) beam-convolved source covariance, uploaded pixels
    cov_err: dict[str, np.ndarray]  #: errors of centre (major/minor), axes, angle
    fitted: np.ndarray
    rms: np.ndarray
    bg: np.ndarray


def measure(
    pixels: np.ndarray,
    noise: NoiseMap,
    x: np.ndarray,
    y: np.ndarray,
    beam_cov: np.ndarray,
    *,
    factor: int = 1,
    guess_cov: np.ndarray | None = None,
    guess_peak: np.ndarray | None = None,
    guess_int_beams: np.ndarray | None = None,
    settings: MeasureSettings | None = None,
) -> Measured:
    """Merge, fit and measure candidates at (x, y) of ``pixels`` (the array the network saw:
    the uploaded image or its ``factor`` x ``factor`` block means, with its ``noise`` map).
    ``beam_cov`` is the beam's covariance in the *uploaded* image's pixels; the ``guess_*``
    arrays are the network's estimates (covariance in uploaded pixels, peak in image units,
    integrated/peak in beams), used as starting values and where a fit fails."""
    settings = settings or MeasureSettings()
    n = len(x)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    f = float(factor)
    beam_work = beam_cov / f**2 + (BOX_VARIANCE * np.eye(2) if factor > 1 else 0.0)
    bmaj, bmin, _ = axes_of(beam_work)
    beam_fwhm = math.sqrt(float(bmaj) * float(bmin))

    def background(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return noise.at(xs, ys)[0]

    bg, rms = noise.at(x, y)
    owner = merge_candidates(
        pixels,
        x,
        y,
        rms.astype(np.float64),
        beam_work,
        background=background,
        max_sep=settings.max_sep_beams,
        near=settings.near_beams,
        dip_sigma=settings.dip_sigma,
        excess_sigma=settings.excess_sigma,
    )
    kept = np.flatnonzero(owner == np.arange(n))
    cov0 = None
    if guess_cov is not None:
        cov0 = guess_cov[kept] / f**2 + (BOX_VARIANCE * np.eye(2) if factor > 1 else 0.0)
    half = max(3, math.ceil(settings.stamp_beams * float(bmaj)))
    fit = fit_gaussians(
        pixels, rms[kept], x[kept], y[kept], beam_work, cov0=cov0, half=half, background=background
    )
    # a fit that landed on another's source: keep the brighter, fit the rest again
    dup = _duplicates(fit.x, fit.y, fit.amp, fit.ok, settings.duplicate_beams * beam_fwhm)
    if dup.any():
        keep = ~dup
        kept = kept[keep]
        cov0 = None if cov0 is None else cov0[keep]
        fit = fit_gaussians(
            pixels,
            rms[kept],
            x[kept],
            y[kept],
            beam_work,
            cov0=cov0,
            half=half,
            background=background,
        )
    ok = fit.ok & (fit.amp > 0)
    m = len(kept)
    # back to the uploaded pixels: remove the averaging box, scale by the factor
    cov_work = fit.cov
    if factor > 1:
        unboxed = cov_work - BOX_VARIANCE * np.eye(2)
        det_fit = np.linalg.det(cov_work)
        det_unboxed = np.linalg.det(unboxed)
        boost = np.sqrt(np.where(det_unboxed > 0, det_fit / np.maximum(det_unboxed, 1e-30), 1.0))
        cov_up = unboxed * f**2
    else:
        boost = np.ones(m)
        cov_up = cov_work
    peak = fit.amp * boost
    det_beam = float(np.linalg.det(beam_cov))
    int_beams = np.sqrt(np.maximum(np.linalg.det(cov_up), 0.0) / det_beam)
    maj_w, min_w, _ = axes_of(cov_work)
    err = condon_errors(fit.amp, maj_w, min_w, rms[kept].astype(np.float64), beam_fwhm)
    peak_err = err["amp"] * boost
    int_rel = err["int_rel"]
    cov_err = {
        "x_major": err["x_major"] * f,
        "y_minor": err["y_minor"] * f,
        "maj": err["maj"] * f,
        "min": err["min"] * f,
        "theta": err["theta"],
    }
    xs = np.where(ok, fit.x, x[kept]) * f + (f - 1) / 2
    ys = np.where(ok, fit.y, y[kept]) * f + (f - 1) / 2
    # where the fit failed: the network's estimates
    bad = ~ok
    if bad.any():
        if guess_cov is not None:
            cov_up[bad] = guess_cov[kept[bad]]
        else:
            cov_up[bad] = beam_cov
        if guess_peak is not None:
            peak[bad] = guess_peak[kept[bad]]
        if guess_int_beams is not None:
            int_beams[bad] = guess_int_beams[kept[bad]]
        else:
            int_beams[bad] = np.sqrt(np.linalg.det(cov_up[bad]) / det_beam)
        peak_err[bad] = rms[kept][bad]
        int_rel[bad] = np.nan
        for key in cov_err:
            cov_err[key][bad] = np.nan
    return Measured(
        kept=kept,
        x=xs,
        y=ys,
        peak=peak,
        peak_err=peak_err,
        int_beams=int_beams,
        int_rel_err=int_rel,
        cov=cov_up,
        cov_err=cov_err,
        fitted=ok,
        rms=rms[kept].astype(np.float64),
        bg=bg[kept].astype(np.float64),
    )


def _duplicates(
    x: np.ndarray, y: np.ndarray, amp: np.ndarray, ok: np.ndarray, reach: float
) -> np.ndarray:
    """The fainter member of each pair of good fits closer than ``reach`` pixels."""
    out = np.zeros(len(x), dtype=bool)
    good = np.flatnonzero(ok & np.isfinite(x) & np.isfinite(y))
    if good.size < 2:
        return out
    i, j = close_pairs(x[good], y[good], reach)
    i, j = good[i], good[j]
    for a, b in sorted(
        zip(i.tolist(), j.tolist(), strict=True), key=lambda p: -max(amp[p[0]], amp[p[1]])
    ):
        if out[a] or out[b]:
            continue
        out[b if amp[a] >= amp[b] else a] = True
    return out


# --------------------------------------------------------------------------- sky


def pixel_jacobians(wcs: WCS, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, 2, 2) local Jacobians, arcsec of (East, North) (ICRS) per pixel step along x
    (column 0) and y (column 1), at pixel positions (x, y)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wcslib warns on pixels outside the projection
        c0 = wcs.pixel_to_world(x, y).icrs
        cx = wcs.pixel_to_world(x + 1.0, y).icrs
        cy = wcs.pixel_to_world(x, y + 1.0).icrs
    jac = np.empty((len(x), 2, 2))
    for col, other in ((0, cx), (1, cy)):
        east, north = c0.spherical_offsets_to(other)
        jac[:, 0, col] = np.asarray(east.arcsec, dtype=np.float64).reshape(-1)
        jac[:, 1, col] = np.asarray(north.arcsec, dtype=np.float64).reshape(-1)
    return jac


def beam_pixel_cov(
    wcs: WCS, x: float, y: float, bmaj_arcsec: float, bmin_arcsec: float, bpa_deg: float
) -> np.ndarray:
    """The beam's covariance (2, 2) in pixels at pixel (x, y): FWHM axes in arcsec and the
    position angle East of North."""
    jac = pixel_jacobians(wcs, np.array([x]), np.array([y]))[0]
    pa = math.radians(bpa_deg)
    # major axis direction in (East, North)
    sky = covariance_of(np.array(bmaj_arcsec), np.array(bmin_arcsec), np.array(math.pi / 2 - pa))
    # covariance_of measures the angle from the first axis (East) towards the second (North)
    inv = np.linalg.inv(jac)
    return np.asarray(inv @ sky @ inv.T)


def sky_shapes(jac: np.ndarray, cov_pix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FWHM axes (arcsec) and position angle (degrees East of North, 0..180) of pixel
    covariances (N, 2, 2), through the local Jacobians (N, 2, 2) of :func:`pixel_jacobians`."""
    sky = jac @ cov_pix @ np.swapaxes(jac, 1, 2)
    maj, mn, theta = axes_of(sky)  # theta from East towards North
    pa = np.mod(90.0 - np.degrees(theta), 180.0)
    return maj, mn, pa


def to_sky_errors(
    jac: np.ndarray, cov_pix: np.ndarray, err_major: np.ndarray, err_minor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1-sigma errors (arcsec) along RA and Dec of centres whose pixel errors are given
    along the source's major and minor axes."""
    _, _, theta = axes_of(cov_pix)
    err_cov = covariance_of(
        err_major * FWHM_PER_SIGMA, err_minor * FWHM_PER_SIGMA, np.nan_to_num(theta)
    )
    sky = jac @ err_cov @ np.swapaxes(jac, 1, 2)
    return np.sqrt(np.maximum(sky[:, 0, 0], 0.0)), np.sqrt(np.maximum(sky[:, 1, 1], 0.0))


def deconvolved_sky(
    jac: np.ndarray, cov_pix: np.ndarray, beam_cov_pix: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intrinsic FWHM axes (arcsec; 0 where unresolved) and position angle (degrees) of
    beam-convolved pixel covariances, the beam's removed."""
    sky = jac @ cov_pix @ np.swapaxes(jac, 1, 2)
    beam = jac @ beam_cov_pix @ np.swapaxes(jac, 1, 2)
    maj, mn, theta = deconvolve(sky, beam)
    pa = np.mod(90.0 - np.degrees(theta), 180.0)
    return maj, mn, np.where(maj > 0, pa, np.nan)
