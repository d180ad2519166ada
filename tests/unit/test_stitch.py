"""Stitching (astro_otf.imaging.stitch): tile to image, ownership, NMS, pixel to sky."""

from __future__ import annotations

import math
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io.votable import ucd as ucd_module
from astropy.table import Table
from hypothesis import given, settings
from hypothesis import strategies as st

from astro_otf.domain.parameters import Extent, Roi
from astro_otf.imaging.fits import cutout, load_image
from astro_otf.imaging.stitch import (
    ColumnMeta,
    Detection,
    merge,
    nms,
    owned,
    stitch,
    to_image,
    to_sky,
)
from astro_otf.imaging.tiling import TileSpec, iter_tiles, tile_grid

# --------------------------------------------------------------------------- detections


def test_detection_needs_a_finite_position_and_a_positive_box() -> None:
    with pytest.raises(ValueError, match="finite position"):
        Detection(math.nan, 0.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="positive size"):
        Detection(0.0, 0.0, 0.0, 1.0, 1.0)
    det = Detection(1.0, 2.0, 3.0, 4.0, 0.5, {"flux": 2.0})
    assert det.moved(10, 20) == Detection(11.0, 22.0, 3.0, 4.0, 0.5, {"flux": 2.0})
    assert hash(det) == hash(Detection(1.0, 2.0, 3.0, 4.0, 0.5, {"flux": 9.0}))


def test_to_image_shifts_and_drops_the_padding() -> None:
    # a 10 x 10 tile at (y0, x0) = (20, 30) holding 6 rows and 4 columns of image data
    spec = TileSpec(0, 0, 0, 20, 30, 10, 6, 4, 20, 26, 30, 34)
    dets = [
        Detection(0.0, 0.0, 2, 2, 0.9, {"flux": 1.0}),
        Detection(3.4, 5.4, 2, 2, 0.8),  # last image pixel
        Detection(3.5, 1.0, 2, 2, 0.7),  # padding columns
        Detection(1.0, 5.5, 2, 2, 0.6),  # padding rows
        Detection(-0.6, 1.0, 2, 2, 0.5),  # left of the tile
    ]
    out = to_image(dets, spec)
    assert out == [
        Detection(30.0, 20.0, 2, 2, 0.9, {"flux": 1.0}),
        Detection(33.4, 25.4, 2, 2, 0.8),
    ]


def test_owned_keeps_the_core_and_margin_widens_it() -> None:
    spec = tile_grid((10, 23), 8, 3)[1]  # core columns 6..10, rows 0..4
    dets = [Detection(x, 2.0, 1, 1, 1) for x in (5.4, 5.5, 10.4, 10.5)]
    assert [d.x for d in owned(dets, spec)] == [5.5, 10.4]
    assert [d.x for d in owned(dets, spec, margin=0.2)] == [5.4, 5.5, 10.4, 10.5]
    with pytest.raises(ValueError, match="margin"):
        owned(dets, spec, margin=-1)


# --------------------------------------------------------------------------- NMS


def test_merge_keeps_the_best_of_overlapping_boxes() -> None:
    a = Detection(10.0, 10.0, 4, 4, 0.9)
    b = Detection(10.5, 10.0, 4, 4, 0.95)  # IoU 0.78 with a
    c = Detection(13.0, 10.0, 4, 4, 0.8)  # IoU 0.14 with a, 0.23 with b
    d = Detection(40.0, 40.0, 4, 4, 0.1)
    assert merge([a, b, c, d], iou=0.5) == [b, c, d]
    assert merge([a, b, c, d], iou=0.1) == [b, d]
    assert merge([a, b, c, d], iou=1.0) == [b, a, c, d]
    assert merge([]) == []


def test_merge_is_greedy_a_suppressed_box_suppresses_nothing() -> None:
    a = Detection(0.0, 0.0, 4, 4, 0.9)
    b = Detection(1.0, 0.0, 4, 4, 0.8)  # overlaps a (IoU 0.6): suppressed
    c = Detection(2.0, 0.0, 4, 4, 0.7)  # overlaps b (0.6) but not a enough (0.33): kept
    assert merge([c, b, a], iou=0.5) == [a, c]


def test_ties_keep_input_order() -> None:
    a = Detection(0.0, 0.0, 4, 4, 0.5, {"tile": 0})
    b = Detection(0.0, 0.0, 4, 4, 0.5, {"tile": 1})
    assert merge([a, b])[0].extra == {"tile": 0}
    assert merge([b, a])[0].extra == {"tile": 1}


def test_ios_removes_a_truncated_box_inside_the_full_one() -> None:
    full = Detection(10.0, 10.0, 10, 10, 0.9)
    cut = Detection(13.0, 10.0, 4, 10, 0.4)  # right part of the same source, IoU 0.4
    assert merge([full, cut], iou=0.5) == [full, cut]
    assert merge([full, cut], iou=0.5, ios=0.8) == [full]


@pytest.mark.parametrize(("iou", "ios"), [(-0.1, None), (1.5, None), (0.5, 2.0)])
def test_thresholds_are_checked(iou: float, ios: float | None) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        nms([0.0], [0.0], [1.0], [1.0], [1.0], iou=iou, ios=ios)


def test_nms_checks_its_arrays() -> None:
    with pytest.raises(ValueError, match="same length"):
        nms([0.0, 1.0], [0.0], [1.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="positive width"):
        nms([0.0], [0.0], [-1.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        nms([0.0], [0.0], [1.0], [1.0], [math.nan])
    with pytest.raises(ValueError, match="finite"):
        nms([math.inf], [0.0], [1.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        nms([0.0], [0.0], [math.inf], [1.0], [1.0])
    assert nms([], [], [], [], []).size == 0


def reference_nms(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    h: np.ndarray,
    s: np.ndarray,
    iou: float,
    ios: float | None,
) -> list[int]:
    """Textbook greedy NMS, O(n^2), for comparison."""
    order = sorted(range(len(x)), key=lambda i: (-s[i], i))
    kept: list[int] = []
    for i in order:
        duplicate = False
        for k in kept:
            iw = min(x[i] + w[i] / 2, x[k] + w[k] / 2) - max(x[i] - w[i] / 2, x[k] - w[k] / 2)
            ih = min(y[i] + h[i] / 2, y[k] + h[k] / 2) - max(y[i] - h[i] / 2, y[k] - h[k] / 2)
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = w[i] * h[i] + w[k] * h[k] - inter
            if inter > iou * union or (
                ios is not None and inter > ios * min(w[i] * h[i], w[k] * h[k])
            ):
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return kept


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 150),
    spread=st.sampled_from([5.0, 50.0, 1000.0]),
    giants=st.integers(0, 3),
    iou=st.floats(0.0, 1.0),
    ios=st.none() | st.floats(0.0, 1.0),
    snap=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_nms_equals_textbook_greedy(
    n: int, spread: float, giants: int, iou: float, ios: float | None, snap: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, spread, n)
    y = rng.uniform(0, spread, n)
    w = rng.uniform(0.5, 8.0, n)
    h = rng.uniform(0.5, 8.0, n)
    w[:giants] *= 100.0  # a few huge boxes coarsen the grid
    if snap:  # whole pixels: identical boxes and boxes that only touch
        x, y, w, h = np.round(x), np.round(y), np.ceil(w), np.ceil(h)
    s = rng.integers(0, 5, n).astype(float)  # many ties
    assert nms(x, y, w, h, s, iou=iou, ios=ios).tolist() == reference_nms(x, y, w, h, s, iou, ios)


# --------------------------------------------------------------------------- tiles to catalogue

THRESHOLD = 0.75


def detect(data: np.ndarray) -> list[Detection]:
    """A test detector for an image holding one source: the pixels above THRESHOLD, as one
    detection at their mean position with their bounding box, scored by their sum."""
    ys, xs = np.nonzero(data > THRESHOLD)
    if xs.size == 0:
        return []
    return [
        Detection(
            x=float(xs.mean()),
            y=float(ys.mean()),
            width=float(xs.max() - xs.min() + 1),
            height=float(ys.max() - ys.min() + 1),
            score=float(data[ys, xs].sum()),
        )
    ]


@st.composite
def scenes(draw: st.DrawFn, point: bool) -> tuple[np.ndarray, int, int, tuple[int, int, int, int]]:
    """A noisy image with one box source fully inside it (a point when ``point``), and a
    tiling whose overlap is at least the source's size (so one tile sees it whole)."""
    ny = draw(st.integers(4, 220))
    nx = draw(st.integers(4, 220))
    least = max(2, math.ceil(max(ny, nx) / 20))
    tile = draw(st.integers(least, max(least, 80)))
    overlap = draw(st.integers(0, tile - least)) if tile > least else 0
    side = 1 if point else max(1, 2 * (overlap // 2))
    sh = draw(st.integers(1, min(side, ny)))
    sw = draw(st.integers(1, min(side, nx)))
    if draw(st.booleans()):  # on a core boundary, where tiles overlap
        specs = tile_grid((ny, nx), tile, overlap)
        cut_y = draw(st.sampled_from(sorted({s.core_y0 for s in specs})))
        cut_x = draw(st.sampled_from(sorted({s.core_x0 for s in specs})))
        y0 = min(max(0, cut_y - draw(st.integers(0, sh))), ny - sh)
        x0 = min(max(0, cut_x - draw(st.integers(0, sw))), nx - sw)
    else:
        y0 = draw(st.integers(0, ny - sh))
        x0 = draw(st.integers(0, nx - sw))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    image = rng.uniform(0.0, 0.5, size=(ny, nx))
    image[y0 : y0 + sh, x0 : x0 + sw] = rng.uniform(1.0, 2.0, size=(sh, sw))
    return image, tile, overlap, (y0, x0, sh, sw)


def per_tile(image: np.ndarray, tile: int, overlap: int) -> list[tuple[TileSpec, list[Detection]]]:
    return [(spec, detect(data)) for spec, data in iter_tiles(image, tile, overlap)]


def assert_one_at(found: list[Detection], source: tuple[int, int, int, int]) -> None:
    y0, x0, sh, sw = source
    assert len(found) == 1, found
    det = found[0]
    assert det.x == pytest.approx(x0 + (sw - 1) / 2, abs=1e-9)
    assert det.y == pytest.approx(y0 + (sh - 1) / 2, abs=1e-9)
    assert (det.width, det.height) == (sw, sh)


@settings(max_examples=60, deadline=None)
@given(scene=scenes(point=True))
def test_point_source_is_reported_once_by_to_image_and_merge(
    scene: tuple[np.ndarray, int, int, tuple[int, int, int, int]],
) -> None:
    image, tile, overlap, source = scene
    found = [d for spec, dets in per_tile(image, tile, overlap) for d in to_image(dets, spec)]
    assert_one_at(merge(found, iou=0.5), source)


@settings(max_examples=60, deadline=None)
@given(scene=scenes(point=False))
def test_box_source_is_reported_once_anywhere(
    scene: tuple[np.ndarray, int, int, tuple[int, int, int, int]],
) -> None:
    image, tile, overlap, source = scene
    tiles = per_tile(image, tile, overlap)
    # suppression alone: truncated views lie inside the full one
    found = [d for spec, dets in tiles for d in to_image(dets, spec)]
    assert_one_at(merge(found, iou=0.5, ios=0.9), source)
    # ownership, then suppression
    assert_one_at(stitch(tiles, iou=0.5), source)


def test_ownership_alone_drops_truncated_edge_reports() -> None:
    image = np.zeros((40, 100))
    image[10:16, 30:36] = 1.0  # 6 x 6; the first tile (columns 0..31) sees 2 columns of it
    tiles = per_tile(image, 32, 8)  # tiles at x0 = 0, 24, 48, 68; first core cut at column 28
    found = [d for spec, dets in tiles for d in to_image(dets, spec)]
    merged = merge(found, iou=0.5)  # the truncated report (IoU 1/3) survives plain IoU
    assert [(d.x, d.width) for d in merged] == [(32.5, 6.0), (30.5, 2.0)]
    assert_one_at(stitch(tiles, iou=0.5), (10, 30, 6, 6))
    assert_one_at(stitch(tiles, iou=0.5, ownership=False, ios=0.9), (10, 30, 6, 6))


# --------------------------------------------------------------------------- pixel to sky


def test_to_sky_matches_the_truth_catalogue(real_data: Path) -> None:
    image = load_image(real_data / "aegean" / "synthetic_test.fits")
    truth = Table.read(real_data / "aegean" / "synthetic_test_truth.csv", format="ascii.csv")
    dets = [
        Detection(float(r["x"]), float(r["y"]), 3.0, 3.0, 1.0, {"peak_flux": float(r["peak_flux"])})
        for r in truth
    ]
    table = to_sky(dets, image.wcs, image.origin)
    assert len(table) == len(truth)
    got = SkyCoord(table["ra"], table["dec"])
    expected = SkyCoord(truth["ra"] * u.deg, truth["dec"] * u.deg)
    assert got.separation(expected).arcsec.max() < 0.5
    np.testing.assert_allclose(table["x"], truth["x"])
    np.testing.assert_allclose(table["peak_flux"], truth["peak_flux"])

    # the same sources seen in a cut-out: positions in the cut-out's pixels, origin added back
    cut = cutout(image, Roi(30.2, -15.1, Extent(300, "pix"), Extent(150, "pix")))
    x0, y0 = cut.origin
    assert x0 > 0 and y0 > 0
    ny, nx = cut.shape
    rows = [i for i, d in enumerate(dets) if 0 <= d.x - x0 < nx - 1 and 0 <= d.y - y0 < ny - 1]
    assert len(rows) >= 20
    table = to_sky([dets[i].moved(-x0, -y0) for i in rows], cut.wcs, cut.origin)
    got = SkyCoord(table["ra"], table["dec"])
    assert got.separation(expected[rows]).arcsec.max() < 0.5
    np.testing.assert_allclose(table["x"], truth["x"][rows], atol=1e-9)
    np.testing.assert_allclose(table["y"], truth["y"][rows], atol=1e-9)


def test_to_sky_converts_a_galactic_image_to_icrs(real_data: Path) -> None:
    image = load_image(real_data / "astroquery" / "magpis_G10.5+0.0.fits")
    assert image.frame.name == "galactic"
    ny, nx = image.shape
    table = to_sky([Detection((nx - 1) / 2, (ny - 1) / 2, 1, 1, 1)], image.wcs, image.origin)
    centre = SkyCoord(l=10.5 * u.deg, b=0.0 * u.deg, frame="galactic")  # OBJECT G10.5+0.0
    got = SkyCoord(table["ra"][0] * u.deg, table["dec"][0] * u.deg, frame="icrs")
    assert got.separation(centre).arcsec < 3.0
    assert table["ra"][0] == pytest.approx(centre.icrs.ra.deg, abs=1e-3)  # ~272.2, not 10.5
    assert table["dec"][0] == pytest.approx(centre.icrs.dec.deg, abs=1e-3)


def test_to_sky_columns_are_described(real_data: Path) -> None:
    image = load_image(real_data / "aegean" / "synthetic_test.fits")
    dets = [
        Detection(10.0, 20.0, 3, 4, 0.9, {"flux": 1.5}),
        Detection(30.0, 40.0, 3, 4, 0.8, {"flux": 2.5, "pa": 45.0}),
    ]
    meta = {"flux": ColumnMeta("Jy", "phot.flux.density", "Integrated flux density.")}
    table = to_sky(dets, image.wcs, (5, 7), extra_columns=meta)
    names = ["ra", "dec", "x", "y", "width", "height", "score", "flux", "pa"]
    assert table.colnames == names
    np.testing.assert_array_equal(table["x"], [15.0, 35.0])
    np.testing.assert_array_equal(table["y"], [27.0, 47.0])
    assert np.isnan(table["pa"][0]) and table["pa"][1] == 45.0
    assert table["flux"].unit == u.Jy
    for name in names[:-1]:
        ucd_module.parse_ucd(table[name].meta["ucd"], check_controlled_vocabulary=True)
        assert table[name].unit is not None or name == "score"
    with pytest.raises(ValueError, match="clashes"):
        to_sky([Detection(1, 1, 1, 1, 1, {"x": 1.0})], image.wcs)


def test_to_sky_of_nothing_is_an_empty_table(real_data: Path) -> None:
    image = load_image(real_data / "aegean" / "synthetic_test.fits")
    table = to_sky([], image.wcs)
    assert len(table) == 0
    assert table.colnames == ["ra", "dec", "x", "y", "width", "height", "score"]
