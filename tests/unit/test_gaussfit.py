"""Batched Gaussian fits, Condon (1997) errors, deconvolution, and candidate merging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from astro_otf.imaging.gaussfit import (
    axes_of,
    condon_errors,
    covariance_of,
    deconvolve,
    fit_gaussians,
)
from astro_otf.imaging.merge import bilinear, close_pairs, merge_candidates


def gaussian_image(
    shape: tuple[int, int],
    sources: list[tuple[float, float, float, float, float, float]],
) -> np.ndarray:
    """Sum of Gaussians (x, y, peak, maj FWHM, min FWHM, pixel angle)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for x, y, peak, maj, mn, theta in sources:
        inv = np.linalg.inv(covariance_of(np.array(maj), np.array(mn), np.array(theta)))
        dx, dy = xx - x, yy - y
        image += peak * np.exp(
            -0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy)
        )
    return image


def test_axes_and_covariance_round_trip() -> None:
    cov = covariance_of(np.array([6.0, 3.0]), np.array([2.0, 3.0]), np.array([0.4, 0.0]))
    maj, mn, theta = axes_of(cov)
    np.testing.assert_allclose(maj, [6.0, 3.0])
    np.testing.assert_allclose(mn, [2.0, 3.0])
    assert theta[0] == pytest.approx(0.4)


def test_a_noiseless_source_is_fitted_exactly() -> None:
    image = gaussian_image((64, 64), [(30.3, 33.7, 10.0, 7.0, 4.0, 0.6)])
    beam = covariance_of(np.array(4.0), np.array(4.0), np.array(0.0))
    fit = fit_gaussians(image, np.array([0.01]), np.array([30.0]), np.array([34.0]), beam)
    assert fit.ok[0]
    assert fit.x[0] == pytest.approx(30.3, abs=1e-3) and fit.y[0] == pytest.approx(33.7, abs=1e-3)
    assert fit.amp[0] == pytest.approx(10.0, rel=1e-3)
    maj, mn, theta = axes_of(fit.cov)
    assert maj[0] == pytest.approx(7.0, rel=1e-3) and mn[0] == pytest.approx(4.0, rel=1e-3)
    assert theta[0] == pytest.approx(0.6, abs=1e-3)


def test_noisy_point_sources_are_unbiased_and_their_errors_hold() -> None:
    """200 point sources at S/N 20 in white noise: the peak is unbiased and the Condon
    error describes the scatter."""
    rng = np.random.default_rng(7)
    beam_fwhm = 4.0
    xs, ys = np.meshgrid(np.arange(20, 400, 27.0), np.arange(20, 400, 27.0))
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    image = gaussian_image(
        (420, 420), [(x, y, 20.0, beam_fwhm, beam_fwhm, 0.0) for x, y in zip(xs, ys, strict=True)]
    )
    image += rng.standard_normal(image.shape)
    beam = covariance_of(np.array(beam_fwhm), np.array(beam_fwhm), np.array(0.0))
    fit = fit_gaussians(image, np.ones(xs.size), xs + 0.3, ys - 0.3, beam)
    assert fit.ok.mean() > 0.98
    maj, mn, _ = axes_of(fit.cov)
    assert np.median(fit.amp) == pytest.approx(20.0, rel=0.02)
    assert np.median(fit.amp * maj * mn / beam_fwhm**2) == pytest.approx(20.0, rel=0.04)
    # white (not beam-correlated) noise: Condon's errors with a noise FWHM of ~1 pixel
    err = condon_errors(fit.amp, maj, mn, np.ones(xs.size), 1.0)
    pull = (fit.amp - 20.0) / err["amp"]
    assert 0.7 < float(np.std(pull)) < 1.4


def test_neighbours_share_a_blend_instead_of_counting_it_twice() -> None:
    image = gaussian_image(
        (64, 64), [(28.0, 32.0, 10.0, 4.0, 4.0, 0.0), (33.5, 32.0, 6.0, 4.0, 4.0, 0.0)]
    )
    beam = covariance_of(np.array(4.0), np.array(4.0), np.array(0.0))
    fit = fit_gaussians(
        image, np.full(2, 0.01), np.array([28.0, 34.0]), np.array([32.0, 32.0]), beam
    )
    assert fit.ok.all()
    np.testing.assert_allclose(fit.amp, [10.0, 6.0], rtol=0.05)


def test_deconvolution_removes_the_beam() -> None:
    beam = covariance_of(np.array(5.0), np.array(5.0), np.array(0.0))
    source = covariance_of(np.array(4.0), np.array(3.0), np.array(0.3))
    maj, mn, theta = deconvolve(beam + source, beam)
    assert float(maj) == pytest.approx(4.0) and float(mn) == pytest.approx(3.0)
    assert float(theta) == pytest.approx(0.3)
    maj, mn, _ = deconvolve(beam * 0.98, beam)  # narrower than the beam: unresolved
    assert float(maj) == 0 and float(mn) == 0


def test_condon_errors_shrink_with_snr() -> None:
    e10 = condon_errors(np.array([10.0]), np.array([4.0]), np.array([4.0]), np.array([1.0]), 4.0)
    e100 = condon_errors(np.array([100.0]), np.array([4.0]), np.array([4.0]), np.array([1.0]), 4.0)
    assert e100["amp"][0] == pytest.approx(e10["amp"][0], rel=1e-6)  # absolute: the same
    assert e100["x_major"][0] == pytest.approx(e10["x_major"][0] / 10, rel=1e-6)
    assert e100["int_rel"][0] == pytest.approx(e10["int_rel"][0] / 10, rel=1e-6)
    # a point source of S/N 10 in a beam-correlated image: sqrt(2)/rho with rho = S/N / 2
    assert e10["amp"][0] / 10 == pytest.approx(math.sqrt(2) / (10 / 2 * 2**1.5), rel=1e-6)


def test_bilinear_samples_between_pixels() -> None:
    image = np.arange(16.0).reshape(4, 4)
    np.testing.assert_allclose(
        bilinear(image, np.array([1.5, 0.0]), np.array([2.0, 0.5])), [9.5, 2.0]
    )
    assert np.isnan(bilinear(image, np.array([-3.0]), np.array([1.0]))[0])


def test_close_pairs_are_found_once() -> None:
    x = np.array([0.0, 1.0, 10.0, 10.5, 30.0])
    y = np.array([0.0, 0.0, 10.0, 10.0, 0.0])
    i, j = close_pairs(x, y, 2.0)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (2, 3)]


def test_a_split_point_source_merges_and_a_real_pair_stays_two() -> None:
    beam = covariance_of(np.array(6.0), np.array(6.0), np.array(0.0))
    rng = np.random.default_rng(3)
    bright = (30.0, 30.0, 200.0, 6.0, 6.0, 0.0)
    pair = [(60.0, 60.0, 30.0, 6.0, 6.0, 0.0), (69.0, 60.0, 30.0, 6.0, 6.0, 0.0)]
    image = gaussian_image((96, 96), [bright, *pair])
    image += rng.standard_normal(image.shape)
    # three candidates on the bright source (0.3-0.5 beam apart), one on each of the pair
    x = np.array([30.0, 32.5, 28.5, 60.0, 69.0])
    y = np.array([30.0, 31.0, 29.0, 60.0, 60.0])
    owner = merge_candidates(image, x, y, np.ones(5), beam)
    assert owner.tolist()[:3] == [0, 0, 0]
    assert owner[3] == 3 and owner[4] == 4  # 1.5 beams apart with a saddle: two sources


def test_a_faint_companion_on_a_bright_wing_stays() -> None:
    """No saddle (the bright wing falls through it), but it stands out above the wing."""
    beam = covariance_of(np.array(5.0), np.array(5.0), np.array(0.0))
    image = gaussian_image(
        (80, 80), [(30.0, 40.0, 1000.0, 5.0, 5.0, 0.0), (37.0, 40.0, 40.0, 5.0, 5.0, 0.0)]
    )
    owner = merge_candidates(
        image, np.array([30.0, 37.0]), np.array([40.0, 40.0]), np.ones(2), beam
    )
    assert owner.tolist() == [0, 1]
