"""Cutting an image into overlapping square tiles of the size a detector takes.

A network is trained and exported for one input size, so an image (or a cut-out of one) of
any shape is cut into ``tile x tile`` tiles, and the tiles of many jobs go through one forward
pass. Tiles overlap so that a source cut by one tile's edge lies whole in a neighbour.

The grid, along each axis of ``n`` pixels:

* tiles start every ``stride = tile - overlap`` pixels from 0, and the last tile is moved
  back to end on the image's last pixel, so every tile is full of image data and
  neighbouring tiles overlap by at least ``overlap`` pixels (more for the last pair);
* an image axis shorter than ``tile`` gets one tile, padded past the image edge with
  ``fill`` (pass ``fill=np.nan`` to have the normalisation's ``nan`` step treat the padding
  like blank pixels);
* every pixel lies in at least one tile, and in exactly one tile's **core**: the overlap
  between two neighbours is split at its middle.

A network that takes any input size that is a multiple of its downsampling (``multiple``:
2^levels-1 for a U-Net-like detector) gets **tiles sized to the image** instead: along each
axis the same number of tiles as above, but all of one side, the smallest multiple of
``multiple`` (at most ``tile``) with which that many tiles, spread evenly from the first
pixel to the last, overlap by at least ``overlap``. A 256 px image is then one 256 px tile,
not a 576 px tile of which 80 % is padding, and a 1000 px axis is two 536 px tiles rather
than two 576 px ones. All the tiles of an image share one shape (rows x columns), so they
still go through a forward pass together; only an axis shorter than its tile is padded, by
less than ``multiple`` pixels. The core is what :mod:`.stitch` uses for
  ownership: a detection is kept from the tile whose core holds its centre, the tile where
  it lies farthest from an edge.

:func:`iter_tiles` is lazy and reads only each tile's slice of the array, so a memory-mapped
image is never loaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from astro_otf.imaging.background import box_size

__all__ = [
    "Tile",
    "TilePlan",
    "TileSpec",
    "iter_tiles",
    "plan_tiles",
    "read_tile",
    "resample_factor",
    "tile_count",
    "tile_grid",
    "tile_shape",
    "tiles_meeting",
]


@dataclass(frozen=True)
class TileSpec:
    """Where one tile lies in the image. All coordinates are 0-based image pixels, ``y`` the
    row and ``x`` the column; ranges are half-open.

    ``index`` is the tile's position in :func:`tile_grid`'s list (row-major; ``row`` and
    ``col`` are its grid position). The tile's pixel ``[0, 0]`` is image pixel ``[y0, x0]``;
    it is ``size x size`` pixels, or ``rows x cols`` when sized to the image (:attr:`shape`);
    its first ``height`` rows and ``width`` columns are image data, the rest is padding.
    ``core_y0:core_y1, core_x0:core_x1`` is the region this tile owns: the cores of a grid
    partition the image.
    """

    index: int
    row: int
    col: int
    y0: int
    x0: int
    size: int
    height: int
    width: int
    core_y0: int
    core_y1: int
    core_x0: int
    core_x1: int
    #: (rows, columns) of a tile sized to the image; None for a ``size x size`` tile
    sized: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the tile, padding included: what the network is given."""
        return self.sized if self.sized is not None else (self.size, self.size)

    @property
    def slices(self) -> tuple[slice, slice]:
        """The image region inside the tile, as ``image[slices]``."""
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """The region this tile owns, as ``image[core_slices]``."""
        return slice(self.core_y0, self.core_y1), slice(self.core_x0, self.core_x1)

    def contains(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Whether image positions (pixel centres at integers) lie on this tile's image data:
        pixel ``i`` spans ``[i - 0.5, i + 0.5)``."""
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return (
            (xs >= self.x0 - 0.5)
            & (xs < self.x0 + self.width - 0.5)
            & (ys >= self.y0 - 0.5)
            & (ys < self.y0 + self.height - 0.5)
        )

    def owns(self, x: ArrayLike, y: ArrayLike) -> np.ndarray:
        """Whether image positions lie in this tile's core (same pixel convention as
        :meth:`contains`). Every position on the image is owned by exactly one tile."""
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return (
            (xs >= self.core_x0 - 0.5)
            & (xs < self.core_x1 - 0.5)
            & (ys >= self.core_y0 - 0.5)
            & (ys < self.core_y1 - 0.5)
        )


class Tile(NamedTuple):
    """A tile's place in the image and its pixels (``spec.shape``)."""

    spec: TileSpec
    data: np.ndarray


def tile_grid(
    shape: tuple[int, int], tile: int, overlap: int, *, multiple: int | None = None
) -> list[TileSpec]:
    """The tiles covering an image of ``shape`` (rows, columns), row-major: ``tile x tile``,
    or sized to the image (sides multiples of ``multiple``, at most ``tile``) when
    ``multiple`` is given (see the module docstring).

    Raises :class:`ValueError` unless ``tile > 0``, ``0 <= overlap < tile``, both sides of
    ``shape`` are positive and ``multiple`` (when given) is positive and divides ``tile``.
    """
    ny, nx = _shape(shape, tile, overlap)
    if multiple is not None:
        _check_multiple(tile, multiple)
        (ys, ycore, rows), (xs, xcore, cols) = (
            _sized_axis(n, tile, overlap, multiple) for n in (ny, nx)
        )
        return _specs(ny, nx, max(rows, cols), ys, ycore, xs, xcore, (rows, cols))
    ys, ycore = _axis(ny, tile, tile - overlap)
    xs, xcore = _axis(nx, tile, tile - overlap)
    return _specs(ny, nx, tile, ys, ycore, xs, xcore, None)


def tile_shape(
    shape: tuple[int, int], tile: int, overlap: int, *, multiple: int | None = None
) -> tuple[int, int]:
    """(rows, columns) of every tile :func:`tile_grid` gives for an image of ``shape``, by
    arithmetic (no tile listed)."""
    ny, nx = _shape(shape, tile, overlap)
    if multiple is None:
        return tile, tile
    _check_multiple(tile, multiple)
    return _sized_side(ny, tile, overlap, multiple), _sized_side(nx, tile, overlap, multiple)


def _specs(
    ny: int,
    nx: int,
    size: int,
    ys: list[int],
    ycore: list[tuple[int, int]],
    xs: list[int],
    xcore: list[tuple[int, int]],
    sized: tuple[int, int] | None,
) -> list[TileSpec]:
    rows, cols = sized if sized is not None else (size, size)
    specs: list[TileSpec] = []
    for row, (y0, (cy0, cy1)) in enumerate(zip(ys, ycore, strict=True)):
        for col, (x0, (cx0, cx1)) in enumerate(zip(xs, xcore, strict=True)):
            specs.append(
                TileSpec(
                    index=len(specs),
                    row=row,
                    col=col,
                    y0=y0,
                    x0=x0,
                    size=size,
                    height=min(rows, ny - y0),
                    width=min(cols, nx - x0),
                    core_y0=cy0,
                    core_y1=cy1,
                    core_x0=cx0,
                    core_x1=cx1,
                    sized=sized,
                )
            )
    return specs


def tiles_meeting(
    shape: tuple[int, int],
    tile: int,
    overlap: int,
    box: tuple[int, int, int, int],
    *,
    multiple: int | None = None,
) -> list[TileSpec]:
    """The tiles of :func:`tile_grid` (same specs, same indices) whose cores meet ``box``
    (x0, y0, x1, y1), found axis by axis: a small box of a huge image lists a few tiles, not
    the whole grid."""
    ny, nx = _shape(shape, tile, overlap)
    sized = None
    if multiple is not None:
        _check_multiple(tile, multiple)
        ys, ycore, rows = _sized_axis(ny, tile, overlap, multiple)
        xs, xcore, cols = _sized_axis(nx, tile, overlap, multiple)
        size, sized = max(rows, cols), (rows, cols)
    else:
        ys, ycore = _axis(ny, tile, tile - overlap)
        xs, xcore = _axis(nx, tile, tile - overlap)
        size = rows = cols = tile
    x0, y0, x1, y1 = box
    wanted_rows = [r for r, (c0, c1) in enumerate(ycore) if c0 < y1 and y0 < c1]
    wanted_cols = [c for c, (c0, c1) in enumerate(xcore) if c0 < x1 and x0 < c1]
    return [
        TileSpec(
            index=row * len(xs) + col,
            row=row,
            col=col,
            y0=ys[row],
            x0=xs[col],
            size=size,
            height=min(rows, ny - ys[row]),
            width=min(cols, nx - xs[col]),
            core_y0=ycore[row][0],
            core_y1=ycore[row][1],
            core_x0=xcore[col][0],
            core_x1=xcore[col][1],
            sized=sized,
        )
        for row in wanted_rows
        for col in wanted_cols
    ]


def resample_factor(beam_pix: float | None, max_beam_pix: float | None) -> int:
    """1, or the block size whose averaging brings a beam of ``beam_pix`` pixels within a
    model's widest (``max_beam_pix``)."""
    if max_beam_pix is None or beam_pix is None or beam_pix <= max_beam_pix:
        return 1
    return math.ceil(beam_pix / max_beam_pix)


@dataclass(frozen=True)
class TilePlan:
    """How a tiled model searches an image, worked out from its header alone: the same plan
    sizes a job in the batch former and runs it in the worker.

    ``factor``: the block size the pixels are averaged by (1: none). ``searched``: the
    pixels (x0, y0, x1, y1) of the image that are read, the whole image or a region of
    interest's tiles with a margin of noise-map boxes. ``tiles``: for a region, the whole
    image's tiles whose cores meet it, placed in the averaged ``searched`` pixels; None for the
    whole image, whose tiles are :func:`tile_grid` of ``shape`` (not listed here: a header may
    declare any size). ``count``: how many tiles run."""

    factor: int
    shape: tuple[int, int]
    searched: tuple[int, int, int, int]
    tiles: list[TileSpec] | None
    count: int


def plan_tiles(
    shape: tuple[int, int],
    beam_pix: float | None,
    region_box: tuple[int, int, int, int] | None,
    *,
    tile: int,
    overlap: int,
    multiple: int | None = None,
    max_beam_pix: float | None = None,
    noise_box_beams: float | None = None,
    pad_boxes: int = 2,
) -> TilePlan:
    """The :class:`TilePlan` of an image of ``shape`` (rows, columns) whose beam is
    ``beam_pix`` pixels wide, searched whole or, with ``region_box`` (x0, y0, x1, y1), in a
    region of interest. ``noise_box_beams``: the side of the model's noise-map boxes in beams
    (None: its normalisation has no local noise map, and a region needs no margin).

    A region runs on the whole image's tiles whose cores meet it, so that the network sees
    what it sees in the whole image's run, and a region of a big image costs only those."""
    factor = resample_factor(beam_pix, max_beam_pix)
    ny, nx = shape
    averaged = (-(-ny // factor), -(-nx // factor))  # the block means' pixels
    if region_box is None:
        count = tile_count(averaged, tile, overlap)
        return TilePlan(factor, averaged, (0, 0, nx, ny), None, count)
    bx0, by0, bx1, by1 = region_box
    box_averaged = (bx0 // factor, by0 // factor, -(-bx1 // factor), -(-by1 // factor))
    chosen = tiles_meeting(averaged, tile, overlap, box_averaged, multiple=multiple)
    tx0 = min(t.x0 for t in chosen)
    ty0 = min(t.y0 for t in chosen)
    tx1 = min(averaged[1], max(t.x0 + t.width for t in chosen))
    ty1 = min(averaged[0], max(t.y0 + t.height for t in chosen))
    box, margin = 1, 0
    if noise_box_beams is not None:
        box = box_size(averaged, None if beam_pix is None else beam_pix / factor, noise_box_beams)
        margin = pad_boxes * box
    sx0 = max(0, (tx0 - margin) // box * box)
    sy0 = max(0, (ty0 - margin) // box * box)
    sx1 = min(averaged[1], -(-(tx1 + margin) // box) * box)
    sy1 = min(averaged[0], -(-(ty1 + margin) // box) * box)
    placed = [
        replace(
            t,
            x0=t.x0 - sx0,
            y0=t.y0 - sy0,
            core_x0=t.core_x0 - sx0,
            core_x1=t.core_x1 - sx0,
            core_y0=t.core_y0 - sy0,
            core_y1=t.core_y1 - sy0,
        )
        for t in chosen
    ]
    searched = (sx0 * factor, sy0 * factor, min(nx, sx1 * factor), min(ny, sy1 * factor))
    return TilePlan(factor, averaged, searched, placed, len(placed))


def tile_count(shape: tuple[int, int], tile: int, overlap: int) -> int:
    """``len(tile_grid(shape, tile, overlap))``, by arithmetic: no tile is listed, so the
    count of a huge declared image costs nothing (the scheduler asks it of every queued job).
    Tiles sized to the image (``multiple``) are as many. Raises :class:`ValueError` as
    :func:`tile_grid` does."""
    ny, nx = _shape(shape, tile, overlap)
    stride = tile - overlap
    return _axis_count(ny, tile, stride) * _axis_count(nx, tile, stride)


def read_tile(array: np.ndarray, spec: TileSpec, *, fill: float = 0.0) -> np.ndarray:
    """The pixels of one tile (``spec.shape``) as a new array, padded with ``fill``; reads
    only the tile's slice of ``array``. Floating arrays keep their precision (native byte
    order); integer arrays become float32 (float64 above 16 bits)."""
    dtype = np.result_type(array.dtype, np.float32).newbyteorder("=")
    out = np.full(spec.shape, fill, dtype=dtype)
    out[: spec.height, : spec.width] = array[spec.slices]
    return out


def iter_tiles(
    array: np.ndarray,
    tile: int,
    overlap: int,
    *,
    fill: float = 0.0,
    multiple: int | None = None,
) -> Iterator[Tile]:
    """Yield the tiles of a 2-D ``array`` (see :func:`tile_grid`), lazily, one slice read at a
    time; each tile's data is a new array of ``spec.shape`` (see :func:`read_tile`)."""
    if array.ndim != 2:
        raise ValueError(f"the image must be 2-D, got an array of shape {array.shape}")
    for spec in tile_grid((array.shape[0], array.shape[1]), tile, overlap, multiple=multiple):
        yield Tile(spec, read_tile(array, spec, fill=fill))


def _check(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or int(tile) != tile or tile < 1:
        raise ValueError(f"tile must be a positive integer, got {tile!r}")
    if isinstance(overlap, bool) or int(overlap) != overlap or not 0 <= overlap < tile:
        raise ValueError(
            f"overlap must be an integer with 0 <= overlap < tile ({tile}), got {overlap!r}"
        )


def _check_multiple(tile: int, multiple: int) -> None:
    if isinstance(multiple, bool) or int(multiple) != multiple or multiple < 1:
        raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    if tile % multiple:
        raise ValueError(f"tile ({tile}) must be a multiple of multiple ({multiple})")


def _shape(shape: tuple[int, int], tile: int, overlap: int) -> tuple[int, int]:
    _check(tile, overlap)
    if len(shape) != 2 or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"shape must be two positive integers (rows, columns), got {shape!r}")
    return int(shape[0]), int(shape[1])


def _axis_count(n: int, tile: int, stride: int) -> int:
    """Tiles along one axis of ``n`` pixels: one when the axis fits in a tile, else one per
    stride from 0 plus the last, moved back to end on the last pixel (integer arithmetic:
    exact for any ``n``)."""
    if n <= tile:
        return 1
    return -(-(n - tile) // stride) + 1


def _axis(n: int, tile: int, stride: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Tile origins along one axis and each tile's core range ``(start, stop)``."""
    if n <= tile:
        return [0], [(0, n)]
    count = _axis_count(n, tile, stride)
    origins = [k * stride for k in range(count - 1)] + [n - tile]
    # Split each overlap at its middle: tile k owns up to the middle of its overlap with k+1.
    cuts = [(origins[k + 1] + origins[k] + tile) // 2 for k in range(count - 1)]
    bounds = [0, *cuts, n]
    return origins, [(bounds[k], bounds[k + 1]) for k in range(count)]


def _sized_side(n: int, tile: int, overlap: int, multiple: int) -> int:
    """Side of the tiles sized to an axis of ``n`` pixels: as many tiles as a fixed grid
    needs, each the smallest multiple of ``multiple`` with which they overlap by at least
    ``overlap`` when spread evenly. Never above ``tile``: that many full tiles cover ``n``
    with that overlap, and ``tile`` is a multiple of ``multiple``."""
    k = _axis_count(n, tile, tile - overlap)
    need = -(-(n + (k - 1) * overlap) // k)
    return min(tile, -(-need // multiple) * multiple)


def _sized_axis(
    n: int, tile: int, overlap: int, multiple: int
) -> tuple[list[int], list[tuple[int, int]], int]:
    """Origins and core ranges of the tiles sized to an axis of ``n`` pixels, and their
    side. Origins are spread evenly from 0 to ``n - side``: two neighbours are at most
    ``ceil((n - side) / (k - 1)) <= side - overlap`` apart."""
    side = _sized_side(n, tile, overlap, multiple)
    k = _axis_count(n, tile, tile - overlap)
    if k == 1:
        return [0], [(0, n)], side
    origins = [i * (n - side) // (k - 1) for i in range(k)]
    cuts = [(origins[i + 1] + origins[i] + side) // 2 for i in range(k - 1)]
    bounds = [0, *cuts, n]
    return origins, [(bounds[i], bounds[i + 1]) for i in range(k)], side
