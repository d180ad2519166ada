"""From candidates to measured sources on the sky (imaging/measure.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.wcs import WCS

from astro_otf.imaging.background import noise_map
from astro_otf.imaging.gaussfit import axes_of, covariance_of
from astro_otf.imaging.measure import (
    beam_pixel_cov,
    deconvolved_sky,
    measure,
    pixel_jacobians,
    sky_shapes,
    to_sky_errors,
)
from astro_otf.imaging.resample import block_mean


def wcs(rotation_deg: float = 0.0, scale_arcsec: float = 2.0, flip: bool = False) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [150.0, -30.0]
    w.wcs.crpix = [64.0, 64.0]
    r = math.radians(rotation_deg)
    s = scale_arcsec / 3600
    sign = 1.0 if flip else -1.0  # the usual images have RA growing to the left
    w.wcs.cd = [
        [sign * s * math.cos(r), -s * math.sin(r)],
        [sign * s * math.sin(r), s * math.cos(r)],
    ]
    return w


@pytest.mark.parametrize("rotation", [0.0, 30.0, -75.0])
@pytest.mark.parametrize("flip", [False, True])
def test_a_beam_goes_to_pixels_and_back_to_the_sky(rotation: float, flip: bool) -> None:
    w = wcs(rotation, flip=flip)
    cov = beam_pixel_cov(w, 63.0, 63.0, 12.0, 6.0, 40.0)
    jac = pixel_jacobians(w, np.array([63.0]), np.array([63.0]))
    maj, mn, pa = sky_shapes(jac, cov[None])
    assert maj[0] == pytest.approx(12.0, rel=1e-4) and mn[0] == pytest.approx(6.0, rel=1e-4)
    assert pa[0] == pytest.approx(40.0, abs=0.01)


def test_a_north_south_source_on_a_plain_image_is_along_y() -> None:
    w = wcs()
    cov = beam_pixel_cov(w, 63.0, 63.0, 10.0, 4.0, 0.0)  # PA 0: north, +y on this image
    maj, mn, theta = axes_of(cov)
    assert float(theta) == pytest.approx(math.pi / 2, abs=1e-3)
    assert float(maj) == pytest.approx(5.0, rel=1e-3) and float(mn) == pytest.approx(2.0, rel=1e-3)
    east = beam_pixel_cov(w, 63.0, 63.0, 10.0, 4.0, 90.0)
    assert float(axes_of(east)[2]) == pytest.approx(0.0, abs=1e-3) or float(
        axes_of(east)[2]
    ) == pytest.approx(math.pi, abs=1e-3)


def test_position_errors_along_the_axes_become_ra_and_dec_errors() -> None:
    w = wcs()
    jac = pixel_jacobians(w, np.array([63.0]), np.array([63.0]))
    north = beam_pixel_cov(w, 63.0, 63.0, 10.0, 4.0, 0.0)[None]
    ra_err, dec_err = to_sky_errors(jac, north, np.array([1.0]), np.array([0.25]))
    # the major axis points north: its error is the Dec error (pixels of 2")
    assert dec_err[0] == pytest.approx(2.0, rel=1e-3) and ra_err[0] == pytest.approx(0.5, rel=1e-3)


def test_deconvolution_on_the_sky() -> None:
    w = wcs(20.0)
    jac = pixel_jacobians(w, np.array([63.0]), np.array([63.0]))
    beam = beam_pixel_cov(w, 63.0, 63.0, 6.0, 6.0, 0.0)
    source = beam_pixel_cov(w, 63.0, 63.0, 8.0, 3.0, 120.0)
    maj, mn, pa = deconvolved_sky(jac, (beam + source)[None], beam)
    assert maj[0] == pytest.approx(8.0, rel=1e-4) and mn[0] == pytest.approx(3.0, rel=1e-4)
    assert pa[0] == pytest.approx(120.0, abs=0.01)


def field(beam_fwhm: float, size: int, sources: list[tuple[float, float, float]], seed: int = 1):
    """A noise field (rms 1, correlated on the beam) with round point sources (x, y, peak)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    sigma = beam_fwhm / 2.3548
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (math.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    noise = np.fft.ifft2(np.fft.fft2(white) * kernel).real
    image = noise / noise.std()
    for x, y, peak in sources:
        image += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


def test_sources_of_a_block_averaged_image_are_measured_in_its_own_pixels() -> None:
    """A 15 px beam averaged 3 x 3 (as the detector does): positions, peaks and integrated
    fluxes come back in the uploaded image's pixels and units."""
    sources = [(60.2, 70.7, 40.0), (200.0, 150.0, 80.0), (120.0, 220.0, 25.0)]
    image = field(15.0, 300, sources)
    averaged = block_mean(image, 3)
    noise = noise_map(averaged, 32)
    beam = covariance_of(np.array(15.0), np.array(15.0), np.array(0.0))
    x = np.array([(s[0] - 1) / 3 for s in sources]) + 0.3
    y = np.array([(s[1] - 1) / 3 for s in sources]) - 0.2
    m = measure(averaged, noise, x, y, beam, factor=3)
    assert m.fitted.all() and len(m.kept) == 3
    np.testing.assert_allclose(m.x, [s[0] for s in sources], atol=1.0)
    np.testing.assert_allclose(m.y, [s[1] for s in sources], atol=1.0)
    np.testing.assert_allclose(m.peak, [s[2] for s in sources], rtol=0.1)
    np.testing.assert_allclose(m.int_beams, 1.0, rtol=0.15)  # unresolved: one beam
    assert (m.int_rel_err > 0).all() and (m.peak_err > 0).all()


def test_candidates_on_one_source_give_one_row_and_a_failed_fit_falls_back() -> None:
    image = field(6.0, 128, [(40.0, 40.0, 300.0)])
    image[90:, 90:] = np.nan  # a blank corner
    noise = noise_map(image, 32)
    beam = covariance_of(np.array(6.0), np.array(6.0), np.array(0.0))
    x = np.array([40.0, 41.8, 38.5, 100.0])  # three on the source, one in the blank corner
    y = np.array([40.0, 39.0, 41.0, 100.0])
    guess = np.broadcast_to(beam, (4, 2, 2))
    m = measure(image, noise, x, y, beam, guess_cov=guess, guess_peak=np.full(4, 7.0),
                guess_int_beams=np.full(4, 1.5))  # fmt: skip
    assert len(m.kept) == 2 and m.kept[0] == 0
    assert m.fitted[0] and not m.fitted[1]
    assert m.peak[0] == pytest.approx(300.0, rel=0.05)
    assert m.peak[1] == 7.0 and m.int_beams[1] == 1.5  # the network's estimate, said so
