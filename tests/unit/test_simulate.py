"""The training simulation (training/simulate.py): fluxes, noise, truth and the held-out sky.

The detector's evaluation is only as honest as these fields: a source must carry the flux
its truth says, the noise must have the rms and beam-scale correlation asked for, and the
held-out fields must hold sources training never draws.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import simulate as sim


def one_source(
    profile: int, maj: float, mn: float, theta: float = 0.3, at: float = 30.0
) -> sim.Sources:
    def a(v: float) -> np.ndarray:
        return np.array([v])

    return sim.Sources(
        a(at + 0.3), a(at - 0.2), a(1e-4), a(maj), a(mn), a(theta), np.array([profile]),
        np.array([3]), np.array([1]),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "maj", "mn"), [(2, 0.0, 0.0), (2, 6.0, 3.0), (3, 5.0, 2.5), (3, 1.0, 1.0)]
)
def test_a_source_carries_its_flux_in_jy_per_beam_pixels(
    profile: int, maj: float, mn: float
) -> None:
    spec = sim.FieldSpec(shape=(128, 128))
    image, truth = sim.render(one_source(profile, maj, mn, at=64.0), spec, None)
    # the sum of Jy/beam pixels over the beam area in pixels is the integrated flux
    assert image.sum() / spec.beam_area == pytest.approx(1e-4, rel=0.01)
    assert truth["flux"][0] == 1e-4
    # the peak the truth states is the profile's maximum (sampled within a pixel of it)
    assert image.max() == pytest.approx(truth["peak"][0], rel=0.15)
    assert image.max() <= truth["peak"][0] * 1.0001


def test_a_point_source_peaks_at_its_flux_and_has_the_beam_size() -> None:
    spec = sim.FieldSpec(shape=(64, 64))
    _, truth = sim.render(one_source(2, 0.0, 0.0), spec, None)
    assert truth["peak"][0] == pytest.approx(1e-4)
    assert truth["maj"][0] == pytest.approx(spec.beam_maj)
    assert truth["min"][0] == pytest.approx(spec.beam_min)


def test_observed_size_adds_the_beam_in_quadrature() -> None:
    spec = sim.FieldSpec(shape=(64, 64))
    _, truth = sim.render(one_source(2, 4.0, 2.0, theta=0.0), spec, None)
    assert truth["maj"][0] == pytest.approx(math.hypot(4.0, spec.beam_maj))
    assert truth["min"][0] == pytest.approx(math.hypot(2.0, spec.beam_min))
    assert truth["theta"][0] == pytest.approx(0.0, abs=1e-9)


def test_exponential_mixture_matches_the_profile() -> None:
    fractions, variances = sim.exponential_mixture()
    assert fractions.sum() == pytest.approx(1.0)
    r = np.linspace(0.0, 6.0, 61)
    profile = sum(
        f / (2 * math.pi * v) * np.exp(-0.5 * r**2 / v)
        for f, v in zip(fractions, variances, strict=True)
    )
    expected = np.exp(-r) / (2 * math.pi)  # exp(-r) normalised over the plane
    assert np.max(np.abs(profile - expected)[5:]) < 0.02 * expected[0]


def test_noise_has_the_rms_and_is_correlated_on_the_beam() -> None:
    spec = sim.FieldSpec(shape=(256, 256), beam_maj=4.0, beam_min=4.0, rms=2e-6)
    noise = sim.noise(spec, np.random.default_rng(3))
    assert noise.std() == pytest.approx(2e-6, rel=1e-6)
    lag1 = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    lag12 = np.corrcoef(noise[:, :-12].ravel(), noise[:, 12:].ravel())[0, 1]
    # white noise through a Gaussian beam of sigma s correlates pixels d apart by
    # exp(-d^2 / (4 s^2)): about 0.92 for neighbours under a 4 px FWHM beam
    sigma = 4.0 / sim.FWHM_PER_SIGMA
    assert lag1 == pytest.approx(math.exp(-1 / (4 * sigma**2)), abs=0.02)
    assert abs(lag12) < 0.1


def test_training_never_draws_a_held_out_source() -> None:
    cat = sim.catalogue()
    rows = sim.training_rows()
    x0, y0, x1, y1 = sim.HELDOUT_BOX
    inside = (cat["x"] >= x0) & (cat["x"] < x1) & (cat["y"] >= y0) & (cat["y"] < y1)
    assert inside.sum() > 1000  # the held-out sky is populated
    assert not np.intersect1d(np.flatnonzero(inside), rows).size
    for x, y in sim.heldout_origins():
        box = (x, y, x + sim.HELDOUT_SIZE, y + sim.HELDOUT_SIZE)
        r = sim.RESERVED_BOX
        assert not (box[0] < r[2] and r[0] < box[2] and box[1] < r[3] and r[1] < box[3])


def test_held_out_fields_are_reproducible_fits_with_truth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from astropy.io import fits
    from astropy.table import Table

    image, truth = sim.write_field(tmp_path / "f", *sim.HELDOUT_BOX[:2], 128, seed=5)
    again, _ = sim.write_field(tmp_path / "g", *sim.HELDOUT_BOX[:2], 128, seed=5)
    np.testing.assert_array_equal(fits.getdata(image), fits.getdata(again))
    header = fits.getheader(image)
    assert header["BUNIT"] == "JY/BEAM" and header["BMAJ"] * 3600 == pytest.approx(1.5)
    table = Table.read(truth, format="ascii.csv")
    assert len(table) > 10 and {"ra", "dec", "int_flux", "peak_flux", "snr"} <= set(table.colnames)
    assert (table["x"] >= -0.5).all() and (table["x"] < 127.5).all()
