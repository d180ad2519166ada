"""The PNG preview (astro_otf.results.preview): a picture for any image, blank or huge, with
the detections drawn where they are; a large image read by stride rather than whole; the
plan a worker writes drawn later into the same picture, once however many ask at once; a
stretch from the image's noise, so that a faint source stands out of a noise image without
saturating bright extended emission; axes ticked in ICRS RA and Dec whatever the image's
frame."""

from __future__ import annotations

import asyncio
import mmap
import shutil
from pathlib import Path
from typing import Any, ClassVar

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.table import Table
from astropy.visualization import ZScaleInterval
from astropy.wcs import WCS
from PIL import Image

from astro_otf.domain.parameters import Extent, Roi
from astro_otf.imaging.fits import SkyImage, cutout, load_image
from astro_otf.results.catalogue import Catalogue, conform
from astro_otf.results.formats import write_json
from astro_otf.results.preview import (
    CAPTION_HEIGHT,
    CAPTION_RGB,
    LEVELS,
    MARGIN_BOTTOM,
    MARGIN_LEFT,
    MARGIN_RIGHT,
    MARGIN_TOP,
    MIN_WIDTH,
    NOISE_KNEE,
    OVERLAY_RGB,
    TICK_LENGTH,
    PreviewCache,
    PreviewUnavailable,
    _colour_indices,
    _limits,
    _palette,
    _pixel_angles,
    _stretched,
    _stride,
    _where,
    axis_ticks,
    display_shape,
    draw_from_plan,
    draw_preview,
    image_box,
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


def shown_part(pixels: np.ndarray, shape: tuple[int, int], max_side: int = 800) -> np.ndarray:
    """The part of a preview's pixels that shows the image (inside the axes)."""
    left, top, width, height = image_box(shape, max_side)
    return pixels[top : top + height, left : left + width]


def luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=float) @ np.array([0.2126, 0.7152, 0.0722])


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


@pytest.mark.parametrize(
    ("shape", "shown"),
    [
        ((64, 64), (512, 512)),  # 8 x, a whole factor
        ((100, 300), (300, 100)),  # 512 // 300 = 1
        ((800, 400), (400, 800)),
        ((2048, 2048), (683, 683)),  # every 3rd pixel
        ((6000, 3000), (375, 750)),  # every 8th pixel
        ((3000, 10), (3, 750)),  # a sliver: the PNG is still wide enough for the caption
    ],
)
def test_display_shape_enlarges_small_images_and_strides_big_ones(
    shape: tuple[int, int], shown: tuple[int, int]
) -> None:
    width, height = shown
    # the shown image, inside the axes' margins; the caption under them
    assert image_box(shape) == (MARGIN_LEFT, MARGIN_TOP, width, height)
    assert display_shape(shape) == (
        MARGIN_TOP + height + MARGIN_BOTTOM + CAPTION_HEIGHT,
        max(MARGIN_LEFT + width + MARGIN_RIGHT, MIN_WIDTH),
    )


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
    # the caption names the ICRS centre, and the image's own frame
    where = _where(image)
    assert where.startswith("ICRS centre RA 04:05:") and where.endswith("; image frame FK5")


def test_preview_of_a_real_galactic_image(real_data: Path, tmp_path: Path) -> None:
    image = load_image(real_data / MAGPIS)
    assert image.frame.name == "galactic"
    catalogue = catalogue_at(image, [150.0], [150.0], maj=[30.0], min=[10.0], pa=[0.0])
    path = write_preview(catalogue, image, tmp_path / "magpis.png")
    check_png(path, image.shape)
    where = _where(image)
    assert where.startswith("ICRS centre RA 18:08:")  # l 10.5 b 0 is RA 272.2 Dec -19.9
    assert "image frame Galactic (l 10." in where


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
    rows, cols = np.nonzero(overlay_mask(shown_part(pixels, image.shape)))
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


# -- the stretch: from the image's noise ---------------------------------------------------------

EMPTY = Table({"ra": np.zeros(0), "dec": np.zeros(0)})


def point_source_on_noise(n: int = 256, sigma: float = 1e-4, seed: int = 0) -> SkyImage:
    """Gaussian noise of ``sigma`` (Jy/beam) around a small offset, with one point source of
    peak 8 sigma (FWHM 3 pixels) at pixel (100, 150)."""
    rng = np.random.default_rng(seed)
    data = rng.normal(3e-5, sigma, size=(n, n))
    yy, xx = np.mgrid[:n, :n]
    s = 3.0 / 2.3548
    data += 8.0 * sigma * np.exp(-((xx - 100) ** 2 + (yy - 150) ** 2) / (2 * s * s))
    wcs = sky_wcs(("RA---SIN", "DEC--SIN"), (150.0, 30.0), n, 2 / 3600)
    return make_image(data.astype(np.float32), wcs)


def source_and_background(path: Path, image: SkyImage) -> tuple[float, np.ndarray]:
    """The luminance (0..255) of the 8-sigma source's peak pixel in the preview at ``path``
    and that of the noise away from it."""
    pixels = check_png(path, image.shape)
    lum = luminance(shown_part(pixels, image.shape))
    ny = image.shape[0]
    zoom = lum.shape[1] // image.shape[1]
    row, col = (ny - 1 - 150) * zoom, 100 * zoom  # north up
    peak = float(lum[row : row + zoom, col : col + zoom].mean())
    far = np.ones(lum.shape, dtype=bool)
    far[row - 20 : row + 20, col - 20 : col + 20] = False
    return peak, lum[far]


def test_an_8_sigma_point_source_stands_out_of_the_noise(tmp_path: Path) -> None:
    """The default stretch shows the source near-white on a dark background, brighter than
    all the noise; the old default (the central 99.5 % of the pixels, asinh) made the
    noise orange-white and as bright as the source here and there."""
    image = point_source_on_noise()
    new = draw_preview(image, EMPTY, tmp_path / "noise.png")
    old = draw_preview(image, EMPTY, tmp_path / "old.png", stretch="percentile")
    peak, background = source_and_background(new, image)
    old_peak, old_background = source_and_background(old, image)
    white = luminance(np.array(_palette()[3 * (LEVELS - 1) : 3 * LEVELS]))
    assert peak >= 0.9 * white  # near the top of the colour map
    assert np.median(background) < 0.2 * white  # a dark background
    assert np.mean(background >= peak - 10) < 1e-4  # no noise pixel as bright as the source
    contrast = (peak - np.median(background)) / background.std()
    assert contrast > 7
    # the old default: a bright background, noise as bright as the source, little contrast
    assert np.median(old_background) > 0.55 * white
    assert np.mean(old_background >= old_peak - 10) > 3e-3
    old_contrast = (old_peak - np.median(old_background)) / old_background.std()
    assert old_contrast < 3 and contrast > 3 * old_contrast


def test_the_noise_limits_follow_the_noise_not_the_sources() -> None:
    rng = np.random.default_rng(2)
    noise = rng.normal(5.0, 2.0, size=(400, 400)).astype(np.float32)
    vmin, vmax, softening = _limits(noise)
    assert vmin == pytest.approx(5.0 - 2 * 2.0, abs=0.15)  # median - 2 sigma
    assert vmax == pytest.approx(5.0 + 6 * 2.0, abs=0.3)  # median + 6 sigma
    assert softening is None  # linear
    # 2 % of the pixels in bright sources (50 sigma): the noise is measured as before, the
    # upper limit rises to them and the range above 6 sigma is compressed
    speckled = noise.copy()
    speckled.ravel()[rng.choice(speckled.size, speckled.size // 50, replace=False)] += 100.0
    vmin2, vmax2, softening2 = _limits(speckled)
    assert vmin2 == pytest.approx(vmin, abs=0.3)
    assert vmax2 > 90.0 and softening2 is not None
    indices = _stretched(np.array([[5.0 + 6 * 2.0, vmax2]], dtype=np.float32), _limits(speckled))
    assert indices[0, 0] == pytest.approx(NOISE_KNEE * (LEVELS - 1), abs=3)
    assert indices[0, 1] == LEVELS - 1
    # zeros around a mosaic do not count as noise
    framed = np.zeros((600, 600), dtype=np.float32)
    framed[100:500, 100:500] = noise
    assert _limits(framed)[:2] == pytest.approx((vmin, vmax), abs=0.3)


def test_bright_extended_emission_is_not_saturated(real_data: Path) -> None:
    """An image filled by one bright blob (peak 2000 sigma over most of the field) and the
    MAGPIS Galactic plane image: few pixels at the top colour, the blob's structure kept."""
    n = 300
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:n, :n]
    blob = 2000.0 * np.exp(-((xx - 150) ** 2 + (yy - 150) ** 2) / (2 * 80.0**2))
    data = (blob + rng.normal(0.0, 1.0, size=(n, n))).astype(np.float32)
    indices = _colour_indices(data)
    top = LEVELS - 1
    assert np.mean(indices >= top) < 0.01
    # centre, half-way and edge of the blob in clearly different colours
    centre, half, edge = (int(indices[150, c]) for c in (150, 225, 299))
    assert centre > half + 20 > edge + 40
    magpis = load_image(real_data / MAGPIS).data.astype(np.float32)
    spread = {}
    for stretch in ("noise", "percentile"):
        shown = _colour_indices(magpis, stretch)
        assert np.mean(shown >= top) < 0.01, stretch
        spread[stretch] = np.percentile(shown, 95) - np.percentile(shown, 5)
    # as much of the colour map used as by the old percentile stretch (about 0.36 of it)
    assert spread["noise"] >= spread["percentile"] and spread["noise"] > 0.35 * top


def test_zscale_stretch_and_a_wrong_stretch(tmp_path: Path) -> None:
    image = point_source_on_noise(n=64)
    data = np.asarray(image.data)
    vmin, vmax, softening = _limits(data, "zscale")
    assert (vmin, vmax) == pytest.approx(ZScaleInterval().get_limits(data.ravel()), rel=1e-6)
    assert softening is None
    path = draw_preview(image, EMPTY, tmp_path / "z.png", stretch="zscale")
    check_png(path, image.shape)
    with pytest.raises(ValueError, match="stretch"):
        draw_preview(image, EMPTY, tmp_path / "bad.png", stretch="log")
    assert not (tmp_path / "bad.png").exists()


# -- the axes: ICRS ticks ----------------------------------------------------------------------


def parse_tick(name: str, label: str) -> float:
    """A tick label's value in degrees (independently of the code that wrote it)."""
    return float(Angle(label, unit=u.hourangle if name == "RA" else u.deg).deg)


def check_ticks(image: SkyImage, max_side: int = 800) -> dict[str, list[float]]:
    """Check that each tick of the preview of ``image`` sits where the WCS puts its ICRS
    value on its edge (to a display pixel); returns the values of the ticks of each name."""
    ny, nx = image.shape
    k = _stride((ny, nx), max_side)
    _, _, width, height = image_box((ny, nx), max_side)
    zoom = width // len(range(0, nx, k))
    bottom, left = axis_ticks(image, k, zoom, (width, height))
    assert {bottom[0], left[0]} == {"RA", "Dec"}
    values: dict[str, list[float]] = {}
    for edge, (name, ticks) in (("bottom", bottom), ("left", left)):
        assert ticks, f"no ticks on the {edge} edge"
        at = np.array([t.at for t in ticks])
        value = np.array([parse_tick(name, t.label) for t in ticks])
        # the image pixel of each tick and a display pixel further along the edge
        scale = k / zoom
        offset = (zoom - 1) / 2.0
        if edge == "bottom":
            px = np.concatenate([(at - offset) * scale, (at + 1 - offset) * scale])
            py = np.full(2 * len(at), -k / 2.0)
        else:
            px = np.full(2 * len(at), -k / 2.0)
            py = np.concatenate([(height - 1 - at - offset), (height - 2 - at - offset)]) * scale
        sky = image.wcs.pixel_to_world(px, py).icrs
        world = np.asarray(sky.ra.deg if name == "RA" else sky.dec.deg)
        here, step = world[: len(at)], world[len(at) :] - world[: len(at)]
        diff = value - here
        if name == "RA":
            diff = (diff + 180.0) % 360.0 - 180.0
        assert np.all(np.abs(diff) <= np.abs(step) + 1e-9), (edge, name, diff, step)
        assert len(set(t.label for t in ticks)) == len(ticks)
        values[name] = list(value)
    return values


def test_a_north_up_image_has_ra_below_and_dec_left(tmp_path: Path) -> None:
    wcs = sky_wcs(("RA---TAN", "DEC--TAN"), (150.0, 30.0), 256, 2 / 3600)
    image = make_image(np.zeros((256, 256), dtype=np.float32), wcs)
    k, zoom = 1, 2
    (bottom_name, bottom), (left_name, left) = axis_ticks(image, k, zoom, (512, 512))
    assert (bottom_name, left_name) == ("RA", "Dec")
    # east to the left: RA falls along the bottom edge; Dec rises up the left one (its
    # positions count down from the top)
    ras = [parse_tick("RA", t.label) for t in bottom]
    decs = [parse_tick("Dec", t.label) for t in left]
    assert ras == sorted(ras, reverse=True) and decs == sorted(decs, reverse=True)
    assert 3 <= len(ras) <= 6 and 3 <= len(decs) <= 11
    assert bottom[0].label.endswith("s") and "h" in bottom[0].label  # sexagesimal
    check_ticks(image)


def test_ticks_are_icrs_for_fk5_and_galactic_images(real_data: Path) -> None:
    fk5 = load_image(real_data / PYSE)
    assert fk5.frame.name == "fk5"
    check_ticks(fk5)
    magpis = load_image(real_data / MAGPIS)
    assert magpis.frame.name == "galactic"
    values = check_ticks(magpis)  # where the ICRS lines cross the rotated frame
    # l 10.5 b 0 is near RA 18h09m, Dec -19.9: the ticks are RA/Dec, not l/b
    assert all(271.9 < ra < 272.5 for ra in values["RA"])
    assert all(-20.1 < dec < -19.7 for dec in values["Dec"])


def test_a_rotated_image_puts_ra_on_the_left() -> None:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 30.0]
    wcs.wcs.crpix = [64.5, 64.5]
    wcs.wcs.cd = [[0.0, -1 / 3600], [1 / 3600, 0.0]]  # x is north, y is east
    image = make_image(np.zeros((128, 128), dtype=np.float32), wcs)
    (bottom_name, _), (left_name, _) = axis_ticks(image, 1, 4, (512, 512))
    assert (bottom_name, left_name) == ("Dec", "RA")
    check_ticks(image)


@pytest.mark.parametrize(
    ("field_arcsec", "ra_decimals", "dec_labels_end"), [(100, False, '"'), (10, True, '"')]
)
def test_ticks_across_ra_zero_at_the_precision_of_the_step(
    field_arcsec: float, ra_decimals: bool, dec_labels_end: str
) -> None:
    """Fields of 100" and 10" at RA 0, Dec -45: RA ticks on both sides of 0h, in whole
    seconds of time or tenths as the step needs."""
    wcs = sky_wcs(("RA---SIN", "DEC--SIN"), (0.0, -45.0), 200, field_arcsec / 200 / 3600)
    image = make_image(np.zeros((200, 200), dtype=np.float32), wcs)
    values = check_ticks(image)
    (_, bottom), (_, left) = axis_ticks(image, 1, 2, (400, 400))
    labels = [t.label for t in bottom]
    assert any(label.startswith("23h59m") for label in labels)
    assert any(label.startswith("00h00m") for label in labels)
    assert all(v % 360.0 < 0.1 or v % 360.0 > 359.9 for v in values["RA"])
    assert all(("." in label) == ra_decimals for label in labels)
    assert all(t.label.endswith(dec_labels_end) for t in left)
    assert 3 <= len(labels) <= 5  # at least 80 pixels apart on 400


def test_an_image_reaching_off_the_sky_still_draws(tmp_path: Path) -> None:
    """A 64-pixel SIN image of 4 degree pixels: its edges are off the sphere (no sky
    position there); the ticks are only where there is one, and the PNG is drawn."""
    image = make_image(
        np.ones((64, 64), dtype=np.float32), sky_wcs(("RA---SIN", "DEC--SIN"), (0, 0), 64, 4.0)
    )
    bottom, left = axis_ticks(image, 1, 8, (512, 512))
    assert bottom[1] == [] and left[1] == []  # the whole border is off the sky
    check_png(draw_preview(image, EMPTY, tmp_path / "sky.png"), image.shape)


def test_the_axes_are_drawn_around_the_image(tmp_path: Path) -> None:
    wcs = sky_wcs(("RA---TAN", "DEC--TAN"), (150.0, 30.0), 128, 2 / 3600)
    image = make_image(np.zeros((128, 128), dtype=np.float32), wcs)
    pixels = check_png(draw_preview(image, EMPTY, tmp_path / "axes.png"), image.shape)
    text = np.all(pixels == np.array(CAPTION_RGB, dtype=np.uint8), axis=-1)
    left, top, width, height = image_box(image.shape)
    (_, bottom), (_, left_ticks) = axis_ticks(image, 1, 4, (width, height))
    for tick in bottom:  # a tick mark below the frame, and its label under it
        x = left + round(tick.at)
        assert text[top + height + 1 : top + height + TICK_LENGTH + 1, x].all()
        assert (
            text[
                top + height + TICK_LENGTH + 2 : top + height + MARGIN_BOTTOM // 2, x - 20 : x + 20
            ].sum()
            > 10
        )
    for tick in left_ticks:  # a tick mark left of the frame, and its label left of it
        y = top + round(tick.at)
        assert text[y, left - 1 - TICK_LENGTH : left - 1].all()
        assert text[y - 6 : y + 6, : left - TICK_LENGTH - 2].sum() > 10
    assert text[top + height + MARGIN_BOTTOM // 2 :, :].sum() > 100  # title and caption
    assert text[top : top + height, :14].sum() > 30  # the vertical title
    # nothing but the image inside the frame
    assert not text[top : top + height, left : left + width].any()
