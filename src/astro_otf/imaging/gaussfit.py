"""Elliptical Gaussian fits to the image pixels of many sources at once, with their errors.

Why: a detector network is good at saying *where* sources are, but what it learned about
their fluxes and sizes holds only on images like its training set. The classical finders
(PyBDSF, Aegean) measure a source by fitting a Gaussian to the image's own pixels, so their
flux scale follows the image whatever the telescope. The detector does the same: the network
proposes, this module measures.

* **Batched Levenberg-Marquardt.** Every source gets a square stamp of the same size (a few
  beams); the model ``A exp(-(a dx^2 + 2 b dx dy + c dy^2) / 2)`` has an analytic Jacobian,
  and all sources iterate together on (sources x pixels) arrays, each with its own damping.
  Thousands of sources fit in well under a second.
* **Neighbours.** Sources closer than two and a half beams are fitted together, as one model of
  several Gaussians on the union of their stamps (as PyBDSF and Aegean fit an island's
  components together); groups of the same size are batched. Each group is then fitted
  again with the fitted models of the sources around it subtracted, so a blend is shared
  between its members instead of counted twice.
* **Errors** follow Condon (1997, PASP 109, 166), with the noise correlated on the beam's
  scale (as in a restored image): peak, position along the major and minor axes, axes and
  angle; the integrated flux error combines them (his eq. 42).
* **Deconvolution** subtracts the beam's covariance from the fitted one; an axis that does not
  come out positive is unresolved (0).

Everything here works in pixel coordinates of one image; :mod:`..imaging.measure` turns the
results into sky quantities.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from astro_otf.imaging.merge import close_pairs

__all__ = [
    "FWHM_PER_SIGMA",
    "Fit",
    "axes_of",
    "condon_errors",
    "covariance_of",
    "deconvolve",
    "fit_gaussians",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Sources fitted together in one array pass (bounds the memory of the Jacobian).
CHUNK = 512


def covariance_of(maj: np.ndarray, mn: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Covariances (..., 2, 2) of Gaussians with FWHM axes ``maj``, ``mn`` (pixels) whose
    major axis lies at pixel angle ``theta`` (radians from +x towards +y)."""
    maj, mn, theta = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (maj, mn, theta))
    )
    s1 = (maj / FWHM_PER_SIGMA) ** 2
    s2 = (mn / FWHM_PER_SIGMA) ** 2
    c, s = np.cos(theta), np.sin(theta)
    cov = np.empty((*maj.shape, 2, 2))
    cov[..., 0, 0] = s1 * c * c + s2 * s * s
    cov[..., 1, 1] = s1 * s * s + s2 * c * c
    cov[..., 0, 1] = cov[..., 1, 0] = (s1 - s2) * c * s
    return cov


def axes_of(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FWHM major and minor axes (pixels; an axis of negative variance is 0) and the major
    axis's pixel angle (0..pi) of covariances (..., 2, 2)."""
    a, b, c = cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1]
    half = np.sqrt(((a - b) / 2) ** 2 + c * c)
    l1 = (a + b) / 2 + half
    l2 = (a + b) / 2 - half
    theta = np.mod(0.5 * np.arctan2(2 * c, a - b), math.pi)
    return (
        FWHM_PER_SIGMA * np.sqrt(np.maximum(l1, 0.0)),
        FWHM_PER_SIGMA * np.sqrt(np.maximum(l2, 0.0)),
        theta,
    )


def deconvolve(cov: np.ndarray, beam_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intrinsic FWHM axes and angle: the fitted covariance less the beam's (0 where an axis
    is not resolved)."""
    return axes_of(cov - beam_cov)


@dataclass
class Fit:
    """Results for N sources, in pixels and image units. ``ok`` is False where the fit
    failed (its values are then the starting guess)."""

    amp: np.ndarray
    x: np.ndarray
    y: np.ndarray
    cov: np.ndarray  #: (N, 2, 2)
    ok: np.ndarray
    chi2: np.ndarray  #: reduced chi^2 of the stamp (pixels over rms^2)

    def __len__(self) -> int:
        return len(self.amp)


def _lm(
    data: np.ndarray,
    weight: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    p0: np.ndarray,
    min_var: float,
    max_var: float,
    reach: float,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levenberg-Marquardt for G problems of k Gaussians each, all at once: data, weight,
    gx, gy (G, P); p0 (G, k, 6) as (amplitude, x, y, a, b, c). Returns the parameters, which
    problems converged, and their chi^2. Problems that converge leave the working arrays, so
    the stragglers cost only themselves. (A trial step can overflow exp(); it is then
    rejected, so those warnings are silenced.)"""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _lm_steps(data, weight, gx, gy, p0, (min_var, max_var, reach), iterations)


def _lm_steps(
    data: np.ndarray,
    weight: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
    p0: np.ndarray,
    bounds: tuple[float, float, float],
    iterations: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    min_var, max_var, reach = bounds
    g, k, _ = p0.shape
    p_out = p0.copy()
    chi2_out = np.zeros(g)
    conv_out = np.zeros(g, dtype=bool)
    rows = np.arange(g)
    p = p0.copy()
    f, jac = _model_jacobian(p, gx, gy)
    resid = (data - f) * weight
    chi2 = np.einsum("np,np->n", resid, resid)
    lam = np.full(g, 1e-3)
    eye = np.eye(6 * k)
    for _ in range(iterations):
        ja = jac * weight[:, None, :]
        h = ja @ np.swapaxes(ja, 1, 2)
        grad = (ja @ resid[:, :, None])[:, :, 0]
        step = _solve(h + h * eye * lam[:, None, None] + eye * 1e-12, grad)
        trial = p + step.reshape(-1, k, 6)
        f_t, jac_t = _model_jacobian(trial, gx, gy)
        r_t = (data - f_t) * weight
        chi2_t = np.einsum("np,np->n", r_t, r_t)
        better = np.isfinite(chi2_t) & (chi2_t <= chi2)
        better &= _valid(trial, p0[rows], min_var, max_var, reach)
        rel = np.where(better, (chi2 - chi2_t) / np.maximum(chi2, 1e-30), np.inf)
        p[better] = trial[better]
        chi2[better] = chi2_t[better]
        resid[better] = r_t[better]
        jac[better] = jac_t[better]
        lam = np.where(better, np.maximum(lam / 10, 1e-7), lam * 10)
        done = (better & (rel < 1e-4)) | (~better & (lam > 1e8))
        if done.any():
            p_out[rows[done]] = p[done]
            chi2_out[rows[done]] = chi2[done]
            conv_out[rows[done]] = True
            keep = ~done
            rows = rows[keep]
            if rows.size == 0:
                return p_out, conv_out, chi2_out
            p, chi2, lam, resid, jac = p[keep], chi2[keep], lam[keep], resid[keep], jac[keep]
            data, weight, gx, gy = data[keep], weight[keep], gx[keep], gy[keep]
    # out of iterations while still taking steps: as good as converged for our purpose
    p_out[rows] = p
    chi2_out[rows] = chi2
    conv_out[rows] = lam < 1e3
    return p_out, conv_out, chi2_out


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.zeros_like(b)
        for i in range(len(b)):
            try:
                out[i] = np.linalg.solve(a[i], b[i])
            except np.linalg.LinAlgError:
                out[i] = 0.0
        return out


def _valid(
    p: np.ndarray, p0: np.ndarray, min_var: float, max_var: float, reach: float
) -> np.ndarray:
    """Whether every Gaussian of each problem is a peak of sensible size near its start."""
    a, b, c = p[..., 3], p[..., 4], p[..., 5]
    det = a * c - b * b
    disc = np.sqrt(np.maximum((a - c) ** 2 / 4 + b * b, 0.0))
    widest = (a + c) / 2 - disc  # smallest eigenvalue of the inverse: largest variance
    narrowest = (a + c) / 2 + disc
    moved = np.hypot(p[..., 1] - p0[..., 1], p[..., 2] - p0[..., 2])
    each = (
        (a > 0)
        & (c > 0)
        & (det > 0)
        & (narrowest <= 1.0 / min_var)
        & (widest >= 1.0 / max_var)
        & (moved <= reach)
        & (p[..., 0] > 0)
    )
    return np.asarray(each.all(axis=1))


def _model_jacobian(p: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of each problem's Gaussians (G, P) and its Jacobian (G, 6k, P)."""
    g, k, _ = p.shape
    dx = gx[:, None, :] - p[:, :, 1:2]
    dy = gy[:, None, :] - p[:, :, 2:3]
    a, b, c = p[:, :, 3:4], p[:, :, 4:5], p[:, :, 5:6]
    e = np.exp(-0.5 * (a * dx * dx + 2 * b * dx * dy + c * dy * dy))
    f = p[:, :, 0:1] * e
    jac = np.stack(
        [
            e,
            f * (a * dx + b * dy),
            f * (b * dx + c * dy),
            -0.5 * f * dx * dx,
            -f * dx * dy,
            -0.5 * f * dy * dy,
        ],
        axis=2,
    )  # (G, k, 6, P)
    return f.sum(axis=1), jac.reshape(g, 6 * k, -1)


def _gaussians(p: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Values (N, P) of single Gaussians p (N, 6) on grids (N, P)."""
    dx = gx - p[:, 1:2]
    dy = gy - p[:, 2:3]
    values: np.ndarray = p[:, 0:1] * np.exp(
        -0.5 * (p[:, 3:4] * dx * dx + 2 * p[:, 4:5] * dx * dy + p[:, 5:6] * dy * dy)
    )
    return values


def fit_gaussians(
    image: np.ndarray,
    rms: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    beam_cov: np.ndarray,
    *,
    cov0: np.ndarray | None = None,
    half: int | None = None,
    iterations: int = 30,
    background: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    link_beams: float = 2.5,
    max_group: int = 8,
) -> Fit:
    """Fit one elliptical Gaussian per source at (x, y) (pixels) of ``image``, which must
    have its background subtracted unless ``background(x, y)`` gives it at pixel positions;
    ``rms`` is each source's local noise. ``beam_cov`` (2, 2) is the beam's covariance in
    pixels: the starting size unless ``cov0`` (N, 2, 2) gives others (never narrower than the
    beam). ``half`` is the half side of each source's stamp (default 1.5 beam major axes, at
    least 3 pixels).

    Sources closer than ``link_beams`` beams (in chains of at most ``max_group``) are fitted
    together, as one model of several Gaussians on the union of their stamps; each group is
    then fitted again with the models of the sources around it subtracted."""
    n = len(x)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if n == 0:
        empty = np.empty(0)
        return Fit(empty, empty, empty, np.empty((0, 2, 2)), np.empty(0, bool), empty)
    bmaj, bmin, _ = axes_of(beam_cov)
    if half is None:
        half = max(3, math.ceil(1.5 * float(bmaj)))
    start = np.broadcast_to(beam_cov, (n, 2, 2)).copy() if cov0 is None else cov0.copy()
    start = _at_least(start, beam_cov)
    rms = np.maximum(np.asarray(rms, dtype=np.float64), 1e-30)
    inv0 = np.linalg.inv(start)
    p = np.column_stack([np.zeros(n), x, y, inv0[:, 0, 0], inv0[:, 0, 1], inv0[:, 1, 1]])
    # a fit may shrink to 0.4 x the beam's narrowest width (noise) and grow to the stamp
    min_var = 0.16 * float(bmin / FWHM_PER_SIGMA) ** 2
    max_var = float(half) ** 2 * 4
    reach = max(1.0, 0.75 * float(bmaj))
    groups = _groups(x, y, link_beams * float(bmaj), max_group)
    near_i, near_j = _neighbour_pairs(x, y, 2 * half + 3 * float(bmaj))
    owner = np.empty(n, dtype=np.intp)
    for gi, members in enumerate(groups):
        owner[members] = gi
    outside = owner[near_i] != owner[near_j]
    near_i, near_j = near_i[outside], near_j[outside]
    ok = np.zeros(n, dtype=bool)
    chi2 = np.full(n, np.nan)
    by_size: dict[int, list[np.ndarray]] = {}
    for members in groups:
        by_size.setdefault(len(members), []).append(members)
    crowded = np.zeros(len(groups), dtype=bool)
    crowded[owner[near_i]] = True
    for sweep in range(2):
        fitted = ok.copy() if sweep else None
        for k, bucket in sorted(by_size.items()):
            if sweep:  # again only where sources around a group reach into it
                bucket = [m for m in bucket if crowded[owner[m[0]]]]
            step = max(1, CHUNK // k)
            if not bucket:
                continue
            for s in range(0, len(bucket), step):
                members = np.stack(bucket[s : s + step])  # (G, k)
                data, weight, gx, gy = _group_stamps(image, x, y, rms, members, half, background)
                if sweep:
                    data = data - _outside_models(p, fitted, members, owner, near_i, near_j, gx, gy)
                else:  # start amplitudes: the linear least squares at the start shapes
                    p[members, 0] = 1.0
                    p[members, 0] = _start_amplitude(p[members], data, weight, gx, gy)
                p0 = p[members].copy()
                fitp, conv, c2 = _lm(data, weight, gx, gy, p0, min_var, max_var, reach, iterations)
                p[members] = fitp
                ok[members] = conv[:, None]
                dof = np.maximum((weight > 0).sum(axis=1) - 6 * k, 1)
                chi2[members] = (c2 / dof)[:, None]
    cov = np.linalg.inv(_inverse_cov(p))
    ok &= np.isfinite(p).all(axis=1) & np.isfinite(cov).all(axis=(1, 2))
    # a fit needs pixels to stand on and a peak above the noise
    ok &= _valid_pixels(image, x, y, half) >= 9
    ok &= p[:, 0] >= rms
    ok &= np.hypot(p[:, 1] - x, p[:, 2] - y) <= reach
    return Fit(p[:, 0], p[:, 1], p[:, 2], cov, ok, chi2)


def _start_amplitude(
    p: np.ndarray, data: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray
) -> np.ndarray:
    """Amplitudes (G, k) that best fit the data with each group's Gaussians at their start
    positions and shapes (linear least squares, kept positive): a blend starts shared."""
    k = p.shape[1]
    dx = gx[:, None, :] - p[:, :, 1:2]
    dy = gy[:, None, :] - p[:, :, 2:3]
    e = np.exp(
        -0.5 * (p[:, :, 3:4] * dx * dx + 2 * p[:, :, 4:5] * dx * dy + p[:, :, 5:6] * dy * dy)
    )
    ew = e * weight[:, None, :]
    normal = np.einsum("gip,gjp->gij", ew, ew) + np.eye(k) * 1e-12
    rhs = np.einsum("gip,gp->gi", ew, data * weight)
    amp = _solve(normal, rhs)
    floor = 0.1 * np.maximum(np.abs(amp).max(axis=1, keepdims=True), 1e-30)
    return np.where(np.isfinite(amp), np.maximum(amp, floor), 1e-30)


def _group_stamps(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    rms: np.ndarray,
    members: np.ndarray,
    half: int,
    background: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(data, weight, x grid, y grid), each (G, P), of the union of each group's stamps: a
    box wide enough for the widest group of the batch, weighted 1 / rms on the pixels within
    ``half`` of a member (0 elsewhere and off the image)."""
    ny, nx = image.shape
    ix = np.rint(x[members]).astype(np.intp)
    iy = np.rint(y[members]).astype(np.intp)
    x0 = ix.min(axis=1) - half
    y0 = iy.min(axis=1) - half
    w = int((ix.max(axis=1) - ix.min(axis=1)).max()) + 2 * half + 1
    h = int((iy.max(axis=1) - iy.min(axis=1)).max()) + 2 * half + 1
    gx = (x0[:, None, None] + np.arange(w)[None, None, :]).repeat(h, axis=1)
    gy = (y0[:, None, None] + np.arange(h)[None, :, None]).repeat(w, axis=2)
    g = len(members)
    gx = gx.reshape(g, -1)
    gy = gy.reshape(g, -1)
    inside = (gx >= 0) & (gx < nx) & (gy >= 0) & (gy < ny)
    data = np.asarray(image[np.clip(gy, 0, ny - 1), np.clip(gx, 0, nx - 1)], dtype=np.float64)
    if background is not None:
        data = data - background(
            gx.ravel().astype(np.float64), gy.ravel().astype(np.float64)
        ).reshape(data.shape)
    near = (
        (np.abs(gx[:, None, :] - ix[:, :, None]) <= half)
        & (np.abs(gy[:, None, :] - iy[:, :, None]) <= half)
    ).any(axis=1)
    valid = inside & near & np.isfinite(data)
    sigma = np.median(rms[members], axis=1)
    weight = valid / sigma[:, None]
    return np.where(valid, data, 0.0), weight, gx.astype(np.float64), gy.astype(np.float64)


def _outside_models(
    p: np.ndarray,
    fitted: np.ndarray | None,
    members: np.ndarray,
    owner: np.ndarray,
    near_i: np.ndarray,
    near_j: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
) -> np.ndarray:
    """The fitted models of the sources near each group but not in it, on its grid."""
    out = np.zeros(gx.shape)
    groups = owner[members[:, 0]]
    slot = np.full(owner.max() + 1, -1, dtype=np.intp)
    slot[groups] = np.arange(len(members))
    where = slot[owner[near_i]]
    keep = where >= 0
    if fitted is not None:
        keep &= fitted[near_j]
    rows, sources = where[keep], near_j[keep]
    # each outside source once per group
    pairs = np.unique(np.column_stack([rows, sources]), axis=0)
    for s in range(0, len(pairs), CHUNK):
        r, j = pairs[s : s + CHUNK, 0], pairs[s : s + CHUNK, 1]
        np.add.at(out, r, _gaussians(p[j], gx[r], gy[r]))
    return out


def _groups(x: np.ndarray, y: np.ndarray, link: float, max_group: int) -> list[np.ndarray]:
    """Sources linked by distances under ``link`` (connected components), larger ones cut in
    halves along their longer extent until each holds at most ``max_group``."""
    n = len(x)
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    i, j = close_pairs(x, y, link)
    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[rb] = ra
    roots = np.array([root(k) for k in range(n)])
    order = np.argsort(roots, kind="stable")
    cuts = np.flatnonzero(np.diff(roots[order])) + 1
    out: list[np.ndarray] = []
    stack = list(np.split(order, cuts))
    while stack:
        members = stack.pop()
        if len(members) <= max_group:
            out.append(members)
            continue
        along = x if np.ptp(x[members]) >= np.ptp(y[members]) else y
        ranked = members[np.argsort(along[members], kind="stable")]
        mid = len(ranked) // 2
        stack += [ranked[:mid], ranked[mid:]]
    return out


def _valid_pixels(image: np.ndarray, x: np.ndarray, y: np.ndarray, half: int) -> np.ndarray:
    """How many finite pixels each source's own stamp holds."""
    ny, nx = image.shape
    off = np.arange(-half, half + 1)
    ix = np.rint(x).astype(np.intp)[:, None, None] + off[None, None, :]
    iy = np.rint(y).astype(np.intp)[:, None, None] + off[None, :, None]
    ix, iy = np.broadcast_arrays(ix, iy)
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    values = np.asarray(image[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)])
    counts: np.ndarray = (inside & np.isfinite(values)).sum(axis=(1, 2))
    return counts


def _inverse_cov(p: np.ndarray) -> np.ndarray:
    inv = np.empty((len(p), 2, 2))
    inv[:, 0, 0] = p[:, 3]
    inv[:, 0, 1] = inv[:, 1, 0] = p[:, 4]
    inv[:, 1, 1] = p[:, 5]
    return inv


def _at_least(cov: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Each covariance, widened where a direction is narrower than ``floor``'s."""
    out = cov.copy()
    maj, mn, theta = axes_of(cov)
    bmaj, bmin, _ = axes_of(floor)
    small = ~(mn >= bmin) | ~np.isfinite(maj)
    if small.any():
        out[small] = covariance_of(
            np.maximum(np.nan_to_num(maj[small]), float(bmaj)),
            np.maximum(np.nan_to_num(mn[small]), float(bmin)),
            np.nan_to_num(theta[small]),
        )
    return out


def _neighbour_pairs(x: np.ndarray, y: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Ordered pairs (i, j), i != j, of sources closer than ``reach`` pixels."""
    if len(x) < 2:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    i, j = close_pairs(x, y, reach)
    return np.concatenate([i, j]), np.concatenate([j, i])


def condon_errors(
    amp: np.ndarray,
    maj: np.ndarray,
    mn: np.ndarray,
    rms: np.ndarray,
    noise_fwhm: float,
) -> dict[str, np.ndarray]:
    """1-sigma errors of fitted elliptical Gaussians (Condon 1997): amplitude (image units),
    centre along the major and minor axes (pixels), the FWHM axes (pixels), the angle
    (radians) and the relative error of the integrated flux. ``noise_fwhm`` is the FWHM of
    the noise's correlation (the beam's, in pixels, for a restored image)."""
    snr2 = (np.asarray(amp) / np.asarray(rms)) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):

        def rho2(a_maj: float, a_min: float) -> np.ndarray:
            rho: np.ndarray = (
                maj
                * mn
                / (4 * noise_fwhm**2)
                * (1 + (noise_fwhm / maj) ** 2) ** a_maj
                * (1 + (noise_fwhm / mn) ** 2) ** a_min
                * snr2
            )
            return rho

        r_amp = rho2(1.5, 1.5)
        r_maj = rho2(2.5, 0.5)
        r_min = rho2(0.5, 2.5)
        sig_maj = maj / FWHM_PER_SIGMA
        sig_min = mn / FWHM_PER_SIGMA
        amp_rel = np.sqrt(2 / r_amp)
        maj_err = maj * np.sqrt(2 / r_maj)
        min_err = mn * np.sqrt(2 / r_min)
        x_err = sig_maj * np.sqrt(2 / r_maj)
        y_err = sig_min * np.sqrt(2 / r_min)
        theta_err = np.sqrt(2 / r_min) * 2 * maj * mn / np.abs(maj**2 - mn**2)
        int_rel = np.sqrt(
            amp_rel**2 + noise_fwhm**2 / (maj * mn) * ((maj_err / maj) ** 2 + (min_err / mn) ** 2)
        )
    return {
        "amp": amp_rel * np.abs(amp),
        "x_major": x_err,
        "y_minor": y_err,
        "maj": maj_err,
        "min": min_err,
        "theta": np.minimum(theta_err, math.pi / 2),
        "int_rel": int_rel,
    }
