"""Training fields and their targets: a seeded pool of rendered fields, cropped per step.

Why a pool: a restored interferometric field (:mod:`training.synthesis`) costs 0.1-1.5 s to
render (Fourier transforms of the dirty beam, noise and calibration errors at up to 4x the
network's resolution), against ~0.4 s for a whole training step of 16 patches. So
``POOL_FIELDS`` fields are rendered once, in parallel, each from its own seed
(``(seed, index)``, so the pool is the same whatever the number of processes), and every step
crops random patches from them with a random flip or rotation of the sky.

What the network sees is exactly what the service gives it: the field block-averaged as the
service averages an image whose beam is wider than ``MAX_BEAM_PIX``, then normalised by the
manifest's chain (:data:`NORMALISATION`, parsed and fitted by the service's own code), i.e.
the local background and rms map, then ``asinh``.

The pool mixes SDC1-like fields (the T-RECS catalogue's real layout and fresh draws, Gaussian
beam, :mod:`training.simulate`) with restored images of every telescope-like array, sky and
weighting (:mod:`training.synthesis`), beams of 2-25 pixels before averaging.

Targets per unit of the truth (a source, or a lobe that is its own peak): a heat bump at its
centre, and eight attributes there (offset, ln peak S/N against the local rms, ln int/peak,
ln observed FWHM axes, cos 2t, sin 2t). Units under ``MIN_TARGET_SNR`` of local S/N are
neither positive nor negative (no heat loss near them) down to ``IGNORE_SNR``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from astro_otf.imaging.normalise import parse_chain
from astro_otf.imaging.resample import block_mean
from training import simulate as sim
from training import synthesis as syn

#: The normalisation the manifest declares (and training applies through the same code).
NORMALISATION: list[dict[str, object]] = [
    {"op": "local_standardise", "box_beams": 10.0},
    {"op": "asinh", "scale": 3.0},
    {"op": "nan", "value": 0.0},
]
#: Widest beam (FWHM, pixels) the network sees: wider ones are block-averaged first.
MAX_BEAM_PIX = 7.0
#: Side of a pool field after averaging, and of a training patch.
FIELD = 256
PATCH = 128
POOL_FIELDS = 2400
#: Share of the pool that is SDC1-like (Gaussian beam; the rest are restored images).
SDC1_SHARE = 0.2
#: Units at least this bright (local S/N) are positives; between IGNORE_SNR and this, ignored.
MIN_TARGET_SNR = 4.0
IGNORE_SNR = 2.5
N_ATTRS = 8


@dataclass
class PoolField:
    """One normalised field (float16) and its truth in the field's (averaged) pixels."""

    image: np.ndarray
    x: np.ndarray
    y: np.ndarray
    snr: np.ndarray  #: peak over the local rms the chain measured
    int_over_peak: np.ndarray  #: beams
    maj: np.ndarray  #: observed FWHM, pixels
    min: np.ndarray
    theta: np.ndarray
    beam_maj: float  #: pixels


def beam_factor(beam_pix: float) -> int:
    """The block size the service averages an image of this beam by (1: none)."""
    return 1 if beam_pix <= MAX_BEAM_PIX else math.ceil(beam_pix / MAX_BEAM_PIX)


def draw_beam(rng: np.random.Generator) -> float:
    """Beam FWHM (pixels) before averaging: 2-7 px log-uniform two thirds of the time,
    7-25 px (block-averaged by the service) a third."""
    if rng.random() < 2 / 3:
        return float(math.exp(rng.uniform(math.log(2.0), math.log(MAX_BEAM_PIX))))
    return float(math.exp(rng.uniform(math.log(MAX_BEAM_PIX), math.log(25.0))))


def make_field(seed: int, index: int) -> PoolField:
    """Pool field ``index`` of the pool seeded ``seed`` (independent of every other). A draw
    the simulation cannot render (a degenerate beam, say) is drawn again from a seed of its
    own, so the pool stays the same from run to run."""
    for attempt in range(10):
        try:
            return _make_field(
                np.random.default_rng([seed, index, attempt] if attempt else [seed, index])
            )
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            continue
    raise RuntimeError(f"pool field {index} of seed {seed}: ten draws could not be rendered")


def _make_field(rng: np.random.Generator) -> PoolField:
    if rng.random() < SDC1_SHARE:
        image, truth, spec = sdc1_field(rng, FIELD)
        beam = (spec.beam_maj, spec.beam_min, spec.beam_theta)
        return _normalised(
            image,
            truth["x"],
            truth["y"],
            truth["peak"],
            truth["flux"],
            truth["maj"],
            truth["min"],
            truth["theta"],
            beam,
            1,
        )
    beam_pix = draw_beam(rng)
    f = beam_factor(beam_pix)
    obs = syn.random_observation(rng, beam_pix)
    pop = syn.random_population(rng)
    field = syn.render_field(obs, pop, (FIELD * f, FIELD * f), rng)
    t = field.truth
    return _normalised(
        field.image,
        t["x"],
        t["y"],
        t["peak"],
        t["flux"],
        t["maj"],
        t["min"],
        t["theta"],
        field.beam,
        f,
    )


def sdc1_field(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, dict[str, np.ndarray], sim.FieldSpec]:
    """An SDC1-like field: a cut of the catalogue's real layout (SDC1 sampling) or a fresh
    draw with another Gaussian beam and noise; never the held-out or reserved boxes."""
    shape = (size, size)
    if rng.random() < 0.4:
        cat = sim.catalogue()
        rows = sim.training_rows()
        while True:
            x0 = int(rng.integers(int(cat["x"].min()), int(cat["x"].max()) - size))
            y0 = int(rng.integers(int(cat["y"].min()), int(cat["y"].max()) - size))
            box = (x0, y0, x0 + size, y0 + size)
            if not (_overlaps(box, sim.HELDOUT_BOX) or _overlaps(box, sim.RESERVED_BOX)):
                break
        spec = sim.FieldSpec(shape=shape, rms=sim.SDC1_RMS * rng.uniform(0.8, 1.25))
        src = sim.real_layout(x0, y0, shape, rows=rows)
    else:
        spec = sim.random_spec(rng, shape)
        src = sim.fresh_draw(spec, rng, density=rng.uniform(0.3, 1.6))
    image, truth = sim.render(src, spec, rng)
    return image, truth, spec


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _normalised(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    peak: np.ndarray,
    flux: np.ndarray,
    maj: np.ndarray,
    mn: np.ndarray,
    theta: np.ndarray,
    beam: tuple[float, float, float],
    f: int,
) -> PoolField:
    """Average by ``f`` as the service would, normalise with the manifest's chain, and move
    the truth into the averaged pixels (S/N against the chain's local rms)."""
    pixels = block_mean(image, f) if f > 1 else image
    box = 1.0 / 12.0 if f > 1 else 0.0
    bmaj = beam[0] / f
    beam_gm = math.sqrt(beam[0] * beam[1]) / f
    chain = parse_chain(NORMALISATION).fit(pixels, beam_pix=beam_gm)
    norm = chain.apply(pixels, (0, 0))
    noise = chain.noise_map
    assert noise is not None
    xa = (x - (f - 1) / 2) / f
    ya = (y - (f - 1) / 2) / f
    # averaging lowers a peak by the box it convolves with
    var_maj = (maj / f / sim.FWHM_PER_SIGMA) ** 2
    var_min = (mn / f / sim.FWHM_PER_SIGMA) ** 2
    drop = np.sqrt(var_maj * var_min / ((var_maj + box) * (var_min + box)))
    rms = noise.at(xa, ya)[1].astype(np.float64)
    return PoolField(
        image=norm.astype(np.float16),
        x=xa,
        y=ya,
        snr=peak * drop / rms,
        int_over_peak=flux / np.maximum(peak, 1e-30),
        maj=sim.FWHM_PER_SIGMA * np.sqrt(var_maj + box),
        min=sim.FWHM_PER_SIGMA * np.sqrt(var_min + box),
        theta=theta,
        beam_maj=bmaj,
    )


def make_pool(seed: int, n: int = POOL_FIELDS, workers: int | None = None) -> list[PoolField]:
    """The pool, rendered in ``workers`` processes (all cores by default)."""
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return [make_field(seed, i) for i in range(n)]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(make_field, [seed] * n, range(n), chunksize=8))


# --------------------------------------------------------------------------- patches


def _dihedral(
    field: PoolField, k: int, flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The field's image and truth positions and angles rotated by k quarter turns (then
    mirrored in x when ``flip``): the sky has no preferred orientation."""
    image = field.image
    x, y, theta = field.x.copy(), field.y.copy(), field.theta.copy()
    n = image.shape[0]
    for _ in range(k % 4):  # rot90: (x, y) -> (y, n - 1 - x), angle + pi/2
        image = np.rot90(image)
        x, y = y, n - 1 - x
        theta = theta - math.pi / 2
    if flip:
        image = image[:, ::-1]
        x = n - 1 - x
        theta = math.pi - theta
    return image, x, y, np.mod(theta, math.pi)


def patch(
    field: PoolField, rng: np.random.Generator, size: int = PATCH
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random crop of the field: (image, heat, weight, attrs, centre)."""
    image, x, y, theta = _dihedral(field, int(rng.integers(4)), bool(rng.random() < 0.5))
    n = image.shape[0]
    y0 = int(rng.integers(0, n - size + 1))
    x0 = int(rng.integers(0, n - size + 1))
    crop = np.asarray(image[y0 : y0 + size, x0 : x0 + size], dtype=np.float32)
    heat, weight, attrs, centre = targets(
        x - x0,
        y - y0,
        field.snr,
        field.int_over_peak,
        field.maj,
        field.min,
        theta,
        field.beam_maj,
        (size, size),
    )
    return crop, heat, weight, attrs, centre


def targets(
    x: np.ndarray,
    y: np.ndarray,
    snr: np.ndarray,
    int_over_peak: np.ndarray,
    maj: np.ndarray,
    mn: np.ndarray,
    theta: np.ndarray,
    beam_maj: float,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heat, heat-loss weight, attributes and centre mask of the units on a patch."""
    ny, nx = shape
    heat = np.zeros(shape, np.float32)
    ignore = np.zeros(shape, bool)
    attrs = np.zeros((N_ATTRS, ny, nx), np.float32)
    centre = np.zeros(shape, np.float32)
    sigma = max(0.6, 0.35 * beam_maj)
    r = math.ceil(3 * sigma)
    inside = (x > -r) & (x < nx + r) & (y > -r) & (y < ny + r) & (snr >= IGNORE_SNR)
    for i in np.flatnonzero(inside)[np.argsort(snr[inside])]:  # brightest last
        cx, cy = round(float(x[i])), round(float(y[i]))
        x0, x1 = max(0, cx - r), min(nx, cx + r + 1)
        y0, y1 = max(0, cy - r), min(ny, cy + r + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        if snr[i] < MIN_TARGET_SNR:
            ignore[y0:y1, x0:x1] = True
            continue
        gx = np.arange(x0, x1) - x[i]
        gy = (np.arange(y0, y1) - y[i])[:, None]
        bump = np.exp(-(gx * gx + gy * gy) / (2 * sigma * sigma))
        heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], bump)
        if not (0 <= cx < nx and 0 <= cy < ny):
            continue
        heat[cy, cx] = 1.0
        attrs[:, cy, cx] = (
            x[i] - cx,
            y[i] - cy,
            math.log(max(float(snr[i]), 1e-3)),
            math.log(max(float(int_over_peak[i]), 1e-3)),
            math.log(max(float(maj[i]), 0.5)),
            math.log(max(float(mn[i]), 0.5)),
            math.cos(2 * theta[i]),
            math.sin(2 * theta[i]),
        )
        centre[cy, cx] = 1.0
    weight = np.where(ignore & (heat < 1.0), 0.0, 1.0).astype(np.float32)
    return heat, weight, attrs, centre


def batch(rng: np.random.Generator, pool: list[PoolField], n: int) -> dict[str, np.ndarray]:
    """``n`` patches from random fields of the pool."""
    patches = [patch(pool[int(rng.integers(len(pool)))], rng) for _ in range(n)]
    return {
        "image": np.stack([p[0] for p in patches])[:, None],
        "heat": np.stack([p[1] for p in patches])[:, None],
        "weight": np.stack([p[2] for p in patches])[:, None],
        "attrs": np.stack([p[3] for p in patches]),
        "centre": np.stack([p[4] for p in patches])[:, None],
    }
