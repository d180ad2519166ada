"""Tiling (astro_otf.imaging.tiling): coverage, cores, padding, lazy slice reads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astro_otf.imaging.tiling import (
    TileSpec,
    iter_tiles,
    read_tile,
    tile_count,
    tile_grid,
    tile_shape,
)


@st.composite
def grids(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(rows, columns, tile, overlap), at most about 40 tiles a side so examples stay fast."""
    ny = draw(st.integers(1, 700))
    nx = draw(st.integers(1, 700))
    least = max(1, math.ceil(max(ny, nx) / 40))
    tile = draw(st.integers(least, max(least, 300)))
    stride = draw(st.integers(least, tile))
    return ny, nx, tile, tile - stride


def origins(specs: list[TileSpec], axis: str) -> list[int]:
    return sorted({getattr(s, axis) for s in specs})


@settings(max_examples=60, deadline=None)
@given(grid=grids())
def test_every_pixel_is_covered_and_tiles_hold_the_image(grid: tuple[int, int, int, int]) -> None:
    ny, nx, tile, overlap = grid
    image = np.arange(ny * nx, dtype=np.float64).reshape(ny, nx)
    covered = np.zeros((ny, nx), dtype=np.int32)
    cores = np.zeros((ny, nx), dtype=np.int32)
    count = 0
    for index, (spec, data) in enumerate(iter_tiles(image, tile, overlap, fill=-1.0)):
        count += 1
        assert spec.index == index
        assert data.shape == (tile, tile)
        assert spec.height == min(tile, ny - spec.y0) and spec.width == min(tile, nx - spec.x0)
        # tiles are full of image data unless the image is smaller than a tile
        assert spec.height == tile or ny < tile
        assert spec.width == tile or nx < tile
        np.testing.assert_array_equal(data[: spec.height, : spec.width], image[spec.slices])
        assert np.all(data[spec.height :, :] == -1.0)
        assert np.all(data[:, spec.width :] == -1.0)
        # the core lies on the tile's image data
        assert spec.y0 <= spec.core_y0 < spec.core_y1 <= spec.y0 + spec.height
        assert spec.x0 <= spec.core_x0 < spec.core_x1 <= spec.x0 + spec.width
        covered[spec.slices] += 1
        cores[spec.core_slices] += 1
    assert covered.min() >= 1
    assert np.all(cores == 1)  # cores partition the image
    specs = tile_grid((ny, nx), tile, overlap)
    assert count == len(specs)
    stride = tile - overlap
    for axis, n in (("y0", ny), ("x0", nx)):
        starts = origins(specs, axis)
        assert starts[0] == 0
        gaps = np.diff(starts)
        assert np.all(gaps[:-1] == stride)  # a regular stride, but for the last tile
        assert np.all((gaps > 0) & (gaps <= stride))
        assert starts[-1] == max(0, n - tile)  # the last tile ends on the image's edge


def test_image_smaller_than_tile_gives_one_padded_tile() -> None:
    image = np.arange(15.0).reshape(3, 5)
    tiles = list(iter_tiles(image, 8, 2, fill=np.nan))
    assert len(tiles) == 1
    spec, data = tiles[0]
    assert (spec.y0, spec.x0, spec.height, spec.width) == (0, 0, 3, 5)
    assert (spec.core_y0, spec.core_y1, spec.core_x0, spec.core_x1) == (0, 3, 0, 5)
    np.testing.assert_array_equal(data[:3, :5], image)
    assert np.isnan(data[3:, :]).all() and np.isnan(data[:, 5:]).all()


def test_small_grid_by_hand() -> None:
    specs = tile_grid((10, 23), 8, 3)
    assert [(s.row, s.col, s.y0, s.x0) for s in specs[:5]] == [
        (0, 0, 0, 0),
        (0, 1, 0, 5),
        (0, 2, 0, 10),
        (0, 3, 0, 15),  # moved back from 15 + padding: ends on column 22
        (1, 0, 2, 0),
    ]
    # overlaps split at their middles: columns 5..7 -> cut at 6, rows 2..7 -> cut at 5
    assert [(s.core_x0, s.core_x1) for s in specs[:4]] == [(0, 6), (6, 11), (11, 16), (16, 23)]
    assert [(s.core_y0, s.core_y1) for s in specs[::4]] == [(0, 5), (5, 10)]


def test_zero_overlap_tiles_abut() -> None:
    specs = tile_grid((8, 12), 4, 0)
    assert origins(specs, "x0") == [0, 4, 8]
    assert all((s.core_x0, s.core_x1) == (s.x0, s.x0 + 4) for s in specs)


@settings(max_examples=40, deadline=None)
@given(grid=grids(), data=st.data())
def test_each_position_is_owned_by_exactly_one_tile(
    grid: tuple[int, int, int, int], data: st.DataObject
) -> None:
    ny, nx, tile, overlap = grid
    specs = tile_grid((ny, nx), tile, overlap)
    xs = np.array(data.draw(st.lists(st.floats(-0.5, nx - 0.5, exclude_max=True), min_size=1)))
    ys = np.array(data.draw(st.lists(st.floats(-0.5, ny - 0.5, exclude_max=True), min_size=1)))
    xs, ys = np.broadcast_arrays(xs[:, None], ys[None, :])
    owners = sum(spec.owns(xs, ys).astype(int) for spec in specs)
    assert np.all(owners == 1)
    for spec in specs:
        assert np.all(spec.contains(xs, ys)[spec.owns(xs, ys)])


class RecordingArray(np.ndarray):
    """An array that records every index it is read with."""

    reads: list[Any]

    def __getitem__(self, key: Any) -> Any:
        self.reads.append(key)
        return super().__getitem__(key)


def test_tiles_are_read_lazily_one_slice_each() -> None:
    image = np.arange(50 * 70, dtype=np.float32).reshape(50, 70).view(RecordingArray)
    image.reads = []
    tiles = iter_tiles(image, 32, 8)
    assert image.reads == []  # nothing read before the first tile is asked for
    first = next(tiles)
    assert image.reads == [first.spec.slices]
    rest = list(tiles)
    assert image.reads == [first.spec.slices] + [t.spec.slices for t in rest]


def test_memory_mapped_image(tmp_path: Path) -> None:
    path = tmp_path / "image.npy"
    expected = np.random.default_rng(5).normal(size=(300, 257)).astype(">f4")
    np.save(path, expected)
    image = np.load(path, mmap_mode="r")
    assert isinstance(image, np.memmap)
    for spec, data in iter_tiles(image, 128, 16):
        assert data.dtype == np.float32 and data.dtype.isnative
        assert not isinstance(data, np.memmap)
        np.testing.assert_array_equal(data[: spec.height, : spec.width], expected[spec.slices])


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(">f4", np.float32), ("<f8", np.float64), (">i2", np.float32), ("i4", np.float64)],
)
def test_tile_dtype(dtype: str, expected: type) -> None:
    image = np.ones((4, 4), dtype=dtype)
    spec = tile_grid((4, 4), 6, 1)[0]
    data = read_tile(image, spec, fill=0.5)
    assert data.dtype == expected
    assert data[5, 5] == 0.5 and data[0, 0] == 1.0


def test_tile_data_is_a_copy() -> None:
    image = np.zeros((8, 8))
    _, data = next(iter_tiles(image, 8, 0))
    data[0, 0] = 1.0
    assert image[0, 0] == 0.0


@pytest.mark.parametrize(
    ("tile", "overlap", "match"),
    [
        (0, 0, "tile must be a positive integer"),
        (-4, 0, "tile must be a positive integer"),
        (2.5, 0, "tile must be a positive integer"),
        (8, 8, "0 <= overlap < tile"),
        (8, 9, "0 <= overlap < tile"),
        (8, -1, "0 <= overlap < tile"),
    ],
)
def test_bad_tile_or_overlap(tile: Any, overlap: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tile_grid((10, 10), tile, overlap)


@pytest.mark.parametrize("shape", [(0, 10), (10,), (10, -1), (3.5, 4)])
def test_bad_shape(shape: Any) -> None:
    with pytest.raises(ValueError, match="shape must be two positive integers"):
        tile_grid(shape, 4, 1)


def test_image_must_be_2d() -> None:
    with pytest.raises(ValueError, match="must be 2-D"):
        next(iter_tiles(np.zeros((2, 3, 4)), 4, 1))


# -- tiles sized to the image (a network that takes any multiple of its downsampling) -------


@st.composite
def sized_grids(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    """(rows, columns, tile, overlap, multiple) with ``multiple`` dividing ``tile`` and the
    overlap under half the tile, as manifests have them."""
    multiple = draw(st.sampled_from([1, 2, 4, 8]))
    ny = draw(st.integers(1, 700))
    nx = draw(st.integers(1, 700))
    least = max(2, math.ceil(max(ny, nx) / 40 / multiple))
    tile = multiple * draw(st.integers(least, max(least, 300 // multiple)))
    overlap = draw(st.integers(0, (tile - 1) // 2))
    return ny, nx, tile, overlap, multiple


@settings(max_examples=80, deadline=None)
@given(grid=sized_grids())
def test_sized_tiles_cover_the_image_and_share_one_shape(
    grid: tuple[int, int, int, int, int],
) -> None:
    ny, nx, tile, overlap, multiple = grid
    image = np.arange(ny * nx, dtype=np.float64).reshape(ny, nx)
    specs = tile_grid((ny, nx), tile, overlap, multiple=multiple)
    # as many tiles as the fixed grid, each at most a full tile: the tile budget holds
    assert (
        len(specs) == tile_count((ny, nx), tile, overlap) == len(tile_grid((ny, nx), tile, overlap))
    )
    rows, cols = specs[0].shape
    assert tile_shape((ny, nx), tile, overlap, multiple=multiple) == (rows, cols)
    for side, n in ((rows, ny), (cols, nx)):
        assert side % multiple == 0 and side <= tile
        if n <= tile:
            assert n <= side < n + multiple  # one tile, padded by less than the multiple
        else:
            assert side <= n  # every tile lies on the image
    covered = np.zeros((ny, nx), dtype=np.int32)
    cores = np.zeros((ny, nx), dtype=np.int32)
    for index, (spec, data) in enumerate(
        iter_tiles(image, tile, overlap, fill=-1.0, multiple=multiple)
    ):
        assert spec.index == index and spec.shape == (rows, cols) == data.shape
        assert spec.height == min(rows, ny) and spec.width == min(cols, nx)
        np.testing.assert_array_equal(data[: spec.height, : spec.width], image[spec.slices])
        assert np.all(data[spec.height :, :] == -1.0) and np.all(data[:, spec.width :] == -1.0)
        assert spec.y0 <= spec.core_y0 < spec.core_y1 <= spec.y0 + spec.height
        assert spec.x0 <= spec.core_x0 < spec.core_x1 <= spec.x0 + spec.width
        covered[spec.slices] += 1
        cores[spec.core_slices] += 1
    assert covered.min() >= 1
    assert np.all(cores == 1)
    for axis, side, n in (("y0", rows, ny), ("x0", cols, nx)):
        starts = origins(specs, axis)
        assert starts[0] == 0 and starts[-1] == max(0, n - side)
        # neighbours overlap by at least the manifest's overlap (spread evenly)
        assert all(side - gap >= overlap for gap in np.diff(starts))


def test_sized_tiles_by_hand() -> None:
    # radio-detector 2.0: 576 px tiles, 64 px overlap, sides multiples of 8
    (small,) = tile_grid((256, 256), 576, 64, multiple=8)
    assert small.shape == (256, 256) and (small.height, small.width) == (256, 256)
    (odd,) = tile_grid((250, 300), 576, 64, multiple=8)
    assert odd.shape == (256, 304) and (odd.height, odd.width) == (250, 300)
    specs = tile_grid((1000, 1000), 576, 64, multiple=8)
    assert [s.shape for s in specs] == [(536, 536)] * 4  # not 4 x 576^2
    assert origins(specs, "x0") == [0, 464]  # overlap 72 >= 64
    assert [(s.core_x0, s.core_x1) for s in specs[:2]] == [(0, 500), (500, 1000)]
    # a big image: full tiles, as many as the fixed grid
    assert tile_shape((20000, 20000), 576, 64, multiple=8) == (576, 576)


def test_read_tile_of_a_sized_spec_is_its_shape() -> None:
    image = np.ones((10, 21), dtype=np.float32)
    (spec,) = tile_grid((10, 21), 32, 4, multiple=8)
    assert spec.shape == (16, 24)
    data = read_tile(image, spec, fill=np.nan)
    assert data.shape == (16, 24)
    assert np.isnan(data[10:]).all() and np.isnan(data[:, 21:]).all() and data[:10, :21].all()


@pytest.mark.parametrize(
    ("multiple", "match"),
    [(0, "multiple must be a positive integer"), (5, r"tile \(32\) must be a multiple")],
)
def test_bad_multiple(multiple: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tile_grid((10, 10), 32, 4, multiple=multiple)
    with pytest.raises(ValueError, match=match):
        tile_shape((10, 10), 32, 4, multiple=multiple)
