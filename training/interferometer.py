"""Synthesis imaging, simulated: what an interferometer does to the sky, for training data.

Why: radio images are not the sky convolved with a Gaussian. An interferometer samples the
sky's Fourier transform at the baselines of its antennas as the Earth turns; the imager's
*dirty beam* (the point-spread function) has sidelobes that depend on the array, the
declination, the track length and the weighting; CLEAN replaces what it deconvolves by a
Gaussian *clean beam* and leaves the rest (faint sources, deconvolution errors, calibration
errors around bright sources) convolved with the dirty beam; and the noise is correlated on
the dirty beam's scale. A detector trained only on Gaussian beams and smoothed white noise
takes sidelobes for sources and misses sources in correlated noise. This module makes those
effects, from first principles and a seed:

* :class:`Array`: antenna layouts like MeerKAT (dense 1 km core, 8 km baselines), ASKAP
  (36 dishes, 6 km), LOFAR (dense core stations plus remote stations out to ~80 km) and the
  VLA (three arms with power-law spacing, A-D configurations). They are drawn from each
  array's published shape, not copied station coordinates.
* :func:`uv_tracks`: Earth-rotation synthesis (hour-angle tracks at a declination; short
  tracks make snapshot beams) and multi-frequency synthesis over a fractional bandwidth.
* :class:`Beam`: visibilities gridded onto an image's Fourier grid with natural, uniform
  or Briggs weighting, scaled so the main lobe spans the requested number of pixels; the
  dirty beam, the fitted clean beam, and the noise an image of that weighting has.

Units: the dirty beam peaks at 1, so a point source of S Jy in the dirty or restored image
peaks at S Jy/beam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
ARRAYS = ("meerkat", "askap", "lofar", "vla-a", "vla-b", "vla-c", "vla-d")


@dataclass(frozen=True)
class Array:
    """Antenna positions (East, North, Up) in metres and the array's latitude."""

    name: str
    enu: np.ndarray
    latitude_deg: float


@cache
def array(name: str) -> Array:
    """The antenna layout of a telescope-like array (the same for every call)."""
    rng = np.random.default_rng(_seed(name))
    if name == "meerkat":
        # 48 of 64 dishes within a ~1 km diameter core, the rest out to 4 km radius
        core = _disc(rng, 48, 500.0, power=0.6)
        outer = _annulus(rng, 16, 500.0, 4000.0)
        enu, lat = np.vstack([core, outer]), -30.71
    elif name == "askap":
        # 36 dishes: 30 within a ~2.3 km core, 6 out to 3 km
        enu, lat = (
            np.vstack([_disc(rng, 30, 1150.0, power=0.8), _annulus(rng, 6, 1150.0, 3000.0)]),
            -26.70,
        )
    elif name == "lofar":
        # 24 core stations within 1.7 km (6 on the superterp), 14 remote ones to 40 km radius
        superterp = _disc(rng, 6, 170.0, power=1.0)
        core = _annulus(rng, 18, 170.0, 1700.0)
        remote = _annulus(rng, 14, 2000.0, 40000.0)
        enu, lat = np.vstack([superterp, core, remote]), 52.91
    elif name.startswith("vla-"):
        scale = {"a": 21000.0, "b": 6400.0, "c": 1950.0, "d": 600.0}[name[-1]]
        positions = []
        for azimuth in (5.0, 125.0, 245.0):
            az = math.radians(azimuth)
            r = scale * (np.arange(1, 10) / 9.0) ** 1.716
            positions.append(np.column_stack([r * math.sin(az), r * math.cos(az), np.zeros(9)]))
        enu, lat = np.vstack(positions), 34.08
    else:
        raise ValueError(f"unknown array {name!r}; known: {', '.join(ARRAYS)}")
    if enu.shape[1] == 2:
        enu = np.column_stack([enu, np.zeros(len(enu))])
    return Array(name, enu, lat)


def _seed(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % 2**32


def _disc(rng: np.random.Generator, n: int, radius: float, power: float) -> np.ndarray:
    """n points in a disc, denser towards the centre for power < 1."""
    r = radius * rng.random(n) ** power
    phi = rng.uniform(0, 2 * math.pi, n)
    return np.column_stack([r * np.sin(phi), r * np.cos(phi), np.zeros(n)])


def _annulus(rng: np.random.Generator, n: int, r0: float, r1: float) -> np.ndarray:
    """n points between radii r0 and r1, log-uniform in radius (sparser outside)."""
    r = np.exp(rng.uniform(math.log(r0), math.log(r1), n))
    phi = rng.uniform(0, 2 * math.pi, n)
    return np.column_stack([r * np.sin(phi), r * np.cos(phi), np.zeros(n)])


def uv_tracks(
    arr: Array,
    dec_deg: float,
    hour_angle_h: float,
    *,
    times: int = 48,
    bandwidth: float = 0.0,
    channels: int = 1,
) -> np.ndarray:
    """(u, v) in metres (times the frequency factor) of every baseline over hour angles
    -hour_angle_h..+hour_angle_h, at ``channels`` frequencies spanning the fractional
    ``bandwidth``; both (u, v) and (-u, -v). Shape (M, 2)."""
    i, j = np.triu_indices(len(arr.enu), 1)
    b = arr.enu[j] - arr.enu[i]  # E, N, U
    lat = math.radians(arr.latitude_deg)
    x = -math.sin(lat) * b[:, 1] + math.cos(lat) * b[:, 2]
    y = b[:, 0]
    z = math.cos(lat) * b[:, 1] + math.sin(lat) * b[:, 2]
    h = np.radians(15.0 * np.linspace(-hour_angle_h, hour_angle_h, times))[:, None]
    dec = math.radians(dec_deg)
    u = np.sin(h) * x + np.cos(h) * y
    v = -math.sin(dec) * np.cos(h) * x + math.sin(dec) * np.sin(h) * y + math.cos(dec) * z
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    if channels > 1 and bandwidth > 0:
        factors = np.linspace(1 - bandwidth / 2, 1 + bandwidth / 2, channels)
        uv = np.concatenate([uv * f for f in factors])
    return np.concatenate([uv, -uv])


@dataclass(frozen=True)
class Beam:
    """The imaging of one observation on an image grid of ``shape``: gridded weights (in
    ``numpy.fft`` order), the dirty beam's Fourier transform (peak 1 in the image), the
    clean beam (FWHM axes in pixels, pixel angle from +x towards +y) and the noise's
    Fourier amplitude."""

    shape: tuple[int, int]
    transfer: np.ndarray  #: dirty beam = ifft2(transfer).real; sum normalised to a peak of 1
    noise_amplitude: np.ndarray  #: sqrt of the noise power per Fourier cell
    clean_maj: float
    clean_min: float
    clean_theta: float

    @property
    def clean_cov(self) -> np.ndarray:
        return _cov(self.clean_maj, self.clean_min, self.clean_theta)

    def dirty_beam(self) -> np.ndarray:
        """The dirty beam, centred on pixel (ny // 2, nx // 2)."""
        return np.fft.fftshift(np.fft.ifft2(self.transfer).real)

    def convolve(self, image: np.ndarray, kernel_ft: np.ndarray | None = None) -> np.ndarray:
        """``image`` convolved with the dirty beam (or with ``kernel_ft``), periodically."""
        ft = self.transfer if kernel_ft is None else kernel_ft
        return np.fft.ifft2(np.fft.fft2(image) * ft).real

    def noise(self, rng: np.random.Generator, rms: float) -> np.ndarray:
        """Thermal noise of an image made with these weights (correlated on the dirty
        beam's scale), scaled to ``rms``."""
        white = rng.standard_normal(self.shape) + 1j * rng.standard_normal(self.shape)
        image = np.fft.ifft2(white * self.noise_amplitude).real
        return image * (rms / image.std())

    def error_pattern(self, rng: np.random.Generator, phase_deg: float, amp: float) -> np.ndarray:
        """The Fourier transform of a calibration error's beam less the true one: gains
        smooth over the uv plane with ``phase_deg`` rms phase and ``amp`` rms amplitude
        errors (a bright source convolved with it gives its artefacts)."""
        ny, nx = self.shape
        smooth = _smooth_field(rng, (ny, nx), 6.0)
        smooth2 = _smooth_field(rng, (ny, nx), 6.0)
        gain = (1 + amp * smooth2) * np.exp(1j * math.radians(phase_deg) * smooth)
        # hermitian: the sky is real
        gain = 0.5 * (gain + np.conj(np.roll(np.flip(gain), 1, axis=(0, 1))))
        return self.transfer * (gain - 1)


def _cov(maj: float, mn: float, theta: float) -> np.ndarray:
    s1, s2 = (maj / FWHM_PER_SIGMA) ** 2, (mn / FWHM_PER_SIGMA) ** 2
    c, s = math.cos(theta), math.sin(theta)
    return np.array(
        [[s1 * c * c + s2 * s * s, (s1 - s2) * c * s], [(s1 - s2) * c * s, s1 * s * s + s2 * c * c]]
    )


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A unit-rms Gaussian random field smooth on ``scale`` cells."""
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    field = np.fft.ifft2(
        np.fft.fft2(white) * np.exp(-2 * (math.pi * scale) ** 2 * (fx**2 + fy**2))
    ).real
    return field / max(field.std(), 1e-12)


def _grid(uv: np.ndarray, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Visibility counts per Fourier cell (numpy.fft order) for uv in units of ``cell``."""
    ny, nx = shape
    iu = np.rint(uv[:, 0] / cell).astype(np.int64)
    iv = np.rint(uv[:, 1] / cell).astype(np.int64)
    inside = (np.abs(iu) < nx // 2) & (np.abs(iv) < ny // 2)
    idx = (iv[inside] % ny) * nx + (iu[inside] % nx)
    return np.bincount(idx, minlength=ny * nx).reshape(ny, nx).astype(np.float64)


def weights(counts: np.ndarray, robust: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(imaging weight per cell, noise power per cell) for natural (``robust`` None or >= 2),
    uniform (<= -2) or Briggs weighting of gridded visibility counts."""
    if robust is None or robust >= 2:
        return counts, counts
    if robust <= -2:
        w = (counts > 0).astype(np.float64)
        return w, np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    f2 = (5 * 10 ** (-robust)) ** 2 / (np.sum(counts**2) / np.sum(counts))
    per_vis = 1.0 / (1.0 + counts * f2)
    return counts * per_vis, counts * per_vis**2


def make_beam(
    uv: np.ndarray,
    shape: tuple[int, int],
    beam_pix: float,
    robust: float | None,
    *,
    taper: float = 0.0,
) -> Beam:
    """The beam of ``uv`` (metres, any scale) on an image of ``shape`` whose clean beam's
    geometric-mean FWHM is ``beam_pix`` pixels (the uv scale is adjusted to get it).
    ``taper`` > 0 multiplies the weights by a Gaussian falling to 1/e at that fraction of
    the longest baseline."""
    nx = shape[1]
    radius = np.hypot(uv[:, 0], uv[:, 1])
    longest = float(np.percentile(radius, 99.5))
    # first guess: the longest baseline at ~1/beam of the grid's Nyquist extent
    cell = longest / (0.9 * nx / beam_pix)
    for _ in range(3):
        beam = _beam_at(uv, shape, cell, robust, taper, longest)
        size = math.sqrt(beam.clean_maj * beam.clean_min)
        if abs(size / beam_pix - 1) < 0.02:
            break
        cell *= beam_pix / size  # a wider beam needs coarser uv cells... inverse scaling
    return beam


def _beam_at(
    uv: np.ndarray,
    shape: tuple[int, int],
    cell: float,
    robust: float | None,
    taper: float,
    longest: float,
) -> Beam:
    counts = _grid(uv, shape, cell)
    w, power = weights(counts, robust)
    if taper > 0:
        ny, nx = shape
        fu = np.fft.fftfreq(nx)[None, :] * nx * cell
        fv = np.fft.fftfreq(ny)[:, None] * ny * cell
        t = np.exp(-(fu**2 + fv**2) / (taper * longest) ** 2)
        w = w * t
        power = power * t**2
    total = w.sum()
    transfer = w / total  # ifft2 of this peaks at 1 / (nx ny) * ... normalise below
    dirty = np.fft.ifft2(transfer).real
    transfer = transfer / dirty[0, 0]
    maj, mn, theta = fit_main_lobe(np.fft.fftshift(np.fft.ifft2(transfer).real))
    return Beam(shape, transfer, np.sqrt(power), maj, mn, theta)


def fit_main_lobe(psf: np.ndarray) -> tuple[float, float, float]:
    """FWHM axes (pixels) and pixel angle of a Gaussian fitted to the main lobe of a dirty
    beam centred at (ny // 2, nx // 2): log-quadratic least squares over the lobe's pixels
    above 35 % of the peak, as imagers fit their clean beam."""
    ny, nx = psf.shape
    cy, cx = ny // 2, nx // 2
    half = min(cy, cx, 64)
    cut = psf[cy - half : cy + half + 1, cx - half : cx + half + 1]
    mask = _connected_above(cut, 0.35)
    if mask.sum() < 9:  # a lobe of a pixel or two: fit the 3 x 3 around the peak
        mask[half - 1 : half + 2, half - 1 : half + 2] = (
            cut[half - 1 : half + 2, half - 1 : half + 2] > 0
        )
    yy, xx = np.nonzero(mask)
    dx, dy = xx - half, yy - half
    values = np.log(cut[yy, xx])
    design = np.column_stack([dx * dx, 2 * dx * dy, dy * dy])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    inv = -2 * np.array([[coef[0], coef[1]], [coef[1], coef[2]]])
    if not (np.linalg.det(inv) > 0 and inv[0, 0] > 0):  # not a peak: second moments instead
        w = cut[yy, xx]
        inv = np.linalg.inv(np.cov(np.vstack([dx, dy]), aweights=w) + 0.1 * np.eye(2))
    cov = np.linalg.inv(inv)
    a, b, c = cov[0, 0], cov[1, 1], cov[0, 1]
    half_diff = math.sqrt(((a - b) / 2) ** 2 + c * c)
    l1, l2 = (a + b) / 2 + half_diff, max((a + b) / 2 - half_diff, 1e-6)
    theta = 0.5 * math.atan2(2 * c, a - b) % math.pi
    return FWHM_PER_SIGMA * math.sqrt(l1), FWHM_PER_SIGMA * math.sqrt(l2), theta


def _connected_above(image: np.ndarray, level: float) -> np.ndarray:
    """The pixels above ``level`` connected (4-neighbours) to the centre."""
    above = image > level
    mask = np.zeros_like(above)
    c = image.shape[0] // 2, image.shape[1] // 2
    mask[c] = True
    while True:
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        grown &= above
        if (grown == mask).all():
            return mask
        mask = grown
