"""Local background and noise of an image: a mesh of robust statistics, read per tile.

Why: one rms for a whole radio image is wrong almost everywhere. Noise rises towards the edge
of a primary-beam-corrected map or a mosaic, and around a bright source the residual
sidelobes raise it again; a global MAD rms then makes false detections where the noise is
high and loses faint sources where it is low. The classical finders measure the noise
locally (PyBDSF's ``rms_box``, Aegean's BANE, sep's and photutils' box backgrounds), and so
does the detector.

The recipe is SExtractor's and sep's, with BANE's robust statistics:

* the image is cut into square boxes of ``box`` pixels; in each, the background is the median
  and the rms 1.4826 x the median absolute deviation of its valid pixels, after clipping at
  ``clip`` sigma (``iterations`` times) so that sources do not count as noise; at most
  ``max_samples`` pixels of a box are read (a regular subsample), so a large image costs a
  bounded time per box;
* boxes with too few valid pixels (blank mosaic borders) take the values of their nearest
  valid neighbours, then the mesh is smoothed by a 3 x 3 median filter, as sep does;
* values between box centres are interpolated bilinearly, so a tile gets a smooth map.

The mesh is small (one value per box), so the map of a 16k x 16k image costs a few MB, and
the image is read one band of rows at a time, never whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MAD_TO_SIGMA", "NoiseMap", "box_size", "noise_map"]

MAD_TO_SIGMA = 1.482602218505602
#: A box needs at least this share of valid pixels to be measured; others are filled in.
MIN_VALID_SHARE = 0.25
#: Smallest box side, pixels.
MIN_BOX = 16


@dataclass(frozen=True)
class NoiseMap:
    """Background and rms (image units) at the centres of a ``box``-pixel mesh over an image
    of ``shape``; :meth:`window` and :meth:`at` interpolate between them."""

    shape: tuple[int, int]
    box: int
    bg: np.ndarray  #: (rows, cols) of the mesh
    rms: np.ndarray

    @property
    def global_rms(self) -> float:
        """The median of the mesh's rms: one number for the image."""
        return float(np.median(self.rms))

    @property
    def global_bg(self) -> float:
        """The median of the mesh's background: one number for the image (image units)."""
        return float(np.median(self.bg))

    def _weights(self, coords: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lower cell index, upper cell index and weight of the upper one for pixel
        coordinates along one axis (cell i is centred on pixel (i + 0.5) box - 0.5)."""
        t = (coords + 0.5) / self.box - 0.5
        t = np.clip(t, 0.0, cells - 1.0)
        lo = np.floor(t).astype(np.intp)
        hi = np.minimum(lo + 1, cells - 1)
        return lo, hi, (t - lo).astype(np.float32)

    def _interp(self, mesh: np.ndarray, ys: np.ndarray, xs: np.ndarray, grid: bool) -> np.ndarray:
        y0, y1, wy = self._weights(ys, mesh.shape[0])
        x0, x1, wx = self._weights(xs, mesh.shape[1])
        if grid:
            y0, y1, wy = y0[:, None], y1[:, None], wy[:, None]
            x0, x1, wx = x0[None, :], x1[None, :], wx[None, :]
        top = mesh[y0, x0] * (1 - wx) + mesh[y0, x1] * wx
        bottom = mesh[y1, x0] * (1 - wx) + mesh[y1, x1] * wx
        return np.asarray(top * (1 - wy) + bottom * wy, dtype=np.float32)

    def window(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """(background, rms) over ``image[y0:y1, x0:x1]`` (rows and columns past the image
        edge take the edge values)."""
        ys = np.arange(y0, y1, dtype=np.float64)
        xs = np.arange(x0, x1, dtype=np.float64)
        return self._interp(self.bg, ys, xs, True), self._interp(self.rms, ys, xs, True)

    def at(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(background, rms) at pixel positions ``(x, y)``."""
        xs = np.asarray(x, dtype=np.float64)
        ys = np.asarray(y, dtype=np.float64)
        return self._interp(self.bg, ys, xs, False), self._interp(self.rms, ys, xs, False)

    def scaled(self, factor: int) -> NoiseMap:
        """The same map for the image's ``factor`` x ``factor`` block means (whose rms is
        not known from this one: use only for the background)."""
        return NoiseMap(
            (-(-self.shape[0] // factor), -(-self.shape[1] // factor)),
            max(1, self.box // factor),
            self.bg,
            self.rms,
        )


def box_size(shape: tuple[int, int], beam_pix: float | None, beams: float) -> int:
    """The box side for an image: ``beams`` beam widths (64 px without a beam), at least
    MIN_BOX pixels, and no more than half the shorter side unless that is under MIN_BOX."""
    box = 64 if beam_pix is None or not beam_pix > 0 else math.ceil(beams * beam_pix)
    box = max(MIN_BOX, box)
    half = min(shape) // 2
    return max(MIN_BOX, min(box, half)) if half >= MIN_BOX else max(shape)


def noise_map(
    data: np.ndarray,
    box: int,
    *,
    clip: float = 3.0,
    iterations: int = 3,
    max_samples: int = 400,
) -> NoiseMap:
    """The :class:`NoiseMap` of ``data`` (2-D, may be memory-mapped; NaN pixels are
    blank) with boxes of ``box`` pixels. Raises ValueError when no box has valid pixels."""
    if box < 1:
        raise ValueError(f"box must be at least 1 pixel, got {box}")
    ny, nx = data.shape
    rows, cols = -(-ny // box), -(-nx // box)
    step = max(1, math.ceil(box / math.sqrt(max_samples)))
    bg = np.full((rows, cols), np.nan, dtype=np.float64)
    rms = np.full((rows, cols), np.nan, dtype=np.float64)
    flat = 0
    for r in range(rows):
        band = np.asarray(data[r * box : (r + 1) * box : step], dtype=np.float32)
        cells = _cells(band, box, step, cols)
        med, sig, valid = _clipped_stats(cells, clip, iterations)
        ok = valid >= MIN_VALID_SHARE * cells.shape[1]
        # a box cut by the image edge has fewer pixels: judge it by the pixels it has
        ok |= (valid >= 16) & (valid >= MIN_VALID_SHARE * np.isfinite(cells).sum(axis=1))
        flat += int((ok & ~(sig > 0)).sum())
        ok &= sig > 0
        bg[r, ok] = med[ok]
        rms[r, ok] = sig[ok]
    known = np.isfinite(rms)
    if not known.any():
        if flat:
            raise ValueError(
                "the image has no noise to measure (more than half the pixels of every box "
                "have the same value)"
            )
        raise ValueError("no box of the image has enough valid pixels to measure its noise")
    bg, rms = _fill(bg, known), _fill(rms, known)
    return NoiseMap((ny, nx), box, _median3(bg), _median3(rms))


def _cells(band: np.ndarray, box: int, step: int, cols: int) -> np.ndarray:
    """The (subsampled) pixels of each box of one band of rows: (cols, pixels). Box ``c``
    holds the columns ``c * box + k * step`` (k = 0, 1, ...) that lie before the next box."""
    per = -(-box // step)  # subsampled pixels per box side
    nx = band.shape[1]
    idx = np.arange(cols)[:, None] * box + np.arange(per)[None, :] * step
    inside = (idx < np.minimum(np.arange(1, cols + 1)[:, None] * box, nx)) & (idx < nx)
    values = band[:, np.where(inside, idx, 0)]  # (rows, cols, per)
    values[:, ~inside] = np.nan
    return values.transpose(1, 0, 2).reshape(cols, -1)


def _clipped_stats(
    cells: np.ndarray, clip: float, iterations: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, MAD rms and count of the clipped valid values of each row of ``cells``."""
    values = cells.copy()
    for _ in range(iterations):
        med = _row_median(values)
        sig = MAD_TO_SIGMA * _row_median(np.abs(values - med[:, None]))
        with np.errstate(invalid="ignore"):
            out = np.abs(values - med[:, None]) > clip * sig[:, None]
        if not out.any():
            break
        values[out] = np.nan
    med = _row_median(values)
    sig = MAD_TO_SIGMA * _row_median(np.abs(values - med[:, None]))
    return med, np.nan_to_num(sig, nan=0.0), np.isfinite(values).sum(axis=1)


def _row_median(values: np.ndarray) -> np.ndarray:
    """The median of the finite values of each row (NaN for a row without any): a sort puts
    NaN last, so the middle of each row's valid part is read directly (numpy's nanmedian
    goes through masked arrays for small rows, ten times slower)."""
    ordered = np.sort(values, axis=1)
    n = np.isfinite(values).sum(axis=1)
    lo = np.clip((n - 1) // 2, 0, values.shape[1] - 1)
    hi = np.clip(n // 2, 0, values.shape[1] - 1)
    rows = np.arange(len(values))
    med = 0.5 * (ordered[rows, lo] + ordered[rows, hi])
    return np.where(n > 0, med, np.nan)


def _fill(mesh: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Unknown cells take the mean of their known neighbours, ring by ring."""
    out = mesh.copy()
    have = known.copy()
    while not have.all():
        padded = np.pad(np.where(have, out, 0.0), 1)
        count = np.pad(have.astype(np.float64), 1)
        total = np.zeros_like(out)
        n = np.zeros_like(out)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                total += padded[dy : dy + out.shape[0], dx : dx + out.shape[1]]
                n += count[dy : dy + out.shape[0], dx : dx + out.shape[1]]
        new = ~have & (n > 0)
        out[new] = total[new] / n[new]
        have |= new
    return out


def _median3(mesh: np.ndarray) -> np.ndarray:
    """3 x 3 median filter of the mesh (edges use the cells they have)."""
    if mesh.size == 1:
        return mesh.astype(np.float32)
    padded = np.pad(mesh, 1, constant_values=np.nan)
    stack = np.stack(
        [
            padded[dy : dy + mesh.shape[0], dx : dx + mesh.shape[1]]
            for dy in (0, 1, 2)
            for dx in (0, 1, 2)
        ]
    )
    median: np.ndarray = np.nanmedian(stack, axis=0).astype(np.float32)
    return median
