"""Block averaging for wide beams (astro_otf.imaging.resample)."""

from __future__ import annotations

import numpy as np
import pytest

from astro_otf.imaging.resample import block_mean


def test_blocks_average_and_the_edge_keeps_what_is_left() -> None:
    data = np.arange(5 * 7, dtype=np.float64).reshape(5, 7)
    out = block_mean(data, 2)
    assert out.shape == (3, 4) and out.dtype == np.float32
    assert out[0, 0] == pytest.approx(data[:2, :2].mean())
    assert out[2, 3] == pytest.approx(data[4, 6])  # a 1x1 corner block
    assert out[1, 3] == pytest.approx(data[2:4, 6].mean())


def test_blank_pixels_are_left_out_and_all_blank_blocks_stay_blank() -> None:
    data = np.ones((4, 4))
    data[0, 0] = np.nan
    data[2:, 2:] = np.nan
    out = block_mean(data, 2)
    assert out[0, 0] == 1.0
    assert np.isnan(out[1, 1])


def test_factor_one_is_the_image_and_zero_is_refused() -> None:
    data = np.random.default_rng(0).normal(size=(6, 6))
    np.testing.assert_allclose(block_mean(data, 1), data, rtol=1e-6)
    with pytest.raises(ValueError, match="at least 1"):
        block_mean(data, 0)
