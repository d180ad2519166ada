"""SDC1-like radio fields with their truth, for training and judging the detector.

Why: a detector is only as good as the images it learned from, and its evaluation is only
honest on fields it never saw. Sources come from the SDC1 B1 training catalogue (real T-RECS
populations) in ``../shared/data/real/sdc1``:

* **Real layout**: the catalogue's own positions, fluxes, sizes, position angles and classes,
  cut into fields of the full SDC1 image's pixel grid (0.6" pixels, 1.5" beam).
* **Fresh draws**: rows resampled from the same catalogue (so the same joint distribution of
  flux, size and class) at new uniform positions and orientations, rendered with other beam
  samplings (2.2-7 px major axis, elongated up to 2.6:1) and noise levels, so the model
  carries to the other surveys in ``../shared/data/real``.

Profiles: ``size`` 2 (Gaussian FWHM) and 1 (largest angular size of an AGN, drawn as a
Gaussian of that FWHM) are Gaussians; ``size`` 3 are exponential discs, written as a mixture
of Gaussians fitted once (:func:`exponential_mixture`), so every component convolves with the
Gaussian beam exactly. The image is in Jy/beam: a point source of S Jy peaks at S.
Noise is white noise convolved with the beam and scaled to the requested rms (Jy/beam), so it
is correlated on the beam scale like a restored image's. Flux is intrinsic (no primary beam).

Truth per source: position, integrated flux, the peak of its own noiseless profile, and its
observed (beam-convolved) size as the Gaussian FWHM axes and pixel angle of the summed
covariance of intrinsic size and beam.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from astro_otf.imaging.gaussfit import axes_of, covariance_of

SHARED = Path(__file__).resolve().parents[2] / "shared"
CATALOGUE = SHARED / "data" / "real" / "sdc1" / "TrainingSet_B1_v2_ML.csv"

#: The SDC1 B1 image: 0.6" pixels, 1.5" beam, 1000 h noise (MAD rms of the real cut-out).
SDC1_PIXEL_ARCSEC = 0.6
SDC1_BEAM_ARCSEC = 1.5
SDC1_RMS = 3.8e-7
SDC1_FREQ_HZ = 560e6
#: The full SDC1 image: 32768 px a side, centred on RA 0, Dec -30 (SIN).
SDC1_SIZE = 32768

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: Held-out fields: 512 px squares of the real layout that training never sees (the sources
#: in ``HELDOUT_BOX`` are left out of every training draw, fresh ones included).
HELDOUT_SIZE = 512
HELDOUT_BOX = (16400, 17000, 17424, 18024)  # x0, y0, x1, y1 (full-image pixels, exclusive)
#: The window the data README reserves (no truth rows there): no field may overlap it.
RESERVED_BOX = (17973, 18185, 18276, 18474)


@dataclass(frozen=True)
class Sources:
    """Sources to render, in the field's pixels (arrays of equal length)."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray  #: integrated, Jy
    maj: np.ndarray  #: intrinsic FWHM major axis, pixels
    min: np.ndarray  #: intrinsic FWHM minor axis, pixels
    theta: np.ndarray  #: major-axis angle, radians from +x towards +y
    profile: np.ndarray  #: 2 Gaussian, 3 exponential (catalogue ``size`` codes; 1 -> 2)
    klass: np.ndarray  #: 1 SS-AGN, 2 FS-AGN, 3 SFG
    ident: np.ndarray  #: catalogue id (0 for none)

    def __len__(self) -> int:
        return len(self.x)

    def take(self, keep: np.ndarray) -> Sources:
        return Sources(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class FieldSpec:
    """How a field is sampled: its shape, the beam in pixels and the noise rms."""

    shape: tuple[int, int]
    beam_maj: float = SDC1_BEAM_ARCSEC / SDC1_PIXEL_ARCSEC  #: FWHM, pixels
    beam_min: float = SDC1_BEAM_ARCSEC / SDC1_PIXEL_ARCSEC
    beam_theta: float = 0.0  #: radians from +x towards +y
    rms: float = SDC1_RMS  #: Jy/beam
    pixel_arcsec: float = SDC1_PIXEL_ARCSEC

    @property
    def beam_area(self) -> float:
        """Beam area in pixels (the Jy/beam to Jy factor)."""
        return math.pi / (4 * math.log(2)) * self.beam_maj * self.beam_min

    @property
    def beam_cov(self) -> np.ndarray:
        return covariance(self.beam_maj, self.beam_min, self.beam_theta)


# --------------------------------------------------------------------------- catalogue


@cache
def catalogue(path: Path = CATALOGUE) -> dict[str, np.ndarray]:
    """The SDC1 training catalogue as columns (RA folded into 0..360)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    cols = {name: np.array([float(r[name]) for r in rows]) for name in rows[0]}
    cols["ra_core"] = np.mod(cols["ra_core"], 360.0)
    cols["ra_cent"] = np.mod(cols["ra_cent"], 360.0)
    return cols


def _in_box(
    x: np.ndarray, y: np.ndarray, box: tuple[int, int, int, int], pad: float = 0
) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (x >= x0 - pad) & (x < x1 + pad) & (y >= y0 - pad) & (y < y1 + pad)


def training_rows() -> np.ndarray:
    """Indices of the catalogue rows training may use: all but the held-out box's (with a
    margin of 64 px, so no held-out source's light leaks into a training field)."""
    cat = catalogue()
    return np.flatnonzero(~_in_box(cat["x"], cat["y"], HELDOUT_BOX, pad=64))


def catalogue_sources(rows: np.ndarray, x0: float, y0: float, pixel_arcsec: float) -> Sources:
    """Catalogue rows as sources in a field whose [0, 0] is full-image pixel (x0, y0).

    Position angles are degrees East of North; in the SDC1 image East is -x and North +y,
    so the pixel angle from +x towards +y is PA + 90 degrees.
    """
    cat = catalogue()
    profile = np.where(cat["size"][rows] == 3, 3, 2)
    return Sources(
        x=cat["x"][rows] - x0,
        y=cat["y"][rows] - y0,
        flux=cat["flux"][rows],
        maj=cat["b_maj"][rows] / pixel_arcsec,
        min=cat["b_min"][rows] / pixel_arcsec,
        theta=np.radians(cat["pa"][rows] + 90.0),
        profile=profile,
        klass=cat["class"][rows].astype(int),
        ident=cat["id"][rows].astype(np.int64),
    )


def real_layout(
    x0: int, y0: int, shape: tuple[int, int], rows: np.ndarray | None = None, margin: int = 48
) -> Sources:
    """The catalogue's sources on (and ``margin`` px around) the field at (x0, y0)."""
    cat = catalogue()
    rows = np.arange(len(cat["x"])) if rows is None else rows
    box = (x0, y0, x0 + shape[1], y0 + shape[0])
    near = rows[_in_box(cat["x"][rows], cat["y"][rows], box, pad=margin)]
    return catalogue_sources(near, x0, y0, SDC1_PIXEL_ARCSEC)


def fresh_draw(
    spec: FieldSpec, rng: np.random.Generator, density: float = 1.0, margin: int = 48
) -> Sources:
    """New sources with the catalogue's joint distribution of flux, size and class, at
    uniform positions and orientations; ``density`` scales the catalogue's source density.
    Sizes keep their ratio to the beam: the pixel scale follows the field's beam."""
    rows = training_rows()
    ny, nx = spec.shape
    area_arcmin2 = (nx + 2 * margin) * (ny + 2 * margin) * (spec.pixel_arcsec / 60.0) ** 2
    n = rng.poisson(density * _density_per_arcmin2() * area_arcmin2)
    pick = rng.choice(rows, size=n)
    src = catalogue_sources(pick, 0.0, 0.0, spec.pixel_arcsec)
    return Sources(
        x=rng.uniform(-margin, nx + margin, n),
        y=rng.uniform(-margin, ny + margin, n),
        flux=src.flux,
        maj=src.maj,
        min=src.min,
        theta=rng.uniform(0, math.pi, n),
        profile=src.profile,
        klass=src.klass,
        ident=src.ident,
    )


@cache
def _density_per_arcmin2() -> float:
    cat = catalogue()
    w = (cat["x"].max() - cat["x"].min()) * SDC1_PIXEL_ARCSEC / 60
    h = (cat["y"].max() - cat["y"].min()) * SDC1_PIXEL_ARCSEC / 60
    return len(cat["x"]) / (w * h)


# --------------------------------------------------------------------------- rendering


#: Gaussian covariances (pixels^2) from FWHM axes and pixel angle, and back: the service's
#: own functions (``astro_otf.imaging.gaussfit``), so truth and fits share one convention.
covariance = covariance_of
axes = axes_of


@cache
def exponential_mixture(k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Flux fractions and variances (in units of the scale length squared) of ``k``
    Gaussians whose sum approximates the 2-D profile exp(-r/h), fitted by non-negative
    least squares over 0 < r < 8h with 2-D (r dr) weights."""
    from scipy.optimize import nnls

    r = np.linspace(0.005, 8.0, 1600)
    sig = np.geomspace(0.05, 3.5, k)
    basis = np.exp(-0.5 * (r[:, None] / sig[None, :]) ** 2)
    w = np.sqrt(r)
    amp, _ = nnls(basis * w[:, None], np.exp(-r) * w)
    flux = amp * 2 * math.pi * sig**2  # each component's 2-D integral
    keep = flux > 0
    return flux[keep] / flux[keep].sum(), sig[keep] ** 2


def components(src: Sources) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(source index, flux fraction, intrinsic covariance) of every Gaussian component."""
    gauss = src.profile != 3
    idx = [np.flatnonzero(gauss)]
    frac = [np.ones(int(gauss.sum()))]
    cov = [covariance(src.maj[gauss], src.min[gauss], src.theta[gauss])]
    expo = np.flatnonzero(~gauss)
    if expo.size:
        fractions, variances = exponential_mixture()
        # exp(-r/h) falls to one half at r = h ln 2: FWHM = 2 h ln 2
        h_maj = src.maj[expo] / (2 * math.log(2))
        h_min = src.min[expo] / (2 * math.log(2))
        for f, v in zip(fractions, variances, strict=True):
            idx.append(expo)
            frac.append(np.full(expo.size, f))
            cov.append(
                covariance(
                    h_maj * math.sqrt(v) * FWHM_PER_SIGMA,
                    h_min * math.sqrt(v) * FWHM_PER_SIGMA,
                    src.theta[expo],
                )
            )
    return np.concatenate(idx), np.concatenate(frac), np.concatenate(cov)


def render(
    src: Sources, spec: FieldSpec, rng: np.random.Generator | None, max_half: int = 160
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The field (Jy/beam, float32) and the truth of the sources whose centre is on it.

    ``rng`` None renders without noise."""
    ny, nx = spec.shape
    image = np.zeros(spec.shape, dtype=np.float64)
    idx, frac, cov_src = components(src)
    cov = cov_src + spec.beam_cov
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    inv = np.stack([cov[:, 1, 1], -cov[:, 0, 1], cov[:, 0, 0]], axis=1) / det[:, None]
    amp = src.flux[idx] * frac * spec.beam_area / (2 * math.pi * np.sqrt(det))
    half = np.minimum(np.ceil(4.5 * np.sqrt(np.maximum(cov[:, 0, 0], cov[:, 1, 1]))), max_half)
    for j in range(len(idx)):
        i = idx[j]
        cx, cy, h = src.x[i], src.y[i], int(half[j])
        x0, x1 = max(0, int(cx) - h), min(nx, int(cx) + h + 2)
        y0, y1 = max(0, int(cy) - h), min(ny, int(cy) + h + 2)
        if x0 >= x1 or y0 >= y1:
            continue
        dx = np.arange(x0, x1) - cx
        dy = (np.arange(y0, y1) - cy)[:, None]
        a, b, c = inv[j]
        image[y0:y1, x0:x1] += amp[j] * np.exp(-0.5 * (a * dx * dx + 2 * b * dx * dy + c * dy * dy))
    peak = np.bincount(idx, weights=amp, minlength=len(src))
    # observed size: Gaussian FWHM of the intrinsic size (as a Gaussian) plus the beam
    maj, mn, theta = axes(covariance(src.maj, src.min, src.theta) + spec.beam_cov)
    if rng is not None:
        image += noise(spec, rng)
    on = (src.x >= -0.5) & (src.x < nx - 0.5) & (src.y >= -0.5) & (src.y < ny - 0.5)
    truth = {
        "x": src.x[on],
        "y": src.y[on],
        "flux": src.flux[on],
        "peak": peak[on],
        "maj": maj[on],
        "min": mn[on],
        "theta": theta[on],
        "klass": src.klass[on],
        "ident": src.ident[on],
        "snr": peak[on] / spec.rms,
    }
    return image.astype(np.float32), truth


def noise(spec: FieldSpec, rng: np.random.Generator) -> np.ndarray:
    """White noise convolved with the beam, scaled to ``spec.rms`` (Jy/beam)."""
    ny, nx = spec.shape
    pad = int(4 * spec.beam_maj)
    white = rng.standard_normal((ny + 2 * pad, nx + 2 * pad))
    fy = np.fft.fftfreq(white.shape[0])[:, None]
    fx = np.fft.rfftfreq(white.shape[1])[None, :]
    c = spec.beam_cov
    # the Fourier transform of a Gaussian of covariance C: exp(-2 pi^2 f^T C f)
    kernel = np.exp(
        -2 * math.pi**2 * (c[0, 0] * fx * fx + 2 * c[0, 1] * fx * fy + c[1, 1] * fy * fy)
    )
    smooth = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=white.shape)[pad:-pad, pad:-pad]
    return smooth * (spec.rms / smooth.std())


# --------------------------------------------------------------------------- fields


def random_spec(rng: np.random.Generator, shape: tuple[int, int]) -> FieldSpec:
    """A field of another survey: beam major axis 2.2-7 px (log-uniform), half the fields
    elongated up to 2.6:1 at a random angle, noise 0.5-4x the SDC1 rms."""
    maj = math.exp(rng.uniform(math.log(2.2), math.log(7.0)))
    ratio = 1.0 if rng.random() < 0.5 else rng.uniform(1.0, 2.6)
    return FieldSpec(
        shape=shape,
        beam_maj=maj,
        beam_min=maj / ratio,
        beam_theta=rng.uniform(0, math.pi),
        rms=SDC1_RMS * math.exp(rng.uniform(math.log(0.5), math.log(4.0))),
        pixel_arcsec=SDC1_BEAM_ARCSEC / maj,
    )


def sdc1_wcs(x0: int, y0: int, shape: tuple[int, int]) -> WCS:
    """The celestial WCS of the SDC1 image (SIN, centred on RA 0, Dec -30), shifted so that
    the field's [0, 0] is full-image pixel (x0, y0)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [0.0, -30.0]
    w.wcs.cdelt = [-SDC1_PIXEL_ARCSEC / 3600, SDC1_PIXEL_ARCSEC / 3600]
    w.wcs.crpix = [SDC1_SIZE / 2 + 1 - x0, SDC1_SIZE / 2 + 1 - y0]
    w.wcs.radesys = "ICRS"
    return w


def heldout_origins() -> list[tuple[int, int]]:
    """Full-image (x0, y0) of the held-out fields: the 512 px squares of HELDOUT_BOX."""
    x0, y0, x1, y1 = HELDOUT_BOX
    return [(x, y) for y in range(y0, y1, HELDOUT_SIZE) for x in range(x0, x1, HELDOUT_SIZE)]


def write_heldout(out_dir: Path, seed: int = 20261122) -> list[tuple[Path, Path]]:
    """Render the held-out SDC1-like 1000 h fields (the 512 px squares of HELDOUT_BOX) as
    FITS images with their truth CSVs; the same pixels for the same seed."""
    return [
        write_field(out_dir / f"heldout_{n}", x0, y0, HELDOUT_SIZE, seed + n)
        for n, (x0, y0) in enumerate(heldout_origins())
    ]


def write_field(stem: Path, x0: int, y0: int, size: int, seed: int) -> tuple[Path, Path]:
    """Render the real layout of the SDC1 square at full-image pixel (x0, y0) with SDC1
    sampling and 1000 h noise: ``<stem>.fits`` (with WCS, beam and units) and
    ``<stem>_truth.csv`` (id, ra, dec, x, y, int_flux Jy, peak_flux Jy/beam, observed FWHM
    maj/min arcsec, pa deg East of North, class, peak S/N)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size)
    spec = FieldSpec(shape=shape)
    image, truth = render(real_layout(x0, y0, shape), spec, np.random.default_rng(seed))
    wcs = sdc1_wcs(x0, y0, shape)
    header = wcs.to_header()
    header["BMAJ"] = SDC1_BEAM_ARCSEC / 3600
    header["BMIN"] = SDC1_BEAM_ARCSEC / 3600
    header["BPA"] = 0.0
    header["BUNIT"] = "JY/BEAM"
    header["RESTFRQ"] = SDC1_FREQ_HZ
    header["OBJECT"] = f"SDC1-like field at ({x0}, {y0})"
    header["ORIGIN"] = "astro-otf training/simulate.py"
    header["NOISE"] = (SDC1_RMS, "rms of the added noise, Jy/beam")
    image_path = stem.with_suffix(".fits")
    fits.PrimaryHDU(image, header).writeto(image_path, overwrite=True)
    ra, dec = wcs.pixel_to_world_values(truth["x"], truth["y"])
    truth_path = stem.parent / f"{stem.name}_truth.csv"
    scale = SDC1_PIXEL_ARCSEC
    with truth_path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "id",
                "ra",
                "dec",
                "x",
                "y",
                "int_flux",
                "peak_flux",
                "maj",
                "min",
                "pa",
                "class",
                "snr",
            ]
        )
        for i in range(len(truth["x"])):
            out.writerow(
                [
                    int(truth["ident"][i]),
                    f"{ra[i]:.7f}",
                    f"{dec[i]:.7f}",
                    f"{truth['x'][i]:.3f}",
                    f"{truth['y'][i]:.3f}",
                    f"{truth['flux'][i]:.6g}",
                    f"{truth['peak'][i]:.6g}",
                    f"{truth['maj'][i] * scale:.4f}",
                    f"{truth['min'][i] * scale:.4f}",
                    f"{np.degrees(truth['theta'][i] - math.pi / 2) % 180:.2f}",
                    int(truth["klass"][i]),
                    f"{truth['snr'][i]:.2f}",
                ]
            )
    return image_path, truth_path
