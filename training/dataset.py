"""Training patches and their targets, drawn on the fly from :mod:`training.simulate`.

Why on the fly: rendering a 128 px patch costs a few milliseconds against ~100 ms for its
forward and backward pass, so every step sees new sources, positions and noise and the
model cannot memorise a finite set. The draw is seeded, so a run is reproducible.

The input is normalised exactly as the shipped manifest tells the service to: subtract the
median, divide by the MAD rms (1.4826 MAD) of the patch, then ``asinh(x / ASINH_SCALE)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training import simulate as sim

ASINH_SCALE = 3.0
MAD_TO_SIGMA = 1.4826
#: Sources fainter than this peak S/N are neither positives nor negatives (no loss nearby).
MIN_TARGET_SNR = 4.0
#: Share of patches cut from the catalogue's own layout (the rest are fresh draws).
REAL_LAYOUT_SHARE = 0.4


def normalise(image: np.ndarray) -> tuple[np.ndarray, float]:
    """(normalised image, MAD rms) as the manifest's chain computes them."""
    finite = image[np.isfinite(image)]
    median = float(np.median(finite))
    rms = float(MAD_TO_SIGMA * np.median(np.abs(finite - median)))
    out = np.arcsinh((image - median) / rms / ASINH_SCALE)
    return np.nan_to_num(out, nan=0.0).astype(np.float32), rms


@dataclass
class Patch:
    image: np.ndarray  #: (P, P) normalised
    heat: np.ndarray  #: (P, P) target in [0, 1], 1 at source centres
    weight: np.ndarray  #: (P, P) 0 where the heat loss is ignored
    attrs: np.ndarray  #: (8, P, P) targets at the centres
    centre: np.ndarray  #: (P, P) 1 at centres with attribute targets
    truth: dict[str, np.ndarray]
    rms: float
    spec: sim.FieldSpec


def draw_field(
    rng: np.random.Generator,
    size: int,
    real_share: float = REAL_LAYOUT_SHARE,
) -> tuple[np.ndarray, dict[str, np.ndarray], sim.FieldSpec]:
    """One training field: a cut of the real layout (SDC1 sampling, noise x0.8-1.25) or a
    fresh draw with another beam and noise."""
    shape = (size, size)
    if rng.random() < real_share:
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
        if rng.random() < 0.5:  # the catalogue's layout, mirrored: same sky statistics
            src = sim.Sources(
                size - 1 - src.x,
                src.y,
                src.flux,
                src.maj,
                src.min,
                np.pi - src.theta,
                src.profile,
                src.klass,
                src.ident,
            )
    else:
        spec = sim.random_spec(rng, shape)
        src = sim.fresh_draw(spec, rng, density=rng.uniform(0.3, 1.6))
    image, truth = sim.render(src, spec, rng)
    return image, truth, spec


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def make_patch(rng: np.random.Generator, size: int = 128) -> Patch:
    image, truth, spec = draw_field(rng, size)
    norm, rms = normalise(image)
    return Patch(norm, *targets(truth, spec, rms, (size, size)), truth=truth, rms=rms, spec=spec)


def targets(
    truth: dict[str, np.ndarray],
    spec: sim.FieldSpec,
    rms: float,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heat, heat-loss weight, attributes and centre mask for the truth on a field."""
    ny, nx = shape
    heat = np.zeros(shape, np.float32)
    ignore = np.zeros(shape, bool)
    attrs = np.zeros((8, ny, nx), np.float32)
    centre = np.zeros(shape, np.float32)
    sigma = max(0.6, 0.35 * spec.beam_maj)
    r = math.ceil(3 * sigma)
    snr = truth["peak"] / rms
    order = np.argsort(snr)  # brightest last: it wins a shared centre pixel
    for i in order:
        x, y = float(truth["x"][i]), float(truth["y"][i])
        cx, cy = round(x), round(y)
        if not (0 <= cx < nx and 0 <= cy < ny):
            continue
        x0, x1, y0, y1 = max(0, cx - r), min(nx, cx + r + 1), max(0, cy - r), min(ny, cy + r + 1)
        if snr[i] < MIN_TARGET_SNR:
            ignore[y0:y1, x0:x1] = True
            continue
        gx = np.arange(x0, x1) - x
        gy = (np.arange(y0, y1) - y)[:, None]
        bump = np.exp(-(gx * gx + gy * gy) / (2 * sigma * sigma))
        heat[y0:y1, x0:x1] = np.maximum(heat[y0:y1, x0:x1], bump)
        heat[cy, cx] = 1.0
        theta = float(truth["theta"][i])
        attrs[:, cy, cx] = (
            x - cx,
            y - cy,
            math.log(max(snr[i], 1e-3)),
            math.log(max(truth["flux"][i] / truth["peak"][i], 1e-3)),
            math.log(truth["maj"][i]),
            math.log(truth["min"][i]),
            math.cos(2 * theta),
            math.sin(2 * theta),
        )
        centre[cy, cx] = 1.0
    weight = np.where(ignore & (heat < 1.0), 0.0, 1.0).astype(np.float32)
    return heat, weight, attrs, centre


def batch(rng: np.random.Generator, n: int, size: int = 128) -> dict[str, np.ndarray]:
    patches = [make_patch(rng, size) for _ in range(n)]
    return {
        "image": np.stack([p.image for p in patches])[:, None],
        "heat": np.stack([p.heat for p in patches])[:, None],
        "weight": np.stack([p.weight for p in patches])[:, None],
        "attrs": np.stack([p.attrs for p in patches]),
        "centre": np.stack([p.centre for p in patches])[:, None],
    }
