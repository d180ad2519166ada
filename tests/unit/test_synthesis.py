"""The interferometric simulation the detector is trained and judged on
(training/interferometer.py, training/synthesis.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from training import interferometer as itf
from training import synthesis as syn


def test_arrays_are_fixed_and_shaped_like_their_telescopes() -> None:
    vla = itf.array("vla-a")
    assert vla.enu.shape == (27, 3)
    azimuths = np.degrees(np.arctan2(vla.enu[:, 0], vla.enu[:, 1])) % 360
    assert sorted(np.unique(np.round(azimuths))) == [5.0, 125.0, 245.0]
    meerkat = itf.array("meerkat")
    assert len(meerkat.enu) == 64
    radius = np.hypot(meerkat.enu[:, 0], meerkat.enu[:, 1])
    assert (radius < 500).sum() == 48 and radius.max() < 4000
    itf.array.cache_clear()
    np.testing.assert_array_equal(itf.array("meerkat").enu, meerkat.enu)  # same every time
    with pytest.raises(ValueError, match="unknown array"):
        itf.array("alma")


@pytest.mark.parametrize(("name", "robust", "beam"), [("meerkat", 0.0, 5.0), ("vla-b", None, 3.0)])
def test_the_beam_has_the_size_asked_and_a_peak_of_one(
    name: str, robust: float | None, beam: float
) -> None:
    uv = itf.uv_tracks(itf.array(name), 20.0, 2.0, times=16)
    b = itf.make_beam(uv, (128, 128), beam, robust)
    assert math.sqrt(b.clean_maj * b.clean_min) == pytest.approx(beam, rel=0.05)
    dirty = b.dirty_beam()
    assert dirty[64, 64] == pytest.approx(1.0)
    assert dirty.max() == pytest.approx(1.0)
    far = np.hypot(*np.mgrid[-64:64, -64:64]) > 3 * beam
    assert 0.01 < np.abs(dirty[far]).max() < 0.6  # sidelobes: present, below the peak


def test_noise_has_the_rms_asked_and_the_beams_correlation() -> None:
    uv = itf.uv_tracks(itf.array("askap"), -40.0, 4.0, times=16)
    b = itf.make_beam(uv, (256, 256), 6.0, 0.0)
    noise = b.noise(np.random.default_rng(1), 2.5)
    assert noise.std() == pytest.approx(2.5, rel=1e-6)
    corr = [float(np.mean(noise * np.roll(noise, s, axis=1))) / noise.var() for s in (1, 12)]
    assert corr[0] > 0.8 and abs(corr[1]) < 0.3  # correlated within a beam, not beyond


def point_sky(x: float, y: float, flux: float) -> syn.Components:
    return syn.Components(
        np.array([x]), np.array([y]), np.array([flux]), np.zeros(1), np.zeros(1), np.zeros(1),
        np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64),
    )  # fmt: skip


def test_a_cleaned_point_source_peaks_at_its_flux() -> None:
    obs = syn.Observation("vla-c", 40.0, 3.0, 0.0, 0.0, 0.0, 4.0, 1e-3, 3.0, 0.0)
    field = syn.render_field(obs, syn.Population(), (128, 128), np.random.default_rng(2),
                             sky=point_sky(64.3, 60.8, 1.0))  # fmt: skip
    assert field.image[61, 64] == pytest.approx(1.0, rel=0.03)
    t = field.truth
    assert (
        len(t["x"]) == 1 and t["x"][0] == pytest.approx(64.3) and t["peak"][0] == pytest.approx(1.0)
    )
    assert t["snr"][0] == pytest.approx(1.0 / 1e-3, rel=0.2)


def test_what_clean_leaves_keeps_the_dirty_beams_sidelobes() -> None:
    """A source below the CLEAN threshold stays convolved with the dirty beam: its image is
    the dirty beam itself."""
    obs = syn.Observation("vla-b", 30.0, 0.05, None, 0.0, 0.0, 3.0, 1.0, 1e9, 0.0)
    clean = replace(obs, clean_sigma=0.0)
    for o, sidelobes in ((obs, True), (clean, False)):
        f = syn.render_field(replace(o, rms=1e-9), syn.Population(), (128, 128),
                             np.random.default_rng(3), sky=point_sky(64.0, 64.0, 1.0))  # fmt: skip
        far = np.hypot(*np.mgrid[-64:64, -64:64]) > 4 * obs.beam_pix
        assert (np.abs(f.image[far]).max() > 0.05) == sidelobes


def test_a_primary_beam_corrected_image_is_noisier_at_its_edge() -> None:
    obs = syn.Observation("meerkat", -30.0, 2.0, 0.0, 0.0, 0.0, 4.0, 1.0, 3.0, 0.0,
                          pb_fwhm=200.0, pb_cutoff=0.3)  # fmt: skip
    f = syn.render_field(obs, syn.Population(per_beam=1e-9), (256, 256), np.random.default_rng(4))
    centre = f.image[96:160, 96:160].std()
    corner = f.noise_rms[:20, :20]
    assert np.isnan(f.image[0, 0])  # below the cutoff: blank
    assert np.nanmax(f.noise_rms) > 3 * np.nanmin(f.noise_rms)
    assert centre == pytest.approx(1.0, rel=0.2) and np.isnan(corner).any()


def test_lobes_with_a_saddle_are_two_units_and_without_one() -> None:
    beam = 4.0
    cov = np.diag([(beam / syn.FWHM) ** 2] * 2)

    def lobes(sep: float) -> dict[str, np.ndarray]:
        comps = syn.Components(
            np.array([50.0, 50.0 + sep]), np.array([50.0, 50.0]), np.array([1.0, 0.8]),
            np.array([2.0, 2.0]), np.array([1.0, 1.0]), np.zeros(2), np.zeros(2, np.int64),
            np.ones(2, np.int64),
        )  # fmt: skip
        return syn.units(comps, cov, (100, 100), np.ones((100, 100)))

    far, close = lobes(6 * beam), lobes(0.8 * beam)
    assert len(far["x"]) == 2 and (far["kind"] == 1).all()
    assert len(close["x"]) == 1 and close["flux"][0] == pytest.approx(1.8)
    assert 50.0 < close["x"][0] < 50.0 + 0.8 * beam  # the flux-weighted centre


def test_held_out_configurations_are_reproducible() -> None:
    config = replace(syn.CONFIGS["vla"], size=128)
    a = syn.config_field(config, config.seeds[0])
    b = syn.config_field(config, config.seeds[0])
    np.testing.assert_array_equal(a.image, b.image)
    assert set(syn.CONFIGS) >= {"meerkat", "askap", "lofar", "vla"}
    seeds = [s for c in syn.CONFIGS.values() for s in c.seeds]
    assert len(seeds) == len(set(seeds))


def test_the_training_pool_is_the_same_whatever_the_processes() -> None:
    from training import dataset

    one = dataset.make_pool(11, 3, workers=1)
    two = dataset.make_pool(11, 3, workers=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.x, b.x)


@pytest.mark.parametrize(("k", "flip"), [(0, False), (1, False), (2, True), (3, True)])
def test_rotated_patches_keep_truth_on_the_source(k: int, flip: bool) -> None:
    """The augmentation moves the truth with the pixels: position and angle of an elongated
    source, measured from the transformed image's moments."""
    from training import dataset

    n = 64
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    x0, y0, theta = 20.0, 41.0, 0.5
    inv = np.linalg.inv(sim_cov(8.0, 3.0, theta))
    dx, dy = xx - x0, yy - y0
    image = np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy))
    field = dataset.PoolField(
        image.astype(np.float16), np.array([x0]), np.array([y0]), np.array([10.0]),
        np.array([1.0]), np.array([8.0]), np.array([3.0]), np.array([theta]), 3.0,
    )  # fmt: skip
    out, x, y, angle = dataset._dihedral(field, k, flip)
    w = np.asarray(out, dtype=np.float64)
    mx, my = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    assert mx == pytest.approx(x[0], abs=0.01) and my == pytest.approx(y[0], abs=0.01)
    cxx = (w * (xx - mx) ** 2).sum()
    cyy = (w * (yy - my) ** 2).sum()
    cxy = (w * (xx - mx) * (yy - my)).sum()
    measured = 0.5 * math.atan2(2 * cxy, cxx - cyy) % math.pi
    assert abs((measured - angle[0] + math.pi / 2) % math.pi - math.pi / 2) < 0.02


def sim_cov(maj: float, mn: float, theta: float) -> np.ndarray:
    from astro_otf.imaging.gaussfit import covariance_of

    return covariance_of(np.array(maj), np.array(mn), np.array(theta))
