"""From per-tile detections back to one catalogue of the image, on the sky.

A detector sees tiles (see :mod:`.tiling`), so it reports positions in a tile's pixels, a
source in an overlap is reported by every tile that sees it, and a source cut by a tile's
edge is reported, truncated, by that tile too. This module turns those reports into one
list for the image and then into a table with ICRS positions.

Removing duplicates uses two rules, both available here and combined by :func:`stitch`:

* **Ownership** (:func:`owned`): keep a detection only from the tile whose *core* holds its
  centre (the cores partition the image; see :class:`.tiling.TileSpec`). It is exact when
  tiles report the same centre for the same source, as a point source does, and it drops a
  truncated report at a tile's edge, whose centre is pulled into the neighbour's core, as
  long as the source is no wider than the overlap (so that its owner sees it whole).
* **Non-maximum suppression** (:func:`merge`): greedy, highest score first, removing a
  detection whose box overlaps a kept one by more than ``iou`` (intersection over union) or,
  when ``ios`` is given, whose intersection covers more than ``ios`` of the smaller box,
  which catches a truncated box lying inside the full one.

:func:`stitch` applies ownership and then suppression: ownership settles point sources
exactly, and suppression catches the duplicates of extended sources whose centre two tiles
place on opposite sides of the core boundary. A detector whose centres jitter between tiles
can lose a source that lies right on that boundary when both tiles place it on the far
side; ``margin`` widens each core by that many pixels to keep both, for suppression to
settle.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.table import Column, Table
from astropy.wcs import WCS
from numpy.typing import ArrayLike

from astro_otf.imaging.tiling import TileSpec

__all__ = [
    "ColumnMeta",
    "Detection",
    "merge",
    "nms",
    "owned",
    "position_angles",
    "stitch",
    "to_image",
    "to_sky",
]


@dataclass(frozen=True)
class Detection:
    """One detected source: centre ``(x, y)`` in 0-based pixels (pixel centres at integers,
    ``x`` along columns, ``y`` along rows), its box ``width`` x ``height`` in pixels (centred
    on it), its ``score`` (higher is more confident) and any further values the model gives
    (``extra``: flux, major and minor axes, position angle, ...), carried through unchanged.
    """

    x: float
    y: float
    width: float
    height: float
    score: float
    extra: Mapping[str, float] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.x) and math.isfinite(self.y) and math.isfinite(self.score)):
            raise ValueError(f"a detection needs a finite position and score, got {self!r}")
        if not (self.width > 0 and self.height > 0):
            raise ValueError(f"a detection's box needs a positive size, got {self!r}")

    def moved(self, dx: float, dy: float) -> Detection:
        """This detection shifted by ``(dx, dy)`` pixels."""
        return Detection(self.x + dx, self.y + dy, self.width, self.height, self.score, self.extra)


@dataclass(frozen=True)
class ColumnMeta:
    """How an ``extra`` field is described in the catalogue: unit, UCD and description."""

    unit: str
    ucd: str
    description: str


def to_image(detections: Iterable[Detection], spec: TileSpec) -> list[Detection]:
    """Tile-local detections in image pixels. A detection whose centre is not on the tile's
    image data (in the padding past the image edge, or outside the tile) is dropped."""
    kept: list[Detection] = []
    for det in detections:
        if -0.5 <= det.x < spec.width - 0.5 and -0.5 <= det.y < spec.height - 0.5:
            kept.append(det.moved(spec.x0, spec.y0))
    return kept


def owned(
    detections: Iterable[Detection], spec: TileSpec, *, margin: float = 0.0
) -> list[Detection]:
    """The detections (in image pixels) whose centre lies in the tile's core, widened by
    ``margin`` pixels on each side."""
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    x_lo, x_hi = spec.core_x0 - 0.5 - margin, spec.core_x1 - 0.5 + margin
    y_lo, y_hi = spec.core_y0 - 0.5 - margin, spec.core_y1 - 0.5 + margin
    return [det for det in detections if x_lo <= det.x < x_hi and y_lo <= det.y < y_hi]


def merge(
    detections: Sequence[Detection], iou: float = 0.5, *, ios: float | None = None
) -> list[Detection]:
    """Greedy non-maximum suppression (see :func:`nms`): the detections that survive, highest
    score first (ties in input order)."""
    n = len(detections)
    if n == 0:
        return []
    columns = [
        np.fromiter((getattr(d, name) for d in detections), dtype=np.float64, count=n)
        for name in ("x", "y", "width", "height", "score")
    ]
    keep = nms(*columns, iou=iou, ios=ios)
    return [detections[i] for i in keep.tolist()]


def stitch(
    tiles: Iterable[tuple[TileSpec, Sequence[Detection]]],
    *,
    iou: float = 0.5,
    ios: float | None = None,
    ownership: bool = True,
    margin: float = 0.0,
) -> list[Detection]:
    """One list of detections in image pixels from each tile's tile-local detections:
    :func:`to_image`, then :func:`owned` (unless ``ownership`` is false), then :func:`merge`.
    """
    found: list[Detection] = []
    for spec, detections in tiles:
        local = to_image(detections, spec)
        found.extend(owned(local, spec, margin=margin) if ownership else local)
    return merge(found, iou, ios=ios)


def nms(
    x: ArrayLike,
    y: ArrayLike,
    width: ArrayLike,
    height: ArrayLike,
    score: ArrayLike,
    *,
    iou: float = 0.5,
    ios: float | None = None,
) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first.

    Boxes are taken by decreasing score (ties in input order); a box is dropped when a box
    already kept overlaps it with intersection over union above ``iou`` or, when ``ios`` is
    given, with an intersection above ``ios`` times the smaller box's area. The score sort is
    O(n log n); overlapping pairs are found with a uniform grid and tested in one vectorised
    pass, so only boxes that do overlap are visited one by one.
    """
    xs, ys, ws, hs, ss = (
        np.asarray(v, dtype=np.float64).reshape(-1) for v in (x, y, width, height, score)
    )
    n = xs.size
    if not all(v.size == n for v in (ys, ws, hs, ss)):
        raise ValueError("x, y, width, height and score must have the same length")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou must be between 0 and 1, got {iou}")
    if ios is not None and not 0.0 <= ios <= 1.0:
        raise ValueError(f"ios must be between 0 and 1, got {ios}")
    if n == 0:
        return np.empty(0, dtype=np.intp)
    if not (np.all(ws > 0) and np.all(hs > 0)):
        raise ValueError("every box needs a positive width and height")
    if not (np.all(np.isfinite(ss)) and np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("every position and score must be finite")
    if not (np.all(np.isfinite(ws)) and np.all(np.isfinite(hs))):
        raise ValueError("every box size must be finite")

    order = np.argsort(-ss, kind="stable")
    left, right = xs - ws / 2, xs + ws / 2
    bottom, top = ys - hs / 2, ys + hs / 2
    a, b = _touching_pairs(left, right, bottom, top)
    if a.size:
        iw = np.minimum(right[a], right[b]) - np.maximum(left[a], left[b])
        ih = np.minimum(top[a], top[b]) - np.maximum(bottom[a], bottom[b])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        area = ws * hs
        union = area[a] + area[b] - inter
        duplicate = inter > iou * union
        if ios is not None:
            duplicate |= inter > ios * np.minimum(area[a], area[b])
        a, b = a[duplicate], b[duplicate]
    if a.size == 0:
        return order

    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    first = rank[a] < rank[b]
    winner = np.where(first, a, b)
    loser = np.where(first, b, a)
    by_rank = np.argsort(rank[winner], kind="stable")
    winner, loser = winner[by_rank], loser[by_rank]
    starts = np.flatnonzero(np.r_[True, winner[1:] != winner[:-1]])
    ends = np.r_[starts[1:], winner.size]
    suppressed = np.zeros(n, dtype=bool)
    # Sequential by nature: a box suppresses others only if nothing above it suppressed it.
    for box, start, end in zip(
        winner[starts].tolist(), starts.tolist(), ends.tolist(), strict=True
    ):
        if not suppressed[box]:
            suppressed[loser[start:end]] = True
    return order[~suppressed[order]]


def _touching_pairs(
    left: np.ndarray, right: np.ndarray, bottom: np.ndarray, top: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a, b)`` of boxes, each pair once, that include every pair whose boxes
    intersect.

    Boxes are entered in every cell of a uniform grid that they touch; two intersecting boxes
    both touch the cell of their intersection's lower-left corner, and a pair is taken only
    from that cell, so that no pair is listed twice.
    """
    n = left.size
    side = np.maximum(right - left, top - bottom)
    x_min, y_min = float(left.min()), float(bottom.min())
    extent = max(float(right.max()) - x_min, float(top.max()) - y_min)
    # Cells about twice the typical box: most boxes fall in 1-4 cells. Never more than
    # 2**20 cells a side, so cell numbers fit in int64; a few huge boxes coarsen the grid.
    cell = max(2.0 * float(np.median(side)), extent / 2**20, np.finfo(np.float64).tiny)
    while True:
        gx0 = np.floor((left - x_min) / cell).astype(np.int64)
        gx1 = np.floor((right - x_min) / cell).astype(np.int64)
        gy0 = np.floor((bottom - y_min) / cell).astype(np.int64)
        gy1 = np.floor((top - y_min) / cell).astype(np.int64)
        ny = gy1 - gy0 + 1
        counts = (gx1 - gx0 + 1) * ny
        total = int(counts.sum())
        if total <= 8 * n + 4096:
            break
        cell *= 2.0
    # One entry per (box, cell it touches), sorted by cell.
    box = np.repeat(np.arange(n, dtype=np.int64), counts)
    local = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    gx = gx0[box] + local // ny[box]
    gy = gy0[box] + local % ny[box]
    by_cell = np.argsort(gx * (int(gy1.max()) + 1) + gy, kind="stable")
    box, gx, gy = box[by_cell], gx[by_cell], gy[by_cell]
    # Pair each entry with the later entries of its cell.
    bounds = np.flatnonzero(np.r_[True, (gx[1:] != gx[:-1]) | (gy[1:] != gy[:-1]), True])
    group_end = np.repeat(bounds[1:], np.diff(bounds))
    position = np.arange(total, dtype=np.int64)
    partners = group_end - position - 1
    m = int(partners.sum())
    i = np.repeat(position, partners)
    j = i + 1 + np.arange(m, dtype=np.int64) - np.repeat(np.cumsum(partners) - partners, partners)
    a, b = box[i], box[j]
    # floor is monotone: the corner's cell is the larger of the two boxes' first cells
    home = (np.maximum(gx0[a], gx0[b]) == gx[i]) & (np.maximum(gy0[a], gy0[b]) == gy[i])
    return a[home], b[home]


# --------------------------------------------------------------------------- to the sky


def position_angles(wcs: WCS, x: np.ndarray, y: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Position angles (degrees East of North, ICRS, 0 to 180) of axes at pixel angle
    ``theta`` (radians from +x towards +y) through the pixels ``(x, y)``: a point one pixel
    along each axis gives its direction on the sky, whatever the projection or rotation."""
    if len(x) == 0:
        return np.empty(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wcslib warns on pixels outside the projection
        centre = wcs.pixel_to_world(x, y).icrs
        along = wcs.pixel_to_world(x + np.cos(theta), y + np.sin(theta)).icrs
    return np.mod(np.asarray(centre.position_angle(along).deg, dtype=np.float64), 180.0)


def to_sky(
    detections: Sequence[Detection],
    wcs: WCS,
    origin: tuple[int, int] = (0, 0),
    *,
    extra_columns: Mapping[str, ColumnMeta] | None = None,
) -> Table:
    """The catalogue of ``detections`` (in the pixels of the image ``wcs`` describes).

    Columns: ``ra``, ``dec`` (ICRS degrees, whatever the image's frame: Galactic and FK5
    images are converted), ``x``, ``y`` (0-based pixels of the image originally loaded:
    ``origin`` is the ``(x, y)`` of this image's ``[0, 0]`` there, as
    :attr:`.fits.SkyImage.origin` gives for a cut-out), ``width``, ``height`` (pixels),
    ``score``, then one column per ``extra`` key (first-seen order; NaN where a detection
    lacks it). Every column carries a unit and a UCD in ``meta["ucd"]``; an extra column
    gets them from ``extra_columns`` (unit and UCD left out when not described there).
    Positions the WCS cannot map come out as NaN.
    """
    n = len(detections)

    def values(name: str) -> np.ndarray:
        return np.fromiter((getattr(d, name) for d in detections), dtype=np.float64, count=n)

    x, y = values("x"), values("y")
    ra = np.full(n, np.nan)
    dec = np.full(n, np.nan)
    if n:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # wcslib warns on pixels outside the projection
            world = wcs.pixel_to_world(x, y).icrs
        ra = np.asarray(world.ra.deg, dtype=np.float64).reshape(n)
        dec = np.asarray(world.dec.deg, dtype=np.float64).reshape(n)

    def col(name: str, data: np.ndarray, unit: str, ucd: str, description: str) -> Column:
        return Column(data, name=name, unit=unit, description=description, meta={"ucd": ucd})

    columns = [
        col("ra", ra, "deg", "pos.eq.ra;meta.main", "Right ascension (ICRS) of the centre."),
        col("dec", dec, "deg", "pos.eq.dec;meta.main", "Declination (ICRS) of the centre."),
        col(
            "x",
            x + origin[0],
            "pix",
            "pos.cartesian.x",
            "0-based pixel column of the centre in the uploaded image (FITS pixel = x + 1).",
        ),
        col(
            "y",
            y + origin[1],
            "pix",
            "pos.cartesian.y",
            "0-based pixel row of the centre in the uploaded image (FITS pixel = y + 1).",
        ),
        col("width", values("width"), "pix", "phys.angSize;instr.pixel", "Box width (along x)."),
        col("height", values("height"), "pix", "phys.angSize;instr.pixel", "Box height (along y)."),
        col("score", values("score"), "", "stat.probability", "Detection score of the model."),
    ]
    described = extra_columns or {}
    names: dict[str, None] = {}
    for det in detections:
        names.update(dict.fromkeys(det.extra))
    taken = {column.name for column in columns}
    for name in names:
        if name in taken:
            raise ValueError(f"the extra field {name!r} clashes with a catalogue column")
        data = np.fromiter(
            (float(d.extra.get(name, np.nan)) for d in detections), dtype=np.float64, count=n
        )
        meta = described.get(name)
        column = Column(data, name=name)
        if meta is not None:
            column.unit = meta.unit
            column.description = meta.description
            column.meta["ucd"] = meta.ucd
        columns.append(column)
    return Table(columns)
