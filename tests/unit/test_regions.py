"""Regions of interest placed on an image's pixel grid (imaging.fits.region_of): inside or
outside by the centre's pixel through the WCS, clipping at the edges recorded."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from astro_otf.domain.errors import JobFailure
from astro_otf.domain.parameters import Extent, Roi
from astro_otf.imaging.fits import SkyImage, cut, cutout, load_image, region_of
from tests.conftest import REAL_DATA

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
SCORPIO = REAL_DATA / "caesar" / "ScorpioS17Field.fits"  # NCP, far from its reference pixel
FIVE = Extent(5, "arcmin")


def _icrs(image: SkyImage, x: float, y: float) -> tuple[float, float]:
    sky = image.wcs.pixel_to_world(x, y).icrs
    return float(sky.ra.deg), float(sky.dec.deg)


def test_a_centre_outside_the_pixels_is_refused_in_pixels_not_ra_dec_ranges() -> None:
    image = load_image(SCORPIO)
    # RA 257.41 lies inside the corners' RA range, yet falls left of the pixel grid
    with pytest.raises(JobFailure) as info:
        region_of(image, Roi(257.41, -43.2125, FIVE, FIVE))
    message = info.value.message if hasattr(info.value, "message") else str(info.value)
    assert "x=-1.35" in message and "beyond the left edge" in message
    assert "covers RA" not in message  # a rotated image is no RA/Dec rectangle


def test_a_centre_just_inside_the_edge_is_accepted_and_the_clipping_recorded() -> None:
    image = load_image(SCORPIO)
    ra, dec = _icrs(image, -0.3, 475.8)  # 0.2 px inside the left edge
    region = region_of(image, Roi(ra, dec, FIVE, FIVE))
    assert region.requested == (200, 200)
    assert region.box[0] == 0 and region.width < 200 and region.height == 200
    assert region.clipped
    info = region.info()
    assert info["region_clipped"] is True
    assert info["region_requested_pix"] == "200 x 200"
    assert info["region_searched_pix"] == f"{region.width} x 200"
    assert "asked 200 x 200 pixels" in region.describe_clipping()


def test_a_huge_region_is_clipped_to_the_image_and_says_so() -> None:
    image = load_image(SCORPIO)
    ra, dec = _icrs(image, 500, 500)
    ten = Extent(10, "deg")
    region = region_of(image, Roi(ra, dec, ten, ten))
    assert region.box == (0, 0, 1000, 1000) and region.clipped
    assert region.requested == (24000, 24000)
    assert cutout(image, Roi(ra, dec, ten, ten)).shape == (1000, 1000)
    whole = region_of(image, Roi(ra, dec, None, None))  # no size asked: nothing is clipped
    assert whole.box == (0, 0, 1000, 1000) and not whole.clipped


def test_padding_snaps_to_the_box_grid_and_cut_keeps_the_wcs() -> None:
    image = load_image(SCORPIO)
    ra, dec = _icrs(image, 450.4, 450.4)
    region = region_of(image, Roi(ra, dec, FIVE, FIVE))
    assert region.box == (351, 351, 551, 551) and not region.clipped
    x0, y0, x1, y1 = region.padded(86, image.shape, grid=43)
    assert (x0 % 43, y0 % 43) == (0, 0) and x0 <= 351 - 86 and x1 >= 551 + 86
    assert (x1 % 43 == 0 or x1 == 1000) and (y1 % 43 == 0 or y1 == 1000)
    assert region.padded(10_000, image.shape, grid=43) == (0, 0, 1000, 1000)
    part = cut(image, (x0, y0, x1, y1))
    assert part.origin == (x0, y0)
    assert np.array_equal(part.data, image.data[y0:y1, x0:x1])
    centre = SkyCoord(ra, dec, unit="deg")
    px, py = part.wcs.world_to_pixel(centre)
    assert float(px) + x0 == pytest.approx(450.4, abs=1e-6)
    assert float(py) + y0 == pytest.approx(450.4, abs=1e-6)
    inside = region.contains(np.array([350.6, 350.4, 550.4]), np.array([400.0, 400.0, 550.4]))
    assert inside.tolist() == [True, False, True]
