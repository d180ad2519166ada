"""The PNG preview (astro_otf.results.preview): a picture for any image, blank or huge, with
the detections drawn where they are, and a large image read by stride rather than whole."""

from __future__ import annotations

import mmap
import time
from pathlib import Path
from typing import Any, ClassVar

import matplotlib.image
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.visualization.wcsaxes import WCSAxes
from astropy.wcs import WCS
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure

from astro_otf.imaging.fits import SkyImage, load_image
from astro_otf.results.catalogue import Catalogue, conform
from astro_otf.results.preview import (
    PREVIEW_DPI,
    _overlay,
    _pixel_angles,
    _stride,
    figure_size,
    write_preview,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PYSE = "pyse/GRB201006A_final_2min_srcs-t0002-image-pb_cutout.fits"
MAGPIS = "astroquery/magpis_G10.5+0.0.fits"


def sky_wcs(ctype: tuple[str, str], crval: tuple[float, float], n: int, scale: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = list(ctype)
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    wcs.wcs.cdelt = [-scale, scale]
    return wcs


def make_image(data: np.ndarray, wcs: WCS, origin: tuple[int, int] = (0, 0)) -> SkyImage:
    header = fits.Header()
    header["BMAJ"] = header["BMIN"] = 6.0 / 3600.0
    return SkyImage(data=data, wcs=wcs, header=header, hdu_index=0, origin=origin)


def catalogue_at(image: SkyImage, xs: list[float], ys: list[float], **columns: Any) -> Catalogue:
    """Sources at pixels (xs, ys) of ``image``, given in the uploaded image's pixels."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    sky = image.wcs.pixel_to_world(x, y).icrs
    table = Table(
        {
            "ra": sky.ra.deg,
            "dec": sky.dec.deg,
            "x": x + image.origin[0],
            "y": y + image.origin[1],
            **columns,
        }
    )
    return Catalogue(conform(table))


def check_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    width_in, height_in = figure_size(shape)
    assert pixels.shape[:2] == (round(height_in * PREVIEW_DPI), round(width_in * PREVIEW_DPI))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return np.asarray(pixels)


# -- stride ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "max_side", "expected"),
    [
        ((100, 100), 1200, 1),
        ((1200, 1200), 1200, 1),
        ((1201, 10), 1200, 2),
        ((10, 2400), 1200, 2),
        ((6000, 6000), 1200, 5),
        ((6001, 300), 1200, 6),
        ((0, 0), 1200, 1),
        ((7, 7), 1, 7),
    ],
)
def test_stride_keeps_the_longest_side_within_max_side(
    shape: tuple[int, int], max_side: int, expected: int
) -> None:
    k = _stride(shape, max_side)
    assert k == expected
    assert len(range(0, max(shape), k)) <= max_side


def test_figure_size_follows_the_aspect_ratio_within_limits() -> None:
    assert figure_size((100, 100)) == (9.0, 9.5)
    wide_w, wide_h = figure_size((10, 1000))
    tall_w, tall_h = figure_size((1000, 10))
    assert wide_w == tall_w == 9.0
    assert wide_h == 5.5 and tall_h == 12.5


# -- real images -------------------------------------------------------------------------------


def test_preview_of_a_real_fk5_image(real_data: Path, tmp_path: Path) -> None:
    image = load_image(real_data / PYSE)
    catalogue = catalogue_at(
        image,
        [50.0, 128.0, 200.0],
        [50.0, 128.0, 100.0],
        maj=[120.0, 60.0, np.nan],
        min=[40.0, 30.0, np.nan],
        pa=[0.0, 45.0, 0.0],
    )
    path = write_preview(catalogue, image, tmp_path / "pyse.png")
    assert path == tmp_path / "pyse.png"
    pixels = check_png(path, image.shape)
    assert pixels[..., :3].std() > 0.05  # an image, not a blank canvas


def test_preview_of_a_real_galactic_image(real_data: Path, tmp_path: Path) -> None:
    image = load_image(real_data / MAGPIS)
    assert image.frame.name == "galactic"
    catalogue = catalogue_at(image, [150.0], [150.0], maj=[30.0], min=[10.0], pa=[0.0])
    path = write_preview(catalogue, image, tmp_path / "magpis.png")
    check_png(path, image.shape)


def test_galactic_axes_are_labelled_l_and_b(real_data: Path) -> None:
    from astro_otf.results.preview import _label_axes

    image = load_image(real_data / MAGPIS)
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8), projection=image.wcs)
    assert isinstance(ax, WCSAxes)
    _label_axes(ax, image)
    assert ax.coords[0].get_axislabel() == "l (Galactic)"
    assert ax.coords[1].get_axislabel() == "b (Galactic)"


# -- awkward images ----------------------------------------------------------------------------


@pytest.mark.parametrize("fill", [np.nan, 0.0, 3.5])
def test_blank_and_constant_images_still_give_a_png(tmp_path: Path, fill: float) -> None:
    data = np.full((40, 60), fill, dtype=np.float32)
    image = make_image(data, sky_wcs(("RA---SIN", "DEC--SIN"), (150.0, 30.0), 60, 1 / 3600))
    catalogue = catalogue_at(image, [10.0], [10.0])
    path = write_preview(catalogue, image, tmp_path / "flat.png")
    check_png(path, image.shape)


def test_galactic_car_image_with_no_sources(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(64, 64)).astype(np.float32)
    image = make_image(data, sky_wcs(("GLON-CAR", "GLAT-CAR"), (10.5, 0.0), 64, 2 / 3600))
    empty = Catalogue(conform(Table({"ra": np.zeros(0), "dec": np.zeros(0)})))
    path = write_preview(empty, image, tmp_path / "none.png")
    check_png(path, image.shape)


# -- overlay geometry --------------------------------------------------------------------------


def overlay_of(catalogue: Catalogue, image: SkyImage, k: int = 1) -> EllipseCollection:
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8), projection=image.wcs)
    assert isinstance(ax, WCSAxes)
    assert _overlay(ax, catalogue.table, image, k) == len(catalogue.table)
    (collection,) = ax.collections
    assert isinstance(collection, EllipseCollection)
    return collection


def test_overlay_is_in_the_pixels_of_the_cut_out(tmp_path: Path) -> None:
    wcs = sky_wcs(("RA---SIN", "DEC--SIN"), (150.0, 30.0), 100, 1 / 3600)
    image = make_image(np.zeros((100, 100), dtype=np.float32), wcs, origin=(300, 200))
    catalogue = catalogue_at(
        image,
        [10.0, 50.0, 70.0],
        [20.0, 50.0, 30.0],
        maj=[12.0, np.nan, 8.0],
        min=[4.0, np.nan, 2.0],
        pa=[0.0, np.nan, 90.0],
    )
    assert catalogue.table["x"][0] == 310.0  # uploaded-image pixels
    collection = overlay_of(catalogue, image)
    np.testing.assert_allclose(collection.get_offsets(), [[10, 20], [50, 50], [70, 30]])
    # 1 arcsec pixels: FWHM axes in pixels; the unknown size is drawn as the 6" beam
    np.testing.assert_allclose(collection.get_widths(), [12.0, 6.0, 8.0], rtol=1e-9)
    # at least 3 pixels across, so that each detection shows
    np.testing.assert_allclose(collection.get_heights(), [4.0, 6.0, 3.0], rtol=1e-9)
    angles = np.asarray(collection.get_angles())
    assert angles[0] == pytest.approx(90.0, abs=0.01)  # pa 0: major axis up
    assert angles[2] == pytest.approx(180.0, abs=0.01)  # pa 90: east, to the left

    path = write_preview(catalogue, image, tmp_path / "cut.png")
    check_png(path, image.shape)


def test_sources_without_pixels_are_placed_from_ra_dec() -> None:
    wcs = sky_wcs(("RA---SIN", "DEC--SIN"), (150.0, 30.0), 100, 1 / 3600)
    image = make_image(np.zeros((100, 100), dtype=np.float32), wcs, origin=(5, 5))
    catalogue = catalogue_at(image, [25.0], [75.0])
    catalogue.table["x"] = np.nan
    catalogue.table["y"] = np.nan
    collection = overlay_of(catalogue, image)
    np.testing.assert_allclose(collection.get_offsets(), [[25.0, 75.0]], atol=1e-6)


def test_pixel_angles_follow_the_wcs() -> None:
    north_up = make_image(
        np.zeros((50, 50)), sky_wcs(("RA---TAN", "DEC--TAN"), (150.0, 30.0), 50, 1 / 3600)
    )
    x = np.array([25.0, 25.0, 25.0])
    y = np.array([25.0, 25.0, 25.0])
    pa = np.array([0.0, 90.0, 45.0])
    angles = _pixel_angles(north_up, x, y, pa)
    np.testing.assert_allclose(angles, [90.0, 180.0, 135.0], atol=0.01)

    flipped_wcs = sky_wcs(("RA---TAN", "DEC--TAN"), (150.0, 30.0), 50, 1 / 3600)
    flipped_wcs.wcs.cdelt = [1 / 3600, 1 / 3600]  # east to the right
    flipped = make_image(np.zeros((50, 50)), flipped_wcs)
    np.testing.assert_allclose(_pixel_angles(flipped, x, y, pa), [90.0, 0.0, 45.0], atol=0.01)


# -- a large image, read by stride -------------------------------------------------------------


class RecordingArray(np.ndarray):
    """An ndarray view that records how the original object is indexed."""

    keys: ClassVar[list[Any]] = []

    def __getitem__(self, key: Any) -> Any:
        RecordingArray.keys.append(key)
        return super().__getitem__(key)


def big_fits(path: Path, n: int) -> None:
    """An n x n float32 FITS image written sparsely (no n*n write), with one bright block."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.crval = [150.0, 30.0]
    wcs.wcs.crpix = [n / 2, n / 2]
    wcs.wcs.cd = [[-1 / 3600, 0.0], [0.0, 1 / 3600]]
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = n
    header["NAXIS2"] = n
    header.update(wcs.to_header())
    head = header.tostring().encode("ascii")
    size = len(head) + n * n * 4
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size + (-size) % 2880)
    pixels = np.memmap(path, dtype=">f4", mode="r+", offset=len(head), shape=(n, n))
    pixels[1000:1100, 2000:2100] = 5.0
    pixels.flush()
    del pixels


def is_memory_mapped(array: np.ndarray) -> bool:
    base: Any = array
    while base is not None:
        if isinstance(base, np.memmap | mmap.mmap):
            return True
        base = getattr(base, "base", None)
    return False


def test_a_large_memory_mapped_image_is_read_by_stride(tmp_path: Path) -> None:
    n = 6000
    big_fits(tmp_path / "big.fits", n)
    loaded = load_image(tmp_path / "big.fits")
    assert loaded.shape == (n, n)
    assert is_memory_mapped(loaded.data)
    image = SkyImage(
        data=loaded.data.view(RecordingArray),
        wcs=loaded.wcs,
        header=loaded.header,
        hdu_index=loaded.hdu_index,
    )
    catalogue = Catalogue(
        conform(Table({"x": [2050.0], "y": [1050.0], "maj": [300.0], "min": [100.0], "pa": [30.0]}))
    )
    RecordingArray.keys.clear()
    start = time.monotonic()
    path = write_preview(catalogue, image, tmp_path / "big.png", max_side=1200)
    assert time.monotonic() - start < 5.0
    check_png(path, (n, n))
    k = _stride((n, n), 1200)
    assert k == 5
    # the only read of the pixels is the strided one
    assert RecordingArray.keys == [(slice(None, None, k), slice(None, None, k))]
    # the bright block shows in the top colour of the map (inferno: pale yellow)
    pixels = matplotlib.image.imread(path)
    assert ((pixels[..., 0] > 0.95) & (pixels[..., 1] > 0.95)).any()
