"""One source, one detection: merge candidates that are one peak of the image.

Why: a detector's heatmap peaks are not sources. A bright point source makes a broad bump in
the heatmap that can hold two or three local maxima a fraction of a beam apart, and a 3 x 3
peak window is far too small for a beam of six pixels. Each of those maxima would become a
row of the catalogue, with the source's flux counted two or three times. A real close pair,
on the other hand, must stay two rows.

The image decides, not the heatmap. Candidates are taken brightest first (by the image's
value at their position); a fainter candidate ``b`` closer than ``max_sep`` beams to a kept
brighter candidate ``a`` is the same source when both hold:

* **no saddle**: walking from ``a`` to ``b`` along the straight line, the image never dips
  below the fainter end by more than ``dip_sigma`` times the local rms (two separate peaks
  have a valley between them; one peak does not);
* **no excess**, unless ``b`` is within ``near`` beams of ``a``: ``b``'s value is within
  ``excess_sigma`` rms of what ``a``, seen as a point source (the beam), gives at ``b``. A
  faint companion on the wing of a bright source has no saddle but does stand out above
  the wing, and stays.

Merging is transitive through kept candidates only: each candidate joins at most one kept
one, so a ridge of diffuse emission does not chain into one far-reaching group.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["bilinear", "close_pairs", "merge_candidates"]


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Image values at fractional pixel positions (NaN off the image or next to blanks)."""
    ny, nx = image.shape
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x0 = np.floor(x).astype(np.intp)
    y0 = np.floor(y).astype(np.intp)
    fx, fy = x - x0, y - y0
    inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < nx) & (y0 + 1 < ny)
    x0c = np.clip(x0, 0, max(nx - 2, 0))
    y0c = np.clip(y0, 0, max(ny - 2, 0))
    x1c = np.minimum(x0c + 1, nx - 1)
    y1c = np.minimum(y0c + 1, ny - 1)
    v = (
        image[y0c, x0c] * (1 - fx) * (1 - fy)
        + image[y0c, x1c] * fx * (1 - fy)
        + image[y1c, x0c] * (1 - fx) * fy
        + image[y1c, x1c] * fx * fy
    )
    out = np.asarray(v, dtype=np.float64)
    # a position on the last row or column (or exactly on the edge) takes its pixel
    edge = ~inside & (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
    out[edge] = image[
        np.clip(np.rint(y[edge]).astype(np.intp), 0, ny - 1),
        np.clip(np.rint(x[edge]).astype(np.intp), 0, nx - 1),
    ]
    out[~inside & ~edge] = np.nan
    return out


def merge_candidates(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    rms: np.ndarray,
    beam_cov: np.ndarray,
    *,
    max_sep: float = 2.0,
    near: float = 1.0,
    dip_sigma: float = 2.0,
    excess_sigma: float = 3.0,
    samples: int = 12,
    background: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """For each candidate at (x, y) of ``image`` (less ``background(x, y)`` when given), the
    index of the
    candidate it is merged into (its own index when it is kept). ``rms`` is each
    candidate's local noise, ``beam_cov`` the beam's covariance in pixels; distances are in
    beam FWHM (the geometric mean of the axes)."""
    n = len(x)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    owner = np.arange(n)
    if n < 2:
        return owner
    beam = 2.0 * np.sqrt(2.0 * np.log(2.0)) * float(np.linalg.det(beam_cov)) ** 0.25

    def sample(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        values = bilinear(image, xs, ys)
        return values if background is None else values - background(xs, ys)

    value = sample(x, y)
    value = np.where(np.isfinite(value), value, -np.inf)
    pairs_a, pairs_b = close_pairs(x, y, max_sep * beam)
    if pairs_a.size == 0:
        return owner
    inv = np.linalg.inv(beam_cov)
    # test every close pair once, with a the brighter end
    swap = value[pairs_b] > value[pairs_a]
    a = np.where(swap, pairs_b, pairs_a)
    b = np.where(swap, pairs_a, pairs_b)
    same = _one_peak(
        sample, x, y, value, rms, inv, beam, a, b, near, dip_sigma, excess_sigma, samples
    )
    a, b = a[same], b[same]
    # brightest first: a candidate joins the brightest kept candidate it is one peak with
    order = np.argsort(-value, kind="stable")
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    by_b = np.argsort(rank[b], kind="stable")
    a, b = a[by_b], b[by_b]
    starts = np.searchsorted(rank[b], np.arange(n))
    ends = np.searchsorted(rank[b], np.arange(n), side="right")
    kept = np.zeros(n, dtype=bool)
    for i in order.tolist():
        lo, hi = starts[rank[i]], ends[rank[i]]
        partners = a[lo:hi]
        partners = partners[kept[partners]]
        if partners.size:
            owner[i] = partners[np.argmax(value[partners])]
        else:
            kept[i] = True
    return owner


def _one_peak(
    sample: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    value: np.ndarray,
    rms: np.ndarray,
    inv_beam: np.ndarray,
    beam: float,
    a: np.ndarray,
    b: np.ndarray,
    near: float,
    dip_sigma: float,
    excess_sigma: float,
    samples: int,
) -> np.ndarray:
    """Whether each pair (a brighter, b fainter) is one peak of the image."""
    t = np.linspace(0.0, 1.0, samples + 2)[1:-1]
    lx = x[a, None] + (x[b] - x[a])[:, None] * t[None, :]
    ly = y[a, None] + (y[b] - y[a])[:, None] * t[None, :]
    line = sample(lx.ravel(), ly.ravel()).reshape(lx.shape)
    low = np.nanmin(np.where(np.isfinite(line), line, np.inf), axis=1)
    sigma = np.maximum(rms[a], rms[b])
    dip = value[b] - low
    no_saddle = dip < dip_sigma * sigma
    dx = x[b] - x[a]
    dy = y[b] - y[a]
    r2 = inv_beam[0, 0] * dx * dx + 2 * inv_beam[0, 1] * dx * dy + inv_beam[1, 1] * dy * dy
    wing = value[a] * np.exp(-0.5 * r2)
    no_excess = value[b] - wing < excess_sigma * sigma
    close = np.hypot(dx, dy) < near * beam
    same: np.ndarray = no_saddle & (close | no_excess)
    return same


def close_pairs(x: np.ndarray, y: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of positions closer than ``reach`` (a grid of ``reach``-sized
    cells: only neighbouring cells are compared)."""
    if len(x) < 2:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    cell = max(reach, 1e-6)
    cx = np.floor((x - x.min()) / cell).astype(np.int64)
    cy = np.floor((y - y.min()) / cell).astype(np.int64)
    width = int(cy.max()) + 3
    key = cx * width + cy
    order = np.argsort(key, kind="stable")
    skey = key[order]
    out_i, out_j = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            lo = np.searchsorted(skey, key + dx * width + dy, "left")
            hi = np.searchsorted(skey, key + dx * width + dy, "right")
            counts = hi - lo
            total = int(counts.sum())
            if not total:
                continue
            i = np.repeat(np.arange(len(x)), counts)
            j = order[
                np.repeat(lo, counts)
                + np.arange(total)
                - np.repeat(np.cumsum(counts) - counts, counts)
            ]
            out_i.append(i)
            out_j.append(j)
    i = np.concatenate(out_i)
    j = np.concatenate(out_j)
    keep = (i < j) & (np.hypot(x[i] - x[j], y[i] - y[j]) < reach)
    return i[keep], j[keep]
