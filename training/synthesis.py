"""Restored radio images of varied skies and telescopes, with their truth.

Why: the detector has to hold on images from any radio telescope, and its evaluation has to
say so with truth. This module renders what an imager such as WSClean writes, from a sky and
an observation (:mod:`.interferometer`):

    restored = CLEAN components (x) clean beam
             + what CLEAN left (faint sources, deconvolution errors) (x) dirty beam
             + calibration errors around bright sources
             + thermal noise, correlated like the dirty beam,
    divided by the primary beam when the image is primary-beam corrected (noise rising to
    the edges, NaN outside a mosaic's cover).

Skies (:class:`Population`): power-law source counts from flat to steep (point-dominated
shallow surveys), the real T-RECS populations of the SDC1 catalogue (deep fields of
star-forming galaxies), resolved Gaussians, double-lobed radio galaxies with or without a
core, crowded and sparse fields.

Truth is one row per *detectable unit*: a source, or each lobe of a double whose lobes are
separate peaks of the image (a saddle between them), as the merge rule of
``astro_otf.imaging.merge`` and the classical finders see them. Every unit carries its true
position, integrated flux, peak in the noiseless restored image, observed size, and its S/N
against the local noise.

:data:`CONFIGS` names telescope-like configurations; :func:`write_heldout_config` renders the
fixed held-out images of one (seeds of their own, never drawn in training).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from training import interferometer as itf
from training import simulate as sim

FWHM = sim.FWHM_PER_SIGMA
#: Small Gaussian (sigma, pixels) the residual sky is drawn with before the dirty beam's
#: Fourier transform is applied (and divided out): band-limits the sources.
SIGMA_C = 0.5


@dataclass(frozen=True)
class Observation:
    """How the sky is observed and imaged."""

    array: str = "meerkat"
    dec_deg: float = -30.0
    hour_angle_h: float = 4.0
    robust: float | None = 0.0
    bandwidth: float = 0.2
    taper: float = 0.0
    beam_pix: float = 5.0  #: clean beam FWHM (geometric mean), pixels
    rms: float = 2e-5  #: Jy/beam at the pointing centre
    clean_sigma: float = 3.0  #: CLEAN stops at this many rms
    deconv_error: float = 0.01  #: rms fractional flux CLEAN leaves on what it cleans
    phase_deg: float = 0.0  #: calibration phase error rms
    amp_error: float = 0.0  #: calibration amplitude error rms
    pb_fwhm: float = 0.0  #: primary beam FWHM in pixels (0: no primary-beam correction)
    pb_offset: tuple[float, float] = (
        0.0,
        0.0,
    )  #: pointing centre offset from the field centre (px)
    mosaic: int = 1  #: pointings in a hexagonal mosaic (1: single pointing)
    pb_cutoff: float = 0.0  #: blank (NaN) where the primary beam response is below this


@dataclass(frozen=True)
class Population:
    """The sky: counts, sizes and morphologies."""

    kind: str = "powerlaw"  #: "powerlaw" or "trecs"
    slope: float = 1.8  #: dN/dS ~ S^-slope
    per_beam: float = 1 / 200  #: sources above 5 sigma per beam area
    min_snr: float = 0.3  #: faintest source drawn (S/N of its peak at the pointing centre)
    max_snr: float = 5000.0
    resolved_share: float = 0.1  #: sources drawn as resolved Gaussians
    max_size_beams: float = 3.0  #: largest intrinsic FWHM of a resolved source
    double_share: float = 0.03  #: sources above 20 sigma drawn as double-lobed radio galaxies
    trecs_depth: float = 1.0  #: T-RECS fluxes times this, over the SDC1 noise, set the S/N


@dataclass
class Components:
    """Gaussian components of the sky in pixels: each belongs to a source (``source``)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray  #: Jy
    maj: np.ndarray  #: intrinsic FWHM, pixels (0: point)
    min: np.ndarray
    theta: np.ndarray
    source: np.ndarray
    role: np.ndarray  #: 0 single, 1 lobe, 2 core

    def __len__(self) -> int:
        return len(self.x)

    def take(self, keep: np.ndarray) -> Components:
        return Components(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    def as_sources(self, flux: np.ndarray) -> sim.Sources:
        n = len(self)
        return sim.Sources(
            self.x,
            self.y,
            flux,
            self.maj,
            self.min,
            self.theta,
            np.full(n, 2),
            np.full(n, 3),
            self.source.astype(np.int64),
        )


# --------------------------------------------------------------------------- skies


def draw_sky(
    pop: Population,
    shape: tuple[int, int],
    beam_pix: float,
    rms: float,
    rng: np.random.Generator,
    margin: int,
) -> Components:
    """Sources on ``shape`` and a ``margin`` of pixels around it."""
    ny, nx = shape
    area_beams = (nx + 2 * margin) * (ny + 2 * margin) / (1.1331 * beam_pix**2)
    if pop.kind == "trecs":
        return _trecs(pop, shape, beam_pix, rms, rng, margin)
    # counts: N(>s) ~ s^(1 - slope); per_beam sources above 5 sigma
    n5 = pop.per_beam * area_beams
    g = pop.slope - 1.0
    lo = pop.min_snr
    n_total = n5 * (lo / 5.0) ** (-g)
    cap = area_beams / 3.0  # at most one source every three beams
    if n_total > cap:
        lo = 5.0 * (cap / n5) ** (-1 / g)
        n_total = cap
    n = rng.poisson(n_total)
    u = rng.random(n)
    snr = lo * (1 - u * (1 - (pop.max_snr / lo) ** (-g))) ** (-1 / g)
    flux = snr * rms
    x = rng.uniform(-margin, nx + margin, n)
    y = rng.uniform(-margin, ny + margin, n)
    resolved = rng.random(n) < pop.resolved_share
    size = np.where(
        resolved,
        beam_pix * np.exp(rng.uniform(math.log(0.3), math.log(pop.max_size_beams), n)),
        0.0,
    )
    ratio = np.where(resolved, rng.uniform(1.0, 3.0, n), 1.0)
    theta = rng.uniform(0, math.pi, n)
    comps = Components(
        x, y, flux, size, size / ratio, theta, np.arange(n), np.zeros(n, dtype=np.int64)
    )
    doubles = np.flatnonzero((snr > 20) & (rng.random(n) < pop.double_share))
    if doubles.size:
        comps = _make_doubles(comps, doubles, beam_pix, rng)
    return comps


def _make_doubles(
    comps: Components, which: np.ndarray, beam_pix: float, rng: np.random.Generator
) -> Components:
    """Replace the sources ``which`` by two lobes (and maybe a core) along a random axis."""
    keep = np.ones(len(comps), dtype=bool)
    keep[which] = False
    parts = [comps.take(keep)]
    for i in which.tolist():
        sep = beam_pix * math.exp(rng.uniform(math.log(1.5), math.log(15.0)))
        axis = rng.uniform(0, math.pi)
        core = comps.flux[i] * (rng.uniform(0.02, 0.3) if rng.random() < 0.5 else 0.0)
        split = rng.uniform(0.3, 0.7)
        lobe_flux = comps.flux[i] - core
        fluxes = [lobe_flux * split, lobe_flux * (1 - split)]
        arms = [sep * split, -sep * (1 - split)]  # lobes unequally far from the core
        xs, ys, fs, majs, mins, ths, roles = [], [], [], [], [], [], []
        for f, arm in zip(fluxes, arms, strict=True):
            size = beam_pix * math.exp(rng.uniform(math.log(0.3), math.log(1.5)))
            xs.append(comps.x[i] + arm * math.cos(axis))
            ys.append(comps.y[i] + arm * math.sin(axis))
            fs.append(f)
            majs.append(size)
            mins.append(size / rng.uniform(1.0, 2.5))
            ths.append(axis)
            roles.append(1)
        if core > 0:
            xs.append(comps.x[i])
            ys.append(comps.y[i])
            fs.append(core)
            majs.append(0.0)
            mins.append(0.0)
            ths.append(0.0)
            roles.append(2)
        k = len(xs)
        parts.append(
            Components(
                np.array(xs),
                np.array(ys),
                np.array(fs),
                np.array(majs),
                np.array(mins),
                np.array(ths),
                np.full(k, comps.source[i]),
                np.array(roles, dtype=np.int64),
            )
        )
    return Components(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in Components.__dataclass_fields__)
    )


def _trecs(
    pop: Population,
    shape: tuple[int, int],
    beam_pix: float,
    rms: float,
    rng: np.random.Generator,
    margin: int,
) -> Components:
    """T-RECS sources of the SDC1 catalogue at new positions; sizes keep their ratio to the
    SDC1 beam, fluxes keep their ratio to the SDC1 noise (times ``trecs_depth``)."""
    spec = sim.FieldSpec(
        shape=shape,
        beam_maj=beam_pix,
        beam_min=beam_pix,
        pixel_arcsec=sim.SDC1_BEAM_ARCSEC / beam_pix,
    )
    # density per beam area as in SDC1 (1.5" beam), scaled by per_beam relative to SDC1's
    src = sim.fresh_draw(spec, rng, density=pop.per_beam * 85.0, margin=margin)
    flux = src.flux / sim.SDC1_RMS * rms * pop.trecs_depth
    n = len(src)
    return Components(
        src.x, src.y, flux, src.maj, src.min, src.theta, np.arange(n), np.zeros(n, dtype=np.int64)
    )


# --------------------------------------------------------------------------- rendering


@dataclass
class Field:
    """A rendered field: image (Jy/beam, NaN where blank), the noise rms map it was made
    with, the clean beam (FWHM axes in pixels, pixel angle) and the truth units."""

    image: np.ndarray
    noise_rms: np.ndarray
    beam: tuple[float, float, float]
    truth: dict[str, np.ndarray]
    obs: Observation


def render_field(
    obs: Observation,
    pop: Population,
    shape: tuple[int, int],
    rng: np.random.Generator,
    sky: Components | None = None,
) -> Field:
    """One restored image of ``shape`` with its truth; the sky is drawn from ``pop`` unless
    ``sky`` (components in the field's pixels) is given."""
    ny, nx = shape
    pad = int(min(max(8 * obs.beam_pix, 16), max(ny, nx) // 2))
    pad += (-(ny + 2 * pad)) % 2
    canvas = (ny + 2 * pad, nx + 2 * pad)
    uv = itf.uv_tracks(
        itf.array(obs.array),
        obs.dec_deg,
        obs.hour_angle_h,
        times=32,
        bandwidth=obs.bandwidth,
        channels=3 if obs.bandwidth > 0 else 1,
    )
    beam = itf.make_beam(uv, canvas, obs.beam_pix, obs.robust, taper=obs.taper)
    if sky is None:
        comps = draw_sky(pop, shape, obs.beam_pix, obs.rms, rng, margin=pad)
    else:
        comps = sky.take(np.ones(len(sky), dtype=bool))
    comps.x = comps.x + pad
    comps.y = comps.y + pad
    clean_cov = beam.clean_cov
    clean_spec = sim.FieldSpec(
        shape=canvas,
        beam_maj=beam.clean_maj,
        beam_min=beam.clean_min,
        beam_theta=beam.clean_theta,
        rms=obs.rms,
    )
    # CLEAN: what it found above its threshold goes to the clean beam, the rest stays dirty
    peak = _peak_of(comps, clean_cov)
    threshold = obs.clean_sigma * obs.rms
    left = np.where(
        peak > threshold,
        np.minimum(1.0, threshold / np.maximum(peak, 1e-30) * rng.uniform(0.2, 1.0, len(comps)))
        + np.abs(rng.normal(0, obs.deconv_error, len(comps))) * np.where(comps.maj > 0, 3.0, 1.0),
        1.0,
    )
    left = np.clip(left, 0.0, 1.0)
    restored, _ = sim.render(comps.as_sources(comps.flux * (1 - left)), clean_spec, None)
    image = restored.astype(np.float64)
    dirty_part = _band_limited(comps, comps.flux * left, canvas)
    kernel = beam.transfer / _gauss_ft(canvas, SIGMA_C)
    if obs.phase_deg > 0 or obs.amp_error > 0:
        bright = peak > 100 * obs.rms
        if bright.any():
            errors = beam.error_pattern(rng, obs.phase_deg, obs.amp_error)
            sky_bright = _band_limited(comps, np.where(bright, comps.flux, 0.0), canvas)
            image += beam.convolve(sky_bright, errors / _gauss_ft(canvas, SIGMA_C))
    image += beam.convolve(dirty_part, kernel)
    factor = _noise_factor(obs, canvas, pad)
    image += beam.noise(rng, obs.rms) * factor
    crop = (slice(pad, pad + ny), slice(pad, pad + nx))
    image = image[crop]
    factor = factor[crop]
    noise_rms = obs.rms * factor
    if obs.pb_cutoff > 0:
        blank = factor > 1 / obs.pb_cutoff
        image[blank] = np.nan
        noise_rms = np.where(blank, np.nan, noise_rms)
    comps.x = comps.x - pad
    comps.y = comps.y - pad
    # S/N against the noise a finder measures (thermal, confusion and artefacts), blank
    # where the image is blank
    measured = local_rms(image, math.sqrt(beam.clean_maj * beam.clean_min))
    truth = units(comps, clean_cov, shape, np.where(np.isfinite(noise_rms), measured, np.nan))
    return Field(
        image.astype(np.float32),
        noise_rms.astype(np.float32),
        (beam.clean_maj, beam.clean_min, beam.clean_theta),
        truth,
        obs,
    )


def local_rms(image: np.ndarray, beam_pix: float) -> np.ndarray:
    """The rms map a finder measures on ``image`` (the service's background module, boxes
    of 10 beams)."""
    from astro_otf.imaging.background import box_size, noise_map

    ny, nx = image.shape
    return noise_map(image, box_size(image.shape, beam_pix, 10.0)).window(0, ny, 0, nx)[1]


def _peak_of(comps: Components, beam_cov: np.ndarray) -> np.ndarray:
    """Peak (Jy/beam) of each component convolved with the beam."""
    cov = sim.covariance(comps.maj, comps.min, comps.theta) + beam_cov
    return comps.flux * np.sqrt(np.linalg.det(beam_cov) / np.linalg.det(cov))


def _gauss_ft(shape: tuple[int, int], sigma: float) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    return np.exp(-2 * (math.pi * sigma) ** 2 * (fx * fx + fy * fy))


def _band_limited(comps: Components, flux: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """The components with ``flux`` as Jy per pixel, convolved with a Gaussian of SIGMA_C."""
    keep = flux > 0
    if not keep.any():
        return np.zeros(canvas)
    spec = sim.FieldSpec(shape=canvas, beam_maj=SIGMA_C * FWHM, beam_min=SIGMA_C * FWHM)
    part = comps.take(keep)
    image, _ = sim.render(part.as_sources(flux[keep]), spec, None)
    return image.astype(np.float64) / spec.beam_area


def _noise_factor(obs: Observation, canvas: tuple[int, int], pad: int) -> np.ndarray:
    """1 / primary beam (or the mosaic's combined response) over the canvas."""
    ny, nx = canvas
    if obs.pb_fwhm <= 0:
        return np.ones(canvas)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cx = (nx - 1) / 2 + obs.pb_offset[0]
    cy = (ny - 1) / 2 + obs.pb_offset[1]
    centres = [(cx, cy)]
    if obs.mosaic > 1:
        step = 0.8 * obs.pb_fwhm
        centres = [
            (cx + step * math.cos(a), cy + step * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, obs.mosaic - 1, endpoint=False)
        ] + [(cx, cy)]
    power = np.zeros(canvas)
    for px, py in centres:
        r2 = (xx - px) ** 2 + (yy - py) ** 2
        power += np.exp(-4 * math.log(2) * r2 / obs.pb_fwhm**2) ** 2
    return 1.0 / np.sqrt(np.maximum(power, 1e-6))


# --------------------------------------------------------------------------- truth


def units(
    comps: Components, beam_cov: np.ndarray, shape: tuple[int, int], noise_rms: np.ndarray
) -> dict[str, np.ndarray]:
    """The detectable units: components of one source merge unless the image (noiseless,
    clean beam) shows a saddle between them, as the finders would separate them."""
    ny, nx = shape
    cov = sim.covariance(comps.maj, comps.min, comps.theta) + beam_cov
    peak = _peak_of(comps, beam_cov)
    parent = np.arange(len(comps))
    by_source: dict[int, list[int]] = {}
    for i, s in enumerate(comps.source.tolist()):
        by_source.setdefault(s, []).append(i)
    for members in by_source.values():
        for a_i, a in enumerate(members):
            for b in members[a_i + 1 :]:
                if not _separate_peaks(comps, cov, peak, a, b):
                    ra, rb = _root(parent, a), _root(parent, b)
                    parent[rb] = ra
    roots = np.array([_root(parent, i) for i in range(len(comps))])
    out: dict[str, list[float]] = {
        k: []
        for k in ("x", "y", "flux", "peak", "maj", "min", "theta", "resolved", "kind", "source")
    }
    for r in np.unique(roots):
        idx = np.flatnonzero(roots == r)
        f = comps.flux[idx]
        total = float(f.sum())
        x = float((comps.x[idx] * f).sum() / total)
        y = float((comps.y[idx] * f).sum() / total)
        # size: the second moments of the unit's light (beam-convolved)
        d = np.stack([comps.x[idx] - x, comps.y[idx] - y], axis=1)
        moment = (f[:, None, None] * (cov[idx] + d[:, :, None] * d[:, None, :])).sum(0) / total
        maj, mn, theta = sim.axes(moment)
        intrinsic = moment - beam_cov
        resolved = (
            bool(sim.axes(intrinsic)[0] > 0.5 * sim.axes(beam_cov)[0])
            if len(idx) > 1
            else (bool(comps.maj[idx[0]] > 0.5 * sim.axes(beam_cov)[0]))
        )
        out["x"].append(x)
        out["y"].append(y)
        out["flux"].append(total)
        out["peak"].append(float(_model_at(comps, cov, idx, x, y, beam_cov)))
        out["maj"].append(float(maj))
        out["min"].append(float(mn))
        out["theta"].append(float(theta))
        out["resolved"].append(float(resolved))
        roles = set(comps.role[idx].tolist())
        out["kind"].append(
            float(
                1
                if roles == {1}
                else 2
                if 2 in roles and len(idx) == 1
                else 3
                if len(idx) > 1
                else 0
            )
        )
        out["source"].append(float(comps.source[idx[0]]))
    truth = {k: np.array(v) for k, v in out.items()}
    on = (
        (truth["x"] >= -0.5)
        & (truth["x"] < nx - 0.5)
        & (truth["y"] >= -0.5)
        & (truth["y"] < ny - 0.5)
    )
    truth = {k: v[on] for k, v in truth.items()}
    ix = np.clip(np.rint(truth["x"]).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(truth["y"]).astype(int), 0, ny - 1)
    local = noise_rms[iy, ix]
    truth["snr"] = truth["peak"] / local
    keep = np.isfinite(local)  # blank mosaic borders hold no truth
    return {k: v[keep] for k, v in truth.items()}


def _root(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def _separate_peaks(comps: Components, cov: np.ndarray, peak: np.ndarray, a: int, b: int) -> bool:
    """Whether the noiseless image of components a and b dips between them by more than 10 %
    of the fainter end (each end taken as the brighter of its component's peak and the
    profile there)."""
    t = np.linspace(0.0, 1.0, 41)
    px = comps.x[a] + (comps.x[b] - comps.x[a]) * t
    py = comps.y[a] + (comps.y[b] - comps.y[a]) * t
    profile = np.zeros_like(t)
    for i in (a, b):
        inv = np.linalg.inv(cov[i])
        dx, dy = px - comps.x[i], py - comps.y[i]
        profile += peak[i] * np.exp(
            -0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy)
        )
    inner = profile[1:-1].min()
    return bool(inner < 0.9 * min(profile.max(), profile[0], profile[-1]))


def _model_at(
    comps: Components, cov: np.ndarray, idx: np.ndarray, x: float, y: float, beam_cov: np.ndarray
) -> float:
    """The noiseless restored image of components ``idx`` at (x, y) (their own light)."""
    peak = _peak_of(comps.take(idx), beam_cov)
    total = 0.0
    for k, i in enumerate(idx.tolist()):
        inv = np.linalg.inv(cov[i])
        dx, dy = x - comps.x[i], y - comps.y[i]
        total += peak[k] * math.exp(
            -0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy)
        )
    return total


# --------------------------------------------------------------------------- configurations


def random_observation(rng: np.random.Generator, beam_pix: float) -> Observation:
    """An observation by any of the arrays, at any declination it sees, full track or
    snapshot, any weighting, with or without calibration errors and primary-beam correction."""
    name = str(rng.choice(itf.ARRAYS, p=[0.22, 0.18, 0.2, 0.1, 0.1, 0.1, 0.1]))
    lat = itf.array(name).latitude_deg
    dec = float(np.clip(rng.uniform(lat - 70, lat + 50), -88, 88))
    snapshot = rng.random() < 0.3
    ha = float(rng.uniform(0.03, 0.5) if snapshot else rng.uniform(1.0, 6.0))
    robust = None if rng.random() < 0.2 else float(rng.uniform(-2.0, 1.0))
    pb = 0.0
    offset = (0.0, 0.0)
    mosaic = 1
    cutoff = 0.0
    if rng.random() < 0.4:
        pb = float(beam_pix * rng.uniform(15, 60))
        offset = (float(rng.uniform(-0.6, 0.6) * pb), float(rng.uniform(-0.6, 0.6) * pb))
        mosaic = 7 if rng.random() < 0.3 else 1
        cutoff = float(rng.uniform(0.1, 0.3)) if rng.random() < 0.4 else 0.0
    errors = rng.random() < 0.6
    return Observation(
        array=name,
        dec_deg=dec,
        hour_angle_h=ha,
        robust=robust,
        bandwidth=float(rng.uniform(0.0, 0.3)),
        taper=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.15 else 0.0,
        beam_pix=beam_pix,
        rms=float(math.exp(rng.uniform(math.log(5e-6), math.log(5e-4)))),
        clean_sigma=float(rng.uniform(0.5, 5.0)),
        deconv_error=float(math.exp(rng.uniform(math.log(0.001), math.log(0.015)))),
        phase_deg=float(rng.uniform(0.2, 4.0)) if errors else 0.0,
        amp_error=float(rng.uniform(0.002, 0.03)) if errors else 0.0,
        pb_fwhm=pb,
        pb_offset=offset,
        mosaic=mosaic,
        pb_cutoff=cutoff,
    )


def random_population(rng: np.random.Generator) -> Population:
    """Point-dominated power-law skies (flat to steep), T-RECS deep fields, sparse to
    crowded, with resolved sources and radio galaxies."""
    crowd = float(math.exp(rng.uniform(math.log(1 / 800), math.log(1 / 15))))
    if rng.random() < 0.25:
        return Population(
            kind="trecs",
            per_beam=crowd,
            trecs_depth=float(math.exp(rng.uniform(math.log(0.3), math.log(3.0)))),
        )
    return Population(
        kind="powerlaw",
        slope=float(rng.uniform(1.5, 2.5)),
        per_beam=crowd,
        min_snr=0.3,
        max_snr=float(math.exp(rng.uniform(math.log(300), math.log(2e4)))),
        resolved_share=float(rng.uniform(0.0, 0.3)),
        max_size_beams=float(rng.uniform(1.5, 5.0)),
        double_share=float(rng.uniform(0.0, 0.15)),
    )


@dataclass(frozen=True)
class Config:
    """A telescope-like configuration of the evaluation: its observation and sky, the
    pixel scale and image size of its held-out images."""

    name: str
    description: str
    obs: Observation
    pop: Population
    pixel_arcsec: float
    size: int
    freq_hz: float
    seeds: tuple[int, ...]


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config(
            "meerkat",
            'MeerKAT-like L-band: 4 h track, robust -0.5, 7.5" beam sampled at 0.4" (18.8 px, '
            "block-averaged by the detector), primary-beam corrected, calibration errors, "
            "power-law counts with doubles",
            Observation(
                "meerkat",
                -30.0,
                4.0,
                -0.5,
                0.25,
                0.0,
                18.75,
                8e-6,
                2.0,
                0.01,
                1.5,
                0.01,
                pb_fwhm=4800.0,
                pb_offset=(700.0, -500.0),
            ),
            Population("powerlaw", 1.8, 1 / 50, 0.3, 3000.0, 0.15, 3.0, 0.08),
            0.4,
            1024,
            1.28e9,
            (910, 911, 912, 913),
        ),
        Config(
            "askap",
            'ASKAP-like (RACS/EMU): 8 h track, robust 0, 12" x 10" beam at 2.5" pixels, '
            "7-beam mosaic with NaN borders, power-law counts",
            Observation(
                "askap",
                -45.0,
                4.0,
                0.0,
                0.2,
                0.0,
                4.4,
                3e-5,
                3.0,
                0.01,
                1.0,
                0.01,
                pb_fwhm=400.0,
                pb_offset=(0.0, 0.0),
                mosaic=7,
                pb_cutoff=0.2,
            ),
            Population("powerlaw", 2.0, 1 / 300, 0.3, 5000.0, 0.1, 3.0, 0.05),
            2.5,
            1024,
            8.88e8,
            (920, 921),
        ),
        Config(
            "lofar",
            'LOFAR-like (LoTSS): 8 h track, robust -0.5, 6" beam at 1.5" pixels, noise rising '
            "to a mosaic edge, calibration errors, steep counts",
            Observation(
                "lofar",
                50.0,
                4.0,
                -0.5,
                0.3,
                0.0,
                4.0,
                8e-5,
                3.0,
                0.005,
                1.5,
                0.01,
                pb_fwhm=2400.0,
                pb_offset=(900.0, 300.0),
            ),
            Population("powerlaw", 2.2, 1 / 400, 0.3, 5000.0, 0.12, 4.0, 0.06),
            1.5,
            1024,
            1.44e8,
            (930, 931, 932),
        ),
        Config(
            "vla",
            "VLA-like B configuration (FIRST-like): snapshots with six-fold sidelobes, natural "
            'weighting, 5.4" beam at 1.8" pixels, point-dominated flat counts',
            Observation("vla-b", 30.0, 0.05, None, 0.05, 0.0, 3.0, 1.5e-4, 5.0, 0.005, 1.0, 0.01),
            Population("powerlaw", 1.6, 1 / 500, 0.3, 5000.0, 0.08, 3.0, 0.05),
            1.8,
            1024,
            1.4e9,
            (940, 941),
        ),
    )
}


def config_field(config: Config, seed: int) -> Field:
    """One held-out image of a configuration, from its own seed."""
    rng = np.random.default_rng(seed)
    return render_field(config.obs, config.pop, (config.size, config.size), rng)


def write_fits(field: Field, path: Path, pixel_arcsec: float, freq_hz: float, label: str) -> WCS:
    """The field as a FITS image (SIN projection, ICRS, beam and units in the header)."""
    ny, nx = field.image.shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [150.0, field.obs.dec_deg]
    w.wcs.cdelt = [-pixel_arcsec / 3600, pixel_arcsec / 3600]
    w.wcs.crpix = [nx / 2 + 1, ny / 2 + 1]
    w.wcs.radesys = "ICRS"
    header = w.to_header()
    bmaj, bmin, theta = field.beam
    header["BMAJ"] = bmaj * pixel_arcsec / 3600
    header["BMIN"] = bmin * pixel_arcsec / 3600
    header["BPA"] = (math.degrees(theta) - 90.0) % 180.0
    header["BUNIT"] = "JY/BEAM"
    header["RESTFRQ"] = freq_hz
    header["OBJECT"] = label
    header["TELESCOP"] = field.obs.array.upper() + "-LIKE"
    header["ORIGIN"] = "astro-otf training/synthesis.py"
    header["NOISE"] = (field.obs.rms, "thermal rms at the pointing centre, Jy/beam")
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(field.image, header).writeto(path, overwrite=True)
    return w


def write_truth(field: Field, wcs: WCS, path: Path, pixel_arcsec: float) -> None:
    """The truth units as CSV: ra, dec (deg), x, y, int_flux (Jy), peak_flux (Jy/beam),
    observed maj/min (arcsec), pa (deg), snr (local), resolved (0/1), kind."""
    t = field.truth
    ra, dec = wcs.pixel_to_world_values(t["x"], t["y"])
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "ra",
                "dec",
                "x",
                "y",
                "int_flux",
                "peak_flux",
                "maj",
                "min",
                "pa",
                "snr",
                "resolved",
                "kind",
            ]
        )
        for i in range(len(t["x"])):
            out.writerow(
                [
                    f"{ra[i]:.7f}",
                    f"{dec[i]:.7f}",
                    f"{t['x'][i]:.3f}",
                    f"{t['y'][i]:.3f}",
                    f"{t['flux'][i]:.6g}",
                    f"{t['peak'][i]:.6g}",
                    f"{t['maj'][i] * pixel_arcsec:.4f}",
                    f"{t['min'][i] * pixel_arcsec:.4f}",
                    f"{(math.degrees(t['theta'][i]) - 90.0) % 180.0:.2f}",
                    f"{t['snr'][i]:.3f}",
                    int(t["resolved"][i]),
                    int(t["kind"][i]),
                ]
            )


def write_heldout_config(name: str, out_dir: Path) -> list[tuple[Path, Path]]:
    """Render the held-out images of configuration ``name``: (FITS, truth CSV) pairs."""
    config = CONFIGS[name]
    pairs = []
    for seed in config.seeds:
        field = config_field(config, seed)
        stem = out_dir / f"{name}_{seed}"
        wcs = write_fits(
            field,
            stem.with_suffix(".fits"),
            config.pixel_arcsec,
            config.freq_hz,
            f"{name}-like held-out field {seed}",
        )
        truth = stem.parent / f"{stem.name}_truth.csv"
        write_truth(field, wcs, truth, config.pixel_arcsec)
        pairs.append((stem.with_suffix(".fits"), truth))
    return pairs


def with_beam(obs: Observation, beam_pix: float) -> Observation:
    return replace(obs, beam_pix=beam_pix)
