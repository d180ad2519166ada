"""FITS loading and cut-outs (astro_otf.imaging.fits) on real images and generated fixtures."""

from __future__ import annotations

import math
import mmap
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from astro_otf.domain.errors import JobFailure
from astro_otf.domain.parameters import Extent, Roi
from astro_otf.imaging.fits import SkyImage, cutout, load_image

#: Real images (../shared/data/real) with their pixel size and BMAJ in arcsec.
REAL_IMAGES = {
    "aegean/1904-66_SIN.fits": (240.0, 864.0),
    "aegean/synthetic_test.fits": (8.5714, 30.0),
    "astroquery/first_J105007+304037.fits": (1.8, 5.4),
    "astroquery/magpis_G10.5+0.0.fits": (2.0, 6.2),
    "caesar/ScorpioExtendedSourceField.fits": (1.5, 6.5),
    "caesar/ScorpioS17Field.fits": (1.5, 6.5),
    "pybdsf/tbdsf_process_image.in_fits.pybdsf.ch0_I.fits": (21.094, 54.0),
    "pyse/GRB201006A_final_2min_srcs-t0002-image-pb_cutout.fits": (5.0, 32.5),
    "pyse/SWIFT_554620-130504.fits": (5.0, 61.5),
}


def is_memory_mapped(array: np.ndarray) -> bool:
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


@pytest.fixture(scope="module")
def reference(test_data: Path) -> SkyImage:
    return load_image(test_data / "image2d.fits")


def assert_same_sky(image: SkyImage, reference: SkyImage) -> None:
    """Same pixels (NaN where blank) and the same pixel -> sky mapping."""
    assert image.data.ndim == 2
    assert image.shape == reference.shape
    assert image.wcs.pixel_n_dim == 2 and image.wcs.world_n_dim == 2
    xs = np.array([0.0, 10.5, 63.0])
    ys = np.array([0.0, 40.0, 63.0])
    got = image.wcs.pixel_to_world(xs, ys)
    want = reference.wcs.pixel_to_world(xs, ys)
    assert np.all(got.separation(want).arcsec < 1e-6)


# --------------------------------------------------------------------------- real images


@pytest.mark.parametrize("name", sorted(REAL_IMAGES))
def test_real_image_loads_as_2d_with_sky_wcs(real_data: Path, name: str) -> None:
    image = load_image(real_data / name)
    pixel, bmaj = REAL_IMAGES[name]
    assert image.data.ndim == 2
    assert image.wcs.has_celestial and image.wcs.naxis == 2
    assert image.hdu_index == 0
    assert image.pixel_scale_arcsec == pytest.approx(pixel, rel=1e-3)
    assert image.beam is not None
    assert image.bmaj_deg is not None and image.bmaj_deg * 3600.0 == pytest.approx(bmaj, rel=0.01)
    area = image.beam_area_pix
    assert area is not None and area > 1.0
    # Float pixels stay memory-mapped: nothing read before an app needs it.
    assert is_memory_mapped(image.data)


def test_every_real_image_is_covered(real_data: Path) -> None:
    catalogues = {"1904_comp.fits"}
    found = {
        str(p.relative_to(real_data))
        for p in real_data.glob("*/*.fits")
        if p.name not in catalogues and not p.name.endswith((".srl.fits", ".gaul.fits"))
    }
    assert found == set(REAL_IMAGES)


def test_real_4d_cube_is_squeezed(real_data: Path) -> None:
    path = real_data / "pyse/SWIFT_554620-130504.fits"
    assert fits.getdata(path).shape == (1, 1, 512, 512)
    image = load_image(path)
    assert image.shape == (512, 512)
    assert image.bunit == "JY/BEAM"
    assert image.bpa_deg == pytest.approx(13.5456, abs=1e-3)
    # The 2-D WCS gives what astropy's full 4-D WCS gives for plane 0.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        world = WCS(fits.getheader(path)).pixel_to_world(100.0, 200.0, 0.0, 0.0)
    sky = next(w for w in world if isinstance(w, SkyCoord))
    assert image.wcs.pixel_to_world(100.0, 200.0).separation(sky).arcsec < 1e-6


def test_beam_area_in_pixels(real_data: Path) -> None:
    image = load_image(real_data / "aegean/synthetic_test.fits")
    expected = math.pi / (4 * math.log(2)) * 30.0 * 30.0 / (8.5714285714**2)
    assert image.beam_area_pix == pytest.approx(expected, rel=1e-6)
    assert image.beam_major_pix == pytest.approx(30.0 / 8.5714285714, rel=1e-6)
    assert image.bunit is None
    assert image.frame.name == "icrs"


def test_galactic_image_keeps_its_frame(real_data: Path) -> None:
    image = load_image(real_data / "astroquery/magpis_G10.5+0.0.fits")
    assert image.frame.name == "galactic"
    centre = image.wcs.pixel_to_world(149.5, 149.5)
    assert centre.galactic.l.deg == pytest.approx(10.5, abs=0.01)
    assert centre.galactic.b.deg == pytest.approx(0.0, abs=0.01)


# --------------------------------------------------------------------------- fixture shapes


def test_degenerate_4d_cube_equals_2d_image(test_data: Path, reference: SkyImage) -> None:
    assert fits.getdata(test_data / "cube4d_degenerate.fits").shape == (1, 1, 64, 64)
    image = load_image(test_data / "cube4d_degenerate.fits")
    assert_same_sky(image, reference)
    np.testing.assert_array_equal(image.data, reference.data)
    assert is_memory_mapped(image.data)


def test_cube_with_celestial_axes_last_is_handled(test_data: Path, reference: SkyImage) -> None:
    # FITS axis 1 is a FREQ axis of length 1; RA and Dec are axes 2 and 3.
    image = load_image(test_data / "cube_freq_first.fits")
    assert_same_sky(image, reference)
    np.testing.assert_array_equal(image.data, reference.data)


def test_scaled_int16_with_blank_becomes_float_with_nan(
    test_data: Path, reference: SkyImage
) -> None:
    raw = fits.getheader(test_data / "int16_bscale_blank.fits")
    assert raw["BITPIX"] == 16 and "BLANK" in raw and raw["BSCALE"] != 1
    image = load_image(test_data / "int16_bscale_blank.fits")
    assert image.data.dtype.kind == "f"
    blank = np.isnan(image.data)
    assert blank.sum() == 6 * 6 + 64
    assert blank[5:11, 50:56].all() and blank[60].all()
    good = ~blank
    np.testing.assert_allclose(image.data[good], reference.data[good], atol=raw["BSCALE"])
    assert_same_sky(image, reference)


def test_unscaled_int16_with_blank_becomes_float_with_nan(
    test_data: Path, reference: SkyImage
) -> None:
    image = load_image(test_data / "int16_blank_unscaled.fits")
    assert image.data.dtype.kind == "f"
    assert np.isnan(image.data[0:4, 0:4]).all()
    assert np.isnan(image.data).sum() == 16
    assert image.bunit == "mJy/beam"
    good = ~np.isnan(image.data)
    np.testing.assert_allclose(image.data[good] * 1e-3, reference.data[good], atol=6e-4)


@pytest.mark.parametrize("name", ["extension_image.fits", "compressed_image.fits"])
def test_image_in_extension_hdu(test_data: Path, reference: SkyImage, name: str) -> None:
    image = load_image(test_data / name)
    assert image.hdu_index == 1
    assert_same_sky(image, reference)
    np.testing.assert_array_equal(image.data, reference.data)


def test_float_nan_pixels_are_kept(test_data: Path) -> None:
    image = load_image(test_data / "all_nan.fits")
    assert np.isnan(image.data).all()


def test_image_without_beam(tmp_path: Path, test_data: Path) -> None:
    with fits.open(test_data / "image2d.fits") as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data.copy()
    for key in ("BMAJ", "BMIN", "BPA", "BUNIT"):
        del header[key]
    fits.PrimaryHDU(data, header).writeto(tmp_path / "nobeam.fits")
    image = load_image(tmp_path / "nobeam.fits")
    assert image.beam is None and image.bmaj_deg is None and image.bpa_deg is None
    assert image.beam_area_pix is None and image.beam_major_pix is None
    assert image.bunit is None


# --------------------------------------------------------------------------- refusals

BAD_INPUTS = {
    "cube3d_4planes.fits": ("axis 3", "FREQ", "4 planes", "send one plane"),
    "no_wcs.fits": ("no celestial WCS", "CTYPE1/CTYPE2", "on the sky"),
    "table_only.fits": ("no image HDU", "PRIMARY (no data)", "BinTableHDU"),
    "not_fits.txt": ("not a FITS file",),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_fixture_is_refused_clearly(test_data: Path, name: str) -> None:
    with pytest.raises(JobFailure) as failure:
        load_image(test_data / name)
    for words in BAD_INPUTS[name]:
        assert words in failure.value.message


def test_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.fits").write_bytes(b"")
    with pytest.raises(JobFailure, match="empty"):
        load_image(tmp_path / "empty.fits")


@pytest.mark.parametrize("keep", [12_000, 4_000])
def test_truncated_file_is_refused(tmp_path: Path, test_data: Path, keep: int) -> None:
    whole = (test_data / "image2d.fits").read_bytes()
    (tmp_path / "cut.fits").write_bytes(whole[:keep])
    with pytest.raises(JobFailure, match="truncated"):
        load_image(tmp_path / "cut.fits")


# --------------------------------------------------------------------------- cut-outs


def sky_of(image: SkyImage, x: float, y: float) -> SkyCoord:
    return image.wcs.pixel_to_world(x, y).icrs


def test_cutout_in_pixels_keeps_wcs_and_origin(reference: SkyImage) -> None:
    centre = sky_of(reference, 45.0, 40.0)
    roi = Roi(centre.ra.deg, centre.dec.deg, Extent(11, "pix"), Extent(9, "pix"))
    cut = cutout(reference, roi)
    assert cut.shape == (9, 11)
    assert cut.origin == (40, 36)
    np.testing.assert_array_equal(cut.data, reference.data[36:45, 40:51])
    # Pixel (i, j) of the cut-out is pixel (i + x0, j + y0) of the parent, on the sky too.
    assert cut.wcs.pixel_to_world(3.0, 2.0).separation(sky_of(reference, 43.0, 38.0)).arcsec < 1e-6
    assert cut.header is reference.header and cut.beam == reference.beam


def test_cutout_in_arcmin(reference: SkyImage) -> None:
    centre = sky_of(reference, 31.0, 31.0)
    roi = Roi(centre.ra.deg, centre.dec.deg, Extent(1.0, "arcmin"), Extent(0.5, "arcmin"))
    cut = cutout(reference, roi)
    assert cut.shape == (15, 30)  # 2" pixels
    x0, y0 = cut.origin
    assert cut.wcs.pixel_to_world(0.0, 0.0).separation(sky_of(reference, x0, y0)).arcsec < 1e-6


def test_cutout_of_a_cutout_reports_parent_origin(reference: SkyImage) -> None:
    centre = sky_of(reference, 30.0, 30.0)
    first = cutout(reference, Roi(centre.ra.deg, centre.dec.deg, Extent(40, "pix"), None))
    second = cutout(first, Roi(centre.ra.deg, centre.dec.deg, Extent(10, "pix"), Extent(10, "pix")))
    x0, y0 = second.origin
    np.testing.assert_array_equal(second.data, reference.data[y0 : y0 + 10, x0 : x0 + 10])


def test_missing_size_means_whole_axis(reference: SkyImage) -> None:
    centre = sky_of(reference, 50.0, 12.0)
    cut = cutout(reference, Roi(centre.ra.deg, centre.dec.deg, None, Extent(5, "pix")))
    assert cut.shape == (5, 64) and cut.origin == (0, 10)
    whole = cutout(reference, Roi(centre.ra.deg, centre.dec.deg, None, None))
    assert whole.shape == (64, 64) and whole.origin == (0, 0)


def test_cutout_at_the_edge_is_trimmed(reference: SkyImage) -> None:
    corner = sky_of(reference, 1.0, 62.0)
    roi = Roi(corner.ra.deg, corner.dec.deg, Extent(20, "pix"), Extent(20, "pix"))
    cut = cutout(reference, roi)
    assert cut.shape == (11, 11) and cut.origin == (0, 53)


def test_cutout_outside_the_image_is_refused(reference: SkyImage) -> None:
    with pytest.raises(JobFailure) as failure:
        cutout(reference, Roi(151.0, 2.0, Extent(10, "pix"), Extent(10, "pix")))
    message = failure.value.message
    assert "lies outside the image" in message and "RA=151" in message
    # said on the pixel grid (a rotated image is no RA/Dec rectangle), with where to go
    assert "beyond the left edge" in message and "x=-1767" in message
    assert "the nearest pixel of the image, x=0, y=32, is at RA=150.0175" in message


def test_cutout_of_galactic_image_from_icrs_centre(real_data: Path) -> None:
    image = load_image(real_data / "astroquery/magpis_G10.5+0.0.fits")
    target = image.wcs.pixel_to_world(200.0, 120.0)  # Galactic
    icrs = target.icrs
    assert abs(icrs.ra.deg - target.galactic.l.deg) > 100  # the frames really differ
    cut = cutout(image, Roi(icrs.ra.deg, icrs.dec.deg, Extent(1.0, "arcmin"), Extent(40, "pix")))
    assert cut.shape == (40, 30)  # 2" pixels
    x0, y0 = cut.origin
    assert abs(x0 - 185) <= 1 and abs(y0 - 100) <= 1  # an even size centred on a pixel centre
    centre = cut.wcs.pixel_to_world(200.0 - x0, 120.0 - y0)
    assert centre.separation(target).arcsec < 1e-6
    assert SkyCoord(icrs.ra, icrs.dec).separation(centre.icrs) < 1e-6 * u.arcsec


def test_damaged_extension_is_refused(tmp_path: Path, test_data: Path) -> None:
    damaged = bytearray((test_data / "extension_image.fits").read_bytes())
    start = damaged.find(b"XTENSION")
    damaged[start : start + 80] = b"GARBAGE = 'not a FITS card'".ljust(80)
    (tmp_path / "damaged.fits").write_bytes(bytes(damaged))
    with pytest.raises(JobFailure, match="looks damaged"):
        load_image(tmp_path / "damaged.fits")
