"""The PNG preview (astro_otf.results.preview): a picture for any image, blank or huge, with
the detections drawn where they are; a large image read by stride rather than whole; the
plan a worker writes drawn later into the same picture, once however many ask at once."""

from __future__ import annotations

import asyncio
import mmap
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from PIL import Image

from astro_otf.domain.parameters import Extent, Roi
from astro_otf.imaging.fits import SkyImage, cutout, load_image
from astro_otf.results.catalogue import Catalogue, conform
from astro_otf.results.formats import write_json
from astro_otf.results.preview import (
    OVERLAY_RGB,
    PreviewCache,
    PreviewUnavailable,
    _pixel_angles,
    _stride,
    _where,
    display_shape,
    draw_from_plan,
    is_plan,
    overlay_geometry,
    png_path,
    write_plan,
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


def check_png(path: Path, shape: tuple[int, int], max_side: int = 800) -> np.ndarray:
    """The PNG's RGB pixels, after checking its signature and size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        pixels = np.asarray(picture.convert("RGB"))
    assert pixels.shape[:2] == display_shape(shape, max_side)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    return pixels


def overlay_mask(pixels: np.ndarray) -> np.ndarray:
    return np.all(pixels == np.array(OVERLAY_RGB, dtype=np.uint8), axis=-1)


# -- sizes -------------------------------------------------------------------------------------


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


def test_display_shape_enlarges_small_images_and_strides_big_ones() -> None:
    caption = display_shape((0, 0))[0]
    assert display_shape((64, 64)) == (512 + caption, 512)  # 8 x, a whole factor
    assert display_shape((100, 300)) == (100 + caption, 300)  # 512 // 300 = 1
    assert display_shape((800, 400)) == (800 + caption, 400)
    assert display_shape((2048, 2048)) == (683 + caption, 683)  # every 3rd pixel
    assert display_shape((6000, 3000)) == (750 + caption, 375)  # every 8th pixel


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
    assert pixels.std() > 10  # an image, not a blank canvas
    assert overlay_mask(pixels).sum() > 50  # the sources are drawn
    assert _where(image).startswith("FK5 centre RA ")


def test_preview_of_a_real_galactic_image(real_data: Path, tmp_path: Path) -> None:
    image = load_image(real_data / MAGPIS)
    assert image.frame.name == "galactic"
    catalogue = catalogue_at(image, [150.0], [150.0], maj=[30.0], min=[10.0], pa=[0.0])
    path = write_preview(catalogue, image, tmp_path / "magpis.png")
    check_png(path, image.shape)
    assert _where(image).startswith("Galactic centre l 10.")


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
    pixels = check_png(path, image.shape)
    assert not overlay_mask(pixels).any()


# -- overlay geometry --------------------------------------------------------------------------


def test_overlay_is_in_the_pixels_of_the_cut_out() -> None:
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
    geometry = overlay_geometry(catalogue.table, image)
    assert geometry is not None
    x, y, widths, heights, angles = geometry
    np.testing.assert_allclose(np.column_stack([x, y]), [[10, 20], [50, 50], [70, 30]])
    # 1 arcsec pixels: FWHM axes in pixels; the unknown size is drawn as the 6" beam
    np.testing.assert_allclose(widths, [12.0, 6.0, 8.0], rtol=1e-9)
    np.testing.assert_allclose(heights, [4.0, 6.0, 2.0], rtol=1e-9)
    assert angles[0] == pytest.approx(90.0, abs=0.01)  # pa 0: major axis up
    assert angles[2] == pytest.approx(180.0, abs=0.01)  # pa 90: east, to the left


def test_an_ellipse_is_drawn_where_the_source_is(tmp_path: Path) -> None:
    """A north-south ellipse 40" x 10" at pixel (30, 70) of a 128-pixel, 1"/pixel image,
    enlarged 4 x: its outline spans 80 display pixels vertically around the centre."""
    wcs = sky_wcs(("RA---TAN", "DEC--TAN"), (150.0, 30.0), 128, 1 / 3600)
    image = make_image(np.zeros((128, 128), dtype=np.float32), wcs)
    catalogue = catalogue_at(image, [30.0], [70.0], maj=[40.0], min=[10.0], pa=[0.0])
    pixels = check_png(write_preview(catalogue, image, tmp_path / "one.png"), image.shape)
    rows, cols = np.nonzero(overlay_mask(pixels))
    zoom = 4
    centre_col, centre_row = 30 * zoom + 1.5, (127 - 70) * zoom + 1.5  # north up
    assert cols.mean() == pytest.approx(centre_col, abs=1.5)
    assert rows.mean() == pytest.approx(centre_row, abs=1.5)
    assert rows.max() - rows.min() == pytest.approx(40 * zoom, abs=3)  # major axis: N-S
    assert cols.max() - cols.min() == pytest.approx(10 * zoom, abs=3)


def test_sources_without_pixels_are_placed_from_ra_dec() -> None:
    wcs = sky_wcs(("RA---SIN", "DEC--SIN"), (150.0, 30.0), 100, 1 / 3600)
    image = make_image(np.zeros((100, 100), dtype=np.float32), wcs, origin=(5, 5))
    catalogue = catalogue_at(image, [25.0], [75.0])
    catalogue.table["x"] = np.nan
    catalogue.table["y"] = np.nan
    geometry = overlay_geometry(catalogue.table, image)
    assert geometry is not None
    np.testing.assert_allclose([geometry[0][0], geometry[1][0]], [25.0, 75.0], atol=1e-6)


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
    path = write_preview(catalogue, image, tmp_path / "big.png", max_side=1200)
    pixels = check_png(path, (n, n), max_side=1200)
    k = _stride((n, n), 1200)
    assert k == 5
    # the only read of the pixels is the strided one
    assert RecordingArray.keys == [(slice(None, None, k), slice(None, None, k))]
    # the bright block shows in the top colour of the map (inferno: pale yellow)
    assert ((pixels[..., 0] > 240) & (pixels[..., 1] > 240)).any()


# -- drawn later, from the plan ----------------------------------------------------------------


def planned_job(real_data: Path, tmp_path: Path) -> tuple[Path, Path, SkyImage, Catalogue]:
    """A job folder as a worker leaves it: the input, the catalogue JSON and the plan of
    the preview of a region of interest; returns (plan, input, cut-out, catalogue)."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "results").mkdir()
    source = tmp_path / "inputs" / "image.fits"
    shutil.copyfile(real_data / PYSE, source)
    full = load_image(source)
    centre = full.wcs.pixel_to_world(150.0, 120.0).icrs
    roi = Roi(centre.ra.deg, centre.dec.deg, Extent(90, "pix"), Extent(70, "pix"))
    image = cutout(full, roi)
    assert image.origin != (0, 0) and image.shape == (70, 90)
    catalogue = catalogue_at(
        image,
        [20.0, 45.0, 60.0],
        [10.0, 35.0, 50.0],
        maj=[30.0, np.nan, 20.0],
        min=[10.0, np.nan, 20.0],
        pa=[30.0, np.nan, 0.0],
    )
    catalogue.table["maj"][1] = np.nan
    write_json(catalogue, tmp_path / "results" / "catalogue.json", infos={})
    plan = write_plan(image, tmp_path / "results" / "preview.plan.json")
    assert is_plan(plan.name) and png_path(plan).name == "preview.png"
    return plan, source, image, catalogue


def test_the_plan_draws_what_the_worker_would_have_drawn(real_data: Path, tmp_path: Path) -> None:
    plan, source, image, catalogue = planned_job(real_data, tmp_path)
    assert len(plan.read_bytes()) < 300
    drawn = draw_from_plan(plan, source, tmp_path / "results" / "preview.png")
    direct = write_preview(catalogue, image, tmp_path / "direct.png")
    pixels = check_png(drawn, image.shape)
    assert overlay_mask(pixels).sum() > 20
    # the same picture as from the worker's cut-out: the region, the WCS, the sources
    assert drawn.read_bytes() == direct.read_bytes()


def test_a_plan_that_cannot_be_drawn_says_why(real_data: Path, tmp_path: Path) -> None:
    plan, source, _, _ = planned_job(real_data, tmp_path)
    out = tmp_path / "results" / "preview.png"
    with pytest.raises(PreviewUnavailable, match="input image"):
        draw_from_plan(plan, tmp_path / "inputs" / "gone.fits", out)
    (tmp_path / "inputs" / "notfits.fits").write_bytes(b"not a FITS file at all")
    with pytest.raises(PreviewUnavailable, match="not a FITS file"):
        draw_from_plan(plan, tmp_path / "inputs" / "notfits.fits", out)
    (tmp_path / "results" / "catalogue.json").unlink()
    with pytest.raises(PreviewUnavailable, match=r"catalogue\.json is missing"):
        draw_from_plan(plan, source, out)
    plan.write_text('{"hdu_index": 0, "region": [9000, 0, 10, 10]}')
    with pytest.raises(PreviewUnavailable, match="outside the input image"):
        draw_from_plan(plan, source, out)
    plan.unlink()
    with pytest.raises(PreviewUnavailable, match="plan is missing"):
        draw_from_plan(plan, source, out)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == []


def test_concurrent_requests_draw_the_preview_once(real_data: Path, tmp_path: Path) -> None:
    plan, source, image, _ = planned_job(real_data, tmp_path)
    cache = PreviewCache()
    png = png_path(plan)
    assert not png.exists()  # nothing drawn when the job ended

    async def five_at_once() -> list[Path]:
        return list(await asyncio.gather(*(cache.png(plan, source) for _ in range(5))))

    assert asyncio.run(five_at_once()) == [png] * 5
    assert cache.draws == 1
    inode = png.stat().st_ino
    check_png(png, image.shape)
    # later requests are served the kept file
    assert asyncio.run(cache.png(plan, source)) == png
    assert cache.draws == 1 and png.stat().st_ino == inode
    # another process's cache (a replica) finds it drawn too
    other = PreviewCache()
    assert asyncio.run(other.png(plan, source)) == png and other.draws == 0


def test_a_failed_drawing_leaves_nothing_and_can_be_retried(
    real_data: Path, tmp_path: Path
) -> None:
    plan, source, _, _ = planned_job(real_data, tmp_path)
    cache = PreviewCache()
    hidden = source.with_name("hidden.fits")
    source.rename(hidden)
    with pytest.raises(PreviewUnavailable):
        asyncio.run(cache.png(plan, source))
    assert not png_path(plan).exists() and cache.draws == 0
    hidden.rename(source)
    assert asyncio.run(cache.png(plan, source)).is_file() and cache.draws == 1
