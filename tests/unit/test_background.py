"""The local background and rms map (imaging/background.py) and its normalisation step."""

from __future__ import annotations

import numpy as np
import pytest

from astro_otf.domain.errors import JobFailure
from astro_otf.imaging.background import box_size, noise_map
from astro_otf.imaging.normalise import parse_chain


def test_a_noise_step_across_the_image_is_followed() -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((512, 512)).astype(np.float32)
    data[:, 256:] *= 3.0
    data += 5.0
    noise = noise_map(data, 32)
    bg, rms = noise.window(0, 512, 0, 512)
    assert bg.shape == rms.shape == (512, 512)
    assert np.median(rms[:, :200]) == pytest.approx(1.0, rel=0.08)
    assert np.median(rms[:, 312:]) == pytest.approx(3.0, rel=0.08)
    assert np.median(bg) == pytest.approx(5.0, abs=0.1)


def test_sources_do_not_count_as_noise() -> None:
    """Bright compact sources on every box: the clipped rms stays the noise's."""
    rng = np.random.default_rng(2)
    data = rng.standard_normal((256, 256))
    yy, xx = np.mgrid[0:256, 0:256]
    for cy in range(8, 256, 24):
        for cx in range(8, 256, 24):
            data += 200 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2))
    noise = noise_map(data, 32)
    assert noise.global_rms == pytest.approx(1.0, rel=0.15)
    unclipped = 1.4826 * np.median(np.abs(data - np.median(data)))
    assert unclipped > noise.global_rms  # the sources would have raised a plain MAD


def test_blank_borders_take_their_neighbours_values() -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((200, 200)).astype(np.float32) * 2
    data[:, :70] = np.nan  # a mosaic's blank border, wider than two boxes
    noise = noise_map(data, 32)
    assert np.isfinite(noise.rms).all() and np.isfinite(noise.bg).all()
    assert noise.at(np.array([10.0]), np.array([100.0]))[1][0] == pytest.approx(2.0, rel=0.15)


def test_an_image_with_no_valid_box_is_refused() -> None:
    with pytest.raises(ValueError, match="no box"):
        noise_map(np.full((64, 64), np.nan, dtype=np.float32), 16)


def test_values_are_interpolated_smoothly_between_box_centres() -> None:
    data = np.zeros((64, 128), dtype=np.float32)
    rng = np.random.default_rng(4)
    data[:] = rng.standard_normal(data.shape)
    data[:, 64:] *= 4
    noise = noise_map(data, 32)
    _, rms = noise.window(0, 64, 0, 128)
    row = rms[32]
    assert np.all(np.diff(row[16:112]) >= -1e-4)  # monotone between the two levels
    assert row[0] < row[-1]


def test_box_size_follows_the_beam_and_the_image() -> None:
    assert box_size((1000, 1000), 2.5, 10) == 25
    assert box_size((1000, 1000), 1.0, 10) == 16  # never under 16 pixels
    assert box_size((100, 1000), 10.0, 10) == 50  # at most half the shorter side
    assert box_size((20, 20), 5.0, 10) == 20  # too small for two boxes: one box
    assert box_size((1000, 1000), None, 10) == 64


def test_the_local_step_normalises_each_tile_by_its_own_noise() -> None:
    rng = np.random.default_rng(5)
    data = rng.standard_normal((256, 256)).astype(np.float32)
    data[128:] *= 10
    chain = parse_chain([{"op": "local_standardise", "box_beams": 8}, {"op": "nan"}])
    fitted = chain.fit(data, beam_pix=4.0)
    low = fitted.apply(data[:64, :64], (0, 0))
    high = fitted.apply(data[192:, 192:], (192, 192))
    assert np.std(low) == pytest.approx(1.0, rel=0.15)
    assert np.std(high) == pytest.approx(1.0, rel=0.15)
    assert fitted.noise_map is not None
    assert fitted.noise is not None and fitted.noise[1] > 1.0  # the map's median rms
    with pytest.raises(RuntimeError, match="origin"):
        fitted.apply(data[:8, :8])


def test_the_local_step_must_come_first_and_alone() -> None:
    with pytest.raises(ValueError, match="first step"):
        parse_chain([{"op": "asinh"}, {"op": "local_standardise"}])
    with pytest.raises(ValueError, match="no other step"):
        parse_chain([{"op": "local_standardise"}, {"op": "clip", "lo_percentile": 1}])
    with pytest.raises(ValueError, match="box_beams"):
        parse_chain([{"op": "local_standardise", "box_beams": 0.5}])


def test_a_constant_image_cannot_be_put_in_units_of_its_noise() -> None:
    chain = parse_chain([{"op": "local_standardise"}])
    with pytest.raises(JobFailure, match="no noise"):
        chain.fit(np.ones((64, 64), dtype=np.float32), beam_pix=3.0)
