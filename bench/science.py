"""Science evaluation of the trained detector (``radio-detector``) against truth and peers.

Why: the model card has to say how good the detector is and what it costs, measured the
same way for it and for the finders people use today (PyBDSF, Aegean, sep, photutils), on
images where the answer is known (simulated held-out SDC1-like fields, telescope-like
restored images, Aegean's synthetic test image) and on real images where it is not (there
PyBDSF's catalogue is the reference, labelled "vs PyBDSF", never "truth").

Reference and matching: on simulated images a finder is scored against the true units with
peak S/N >= TRUTH_SNR (3; the S/N of a unit is its true peak over the local rms a finder
measures): fainter units are not counted as missed, and a detection of one counts against
purity. Matching is ``crossmatch.py``'s (one-to-one, radius 1 x BMAJ, both catalogues cut to
the image footprint). Measures on truth, pooled over a set of images (counts summed, errors
listed): completeness, purity, F1; completeness above 5 sigma (matched reference units with
S/N >= 5 over all of them); flux accuracy of unresolved sources (int flux found / true - 1
over matched units with ``resolved == 0`` and S/N >= 10: median and median of its absolute
value); duplicates (every detection goes to its nearest true unit of all truth rows, any
S/N, when within 1 x BMAJ; a true point source, unresolved with S/N >= 5, given two or
more detections is duplicated: their count and the share of point sources without one).

- Held-out SDC1-like fields (``training.simulate``, never seen in training): the four 512²
  fields pooled, with the measures above (their truth has no ``resolved`` flag: a source is
  unresolved when its true observed FWHM is under 1.2 x BMAJ), the median offset, flux
  accuracy of all matched sources with S/N >= 10 (int and peak flux) and the position-angle
  error of the elongated ones. Speed on the 1024² field of the same sky.
- Telescope-like configurations (``training.synthesis.CONFIGS``: MeerKAT-, ASKAP-, LOFAR-,
  VLA-like restored images with CLEAN residuals, sidelobes, calibration errors and
  primary-beam correction): each configuration's held-out images (rendered into
  ``--out``/configs, re-rendered only when the configuration or the simulator's code
  changed) pooled, with the measures above and the speed; a table per configuration and
  one of F1 per configuration and finder.
- Real images (every FITS in ``../shared/data/real`` but the catalogues): counts per finder,
  F1 vs truth (synthetic_test), F1 vs PyBDSF (the others), one detection on the AMI image.
- Speed: finder wall time per Mpix. Ours: ``app.run`` in this process (the code the service
  runs) after one warm-up run on the same image, the median of ``--repeats`` runs, with
  ``--threads`` ONNX Runtime threads. Peers: ``wall_s`` from ``run_peers.py`` (measured in
  their process, on 1 core). Ratio PyBDSF / ours on every image of >= 1000² pixels (real,
  the SDC1 1024² field, the configurations' images); per configuration, wall time summed
  over its images per Mpix summed.

Peers run once per image, all four in one ``run_peers.py`` call, and are cached in ``--out``
(keyed by the image's sha256) unless ``--rerun-peers``; PyBDSF takes minutes on the big
images. A peer that fails or times out is reported as failed; with ``--skip-peers`` (and no
cached result) as skipped, and the targets that need it read n/a.

Targets, for the main precision (fp32 when asked for): on every configuration and on the
SDC1 fields, F1 >= the best peer's, completeness above 5 sigma >= sep's, and |median int flux
/ true - 1| <= 5 % on unresolved sources above 10 sigma; true point sources without a
duplicate >= 99.5 %, pooled over the configurations and SDC1; >= 20x PyBDSF's speed per Mpix
on every image of >= 1000² pixels; exactly one detection on the AMI image (PyBDSF's source).
A target that misses names the configurations (or images) it missed on.

Prints the tables and the targets, writes JSON (pooled and per image) and, with ``--card``,
replaces the text between ``<!-- science:begin -->`` and ``<!-- science:end -->`` in the
model card with the tables.

Usage: PYTHONPATH=. python bench/science.py [--out DIR] [--json OUT] [--models-dir DIR]
           [--model-version V]
           [--precisions fp32,fp16,int8] [--configs meerkat,askap,...] [--skip-configs]
           [--skip-real] [--peers-python PY] [--skip-peers] [--rerun-peers]
           [--peer-timeout S] [--card MODEL_CARD.md] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import logging
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits

from bench import configs as cfgs
from training.card import check_section, cpu_model, replace_section

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
CATALOGUES = {"aegean/1904_comp.fits"}  # FITS files in REAL that are tables, not images
TRUTH_IMAGE = "aegean/synthetic_test.fits"
TRUTH_CSV = "aegean/synthetic_test_truth.csv"
AMI_IMAGE = "pyse/SWIFT_554620-130504.fits"
MODEL_ID = "radio-detector"
PEERS = ("bdsf", "aegean", "sep", "photutils")
PEER_NAMES = {"bdsf": "PyBDSF", "aegean": "Aegean", "sep": "sep", "photutils": "photutils"}
PEER_PACKAGES = ("bdsf", "AegeanTools", "sep", "photutils", "numpy", "astropy")
#: Seed of the 1024² held-out field (write_heldout uses 20261122 + 0..3 for the four 512²).
BIG_SEED = 20261126
BIG_SIZE = 1024
BIG_PIXELS = 1000 * 1000  # images at least this big count for the speed target
SIGMA = "\N{GREEK SMALL LETTER SIGMA}"
#: The reference a finder is scored against: the true units with peak S/N (over the local
#: rms a finder measures) at least this; fainter ones are neither missed nor found.
TRUTH_SNR = 3.0
#: Completeness "above 5 sigma": over the reference units with true S/N at least this.
C5_SNR = 5.0
#: Flux accuracy (found / true - 1) over matched true units at least this bright.
FLUX_SNR_MIN = 10.0
#: A true point source for the duplicate measure: unresolved, true S/N at least this.
POINT_SNR = 5.0
#: The SDC1 truth has no resolved flag: there a source is resolved when its true observed
#: (beam-convolved) FWHM major axis is at least this many beam FWHMs (BMAJ).
SDC1_RESOLVED = 1.2
#: Position angles are compared for true sources this bright and this elongated (observed
#: maj/min), where an angle is measurable.
PA_SNR_MIN = 20.0
PA_ELONGATION = 1.5
#: flux_bias: |median int flux / true - 1| of unresolved sources above FLUX_SNR_MIN;
#: no_duplicate: share of true point sources without a duplicate, pooled.
TARGETS = {"flux_bias": 0.05, "no_duplicate": 0.995, "speedup": 20.0, "ami_n": 1}
LOG = logging.getLogger("bench.science")


# --------------------------------------------------------------------------- data


@dataclass
class Cat:
    """Positions (ICRS deg), fluxes (Jy/beam, Jy), observed FWHM axes (arcsec) and position
    angle (deg) of a catalogue; snr (the true peak S/N) and resolved (1/0) are known for
    truth catalogues, NaN otherwise."""

    ra: np.ndarray
    dec: np.ndarray
    peak: np.ndarray
    int_flux: np.ndarray
    snr: np.ndarray
    maj: np.ndarray
    min: np.ndarray
    pa: np.ndarray
    resolved: np.ndarray

    def __len__(self) -> int:
        return len(self.ra)

    def take(self, keep: np.ndarray) -> Cat:
        return Cat(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))

    @classmethod
    def from_columns(cls, cols: dict[str, Any]) -> Cat:
        def col(name: str) -> np.ndarray:
            if name not in cols:
                return np.full(len(cols["ra"]), np.nan)
            return np.ma.asarray(cols[name], dtype=float).filled(np.nan)

        return cls(
            np.mod(col("ra"), 360.0),
            col("dec"),
            col("peak_flux"),
            col("int_flux"),
            col("snr"),
            col("maj"),
            col("min"),
            col("pa"),
            col("resolved"),
        )


def read_csv(path: Path) -> Cat:
    """A CSV catalogue with ra, dec (deg) and optional peak_flux, int_flux, snr, maj, min,
    pa, resolved columns (a header-only file is an empty catalogue)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = ("ra", "dec", "peak_flux", "int_flux", "snr", "maj", "min", "pa", "resolved")
    cols: dict[str, Any] = {"ra": [float(r["ra"]) for r in rows]}
    for name in names[1:]:
        if rows and name in rows[0]:
            cols[name] = [float(r[name]) if r[name] not in ("", "nan") else np.nan for r in rows]
    return Cat.from_columns(cols)


@dataclass
class Run:
    """One finder on one image: status ok / failed / timeout / skipped."""

    status: str
    cat: Cat | None = None
    wall_s: float | None = None
    error: str = ""
    runs_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.cat is not None


@dataclass(frozen=True)
class Image:
    path: Path
    name: str  # path relative to REAL, or the held-out stem
    shape: tuple[int, int]
    bmaj_arcsec: float

    @property
    def mpix(self) -> float:
        return self.shape[0] * self.shape[1] / 1e6

    @property
    def stem(self) -> str:
        return self.path.name.removesuffix(".fits")


def image_info(path: Path, name: str) -> Image:
    with fits.open(path) as hdul:
        hdu = next(h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2)
        header = hdu.header
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        bmaj = float(header["BMAJ"]) * 3600.0
    return Image(path, name, shape, bmaj)


def real_images() -> list[Image]:
    """Every FITS image under REAL, without the catalogues stored as FITS tables."""
    out = []
    for path in sorted(REAL.rglob("*.fits")):
        name = path.relative_to(REAL).as_posix()
        if name in CATALOGUES or name.endswith(("gaul.fits", "srl.fits")):
            continue
        out.append(image_info(path, name))
    return out


def load_crossmatch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crossmatch", REAL / "crossmatch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- finders


class Ours:
    """The detector as a worker runs it: the registry's app, one AppRequest per run."""

    def __init__(
        self, models_dir: Path | None, threads: int, repeats: int, version: str | None = None
    ) -> None:
        from astro_otf.models.manifest import load_manifests
        from astro_otf.models.onnx_detector import OnnxDetector, RuntimeConfig
        from astro_otf.models.registry import RegistryConfig, build_registry

        runtime = RuntimeConfig(intra_op_threads=threads, workers=1)
        found = (
            [m for m in load_manifests(models_dir) if m.model_id == MODEL_ID] if models_dir else []
        )
        if found:  # the extra folder's version wins (the zoo may ship the same id)
            self.app: Any = OnnxDetector(found[-1], runtime)
        else:
            self.app = build_registry(RegistryConfig(runtime=runtime)).get(MODEL_ID, version)
        self.threads = runtime.threads()
        self.repeats = repeats

    def describe(self, precisions: list[str]) -> dict[str, Any]:
        model = self.app.model
        return {
            "id": self.app.model_id,
            "version": self.app.version,
            "manifest": str(model.path),
            "sha256": {p: model.sha256(p.split("@")[0]) for p in precisions},
            "threshold": model.manifest.postprocess.score_threshold,
            "onnxruntime_threads": self.threads,
        }

    def run(self, image: Image, precision: str) -> Run:
        """Ours at ``precision``; "fp32@4.5" is fp32 with MIN_SNR 4.5 (another operating
        point of the same model)."""
        from astro_otf.models.base import AppRequest

        values: dict[str, Any] = {"precision": precision}
        if "@" in precision:
            base, min_snr = precision.split("@", 1)
            values = {"precision": base, "min_snr": float(min_snr)}
        try:
            with tempfile.TemporaryDirectory(prefix="science-") as tmp:
                request = AppRequest(
                    job_id="bench",
                    image_path=image.path,
                    values=values,
                    roi=None,
                    staging_dir=Path(tmp),
                    log=LOG,
                )
                out = self.app.run(request)  # warm-up: loads the session; its catalogue is used
                times = []
                for _ in range(self.repeats):
                    t0 = time.perf_counter()
                    self.app.run(request)
                    times.append(time.perf_counter() - t0)
        except Exception as exc:  # a failure is a result, not a crash
            return Run("failed", error=f"{type(exc).__name__}: {exc}")
        assert out.catalogue is not None
        table = out.catalogue.table
        cat = Cat.from_columns(
            {c: table[c] for c in ("ra", "dec", "peak_flux", "int_flux", "maj", "min", "pa")}
        )
        return Run("ok", cat, statistics.median(times), runs_s=times)


def peer_versions(python: str) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        f"for p in {PEER_PACKAGES!r}:\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[p] = 'missing'\n"
        "print(json.dumps(out))\n"
    )
    try:
        done = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=120, check=True
        )
        return dict(json.loads(done.stdout))
    except (OSError, subprocess.SubprocessError, ValueError):
        return {}


def _cached_peers(image: Image, outdir: Path, digest: str) -> dict[str, Run] | None:
    """The peers' results for ``image`` from an earlier run, or None when there are none
    (or they were made from other pixels, or a catalogue is missing)."""
    summary = outdir / f"{image.stem}.summary.json"
    key = outdir / f"{image.stem}.sha256"
    if not (summary.exists() and key.exists() and key.read_text().strip() == digest):
        return None
    try:
        entries = {e["finder"]: e for e in json.loads(summary.read_text())}
    except (ValueError, KeyError, TypeError):
        return None
    runs: dict[str, Run] = {}
    for finder in PEERS:
        entry = entries.get(finder)
        if entry is None:
            return None
        if entry.get("status") != "ok":
            status = "timeout" if entry.get("status") == "timeout" else "failed"
            runs[finder] = Run(status, error=str(entry.get("error", ""))[-500:])
            continue
        path = outdir / f"{image.stem}.{finder}.csv"
        if not path.exists():
            return None
        runs[finder] = Run("ok", read_csv(path), float(entry["wall_s"]))
    return runs


def run_peers(
    image: Image, outdir: Path, python: str, timeout_s: float, rerun: bool, skip: bool
) -> tuple[dict[str, Run], str]:
    """All four peers on ``image`` in one run_peers.py call (or from the cache), and where
    the results came from: "cached", "ran" or "skipped"."""
    outdir.mkdir(parents=True, exist_ok=True)
    digest = sha256(image.path)
    if not rerun:
        cached = _cached_peers(image, outdir, digest)
        if cached is not None:
            return cached, "cached"
    if skip:
        return {f: Run("skipped") for f in PEERS}, "skipped"
    (outdir / f"{image.stem}.summary.json").unlink(missing_ok=True)
    cmd = [
        python,
        str(REAL / "run_peers.py"),
        str(image.path),
        "--outdir",
        str(outdir),
        "--finders",
        ",".join(PEERS),
        "--formats",
        "csv",
        "--timeout",
        str(timeout_s),
    ]
    error = ""
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=len(PEERS) * (timeout_s + 60)
        )
        if done.returncode:
            error = f"run_peers.py exit {done.returncode}: {(done.stderr or done.stdout)[-500:]}"
    except subprocess.TimeoutExpired:
        error = "run_peers.py did not finish in time"
    except OSError as exc:
        error = f"cannot run {python}: {exc}"
    if not error:
        (outdir / f"{image.stem}.sha256").write_text(digest + "\n")
        runs = _cached_peers(image, outdir, digest)
        if runs is not None:
            return runs, "ran"
        error = "run_peers.py wrote no complete summary"
    return {f: Run("failed", error=error) for f in PEERS}, "ran"


# --------------------------------------------------------------------------- scoring


@dataclass
class Pool:
    """Matches of one finder against a reference, summed over one or more images, and the
    measures that need truth (S/N >= 5 completeness, unresolved flux, duplicates) when the
    reference is truth."""

    n_cat: int = 0
    n_ref: int = 0
    n_matched: int = 0
    seps: list[float] = field(default_factory=list)
    int_err: list[float] = field(default_factory=list)
    peak_err: list[float] = field(default_factory=list)
    #: position angle differences (deg, -90..90) of elongated bright true sources
    pa_err: list[float] = field(default_factory=list)
    #: reference units with true S/N >= C5_SNR, and how many of them were matched
    n_ref5: int = 0
    n_matched5: int = 0
    #: int_flux found / true - 1 of matched unresolved units with true S/N >= FLUX_SNR_MIN
    unres_err: list[float] = field(default_factory=list)
    #: true point sources (unresolved, S/N >= POINT_SNR), those given two or more
    #: detections, and the detections beyond the first on those
    points: int = 0
    dup_points: int = 0
    dup_extra: int = 0
    #: the catalogue matched one-to-one to the units with S/N >= C5_SNR alone (a catalogue's
    #: own convention: fainter true sources found count as false)
    n_matched_vs5: int = 0

    def summary(self) -> dict[str, Any]:
        comp = self.n_matched / self.n_ref if self.n_ref else math.nan
        pur = self.n_matched / self.n_cat if self.n_cat else math.nan
        f1 = 2 * comp * pur / (comp + pur) if self.n_matched else 0.0
        out: dict[str, Any] = {
            "n_cat": self.n_cat,
            "n_ref": self.n_ref,
            "n_matched": self.n_matched,
            "completeness": comp,
            "purity": pur,
            "f1": f1,
            "median_offset_arcsec": _median(self.seps),
        }
        for name, errs in (("int_flux", self.int_err), ("peak_flux", self.peak_err)):
            out[f"{name}_n"] = len(errs)
            out[f"{name}_err_median"] = _median(errs)
            out[f"{name}_err_median_abs"] = _median([abs(e) for e in errs])
        out["pa_n"] = len(self.pa_err)
        out["pa_err_median_abs_deg"] = _median([abs(e) for e in self.pa_err])
        return out | self.truth_summary()

    def truth_summary(self) -> dict[str, Any]:
        comp5 = self.n_matched_vs5 / self.n_ref5 if self.n_ref5 else math.nan
        pur5 = self.n_matched_vs5 / self.n_cat if self.n_cat else math.nan
        return {
            "f1_vs_5sigma": 2 * comp5 * pur5 / (comp5 + pur5) if self.n_matched_vs5 else 0.0,
            "purity_vs_5sigma": pur5,
            "n_ref_5sigma": self.n_ref5,
            "n_matched_5sigma": self.n_matched5,
            "completeness_5sigma": self.n_matched5 / self.n_ref5 if self.n_ref5 else math.nan,
            "unresolved_flux_n": len(self.unres_err),
            "unresolved_flux_err_median": _median(self.unres_err),
            "unresolved_flux_err_median_abs": _median([abs(e) for e in self.unres_err]),
            "points": self.points,
            "duplicated_points": self.dup_points,
            "duplicate_detections": self.dup_extra,
            "no_duplicate_share": 1 - self.dup_points / self.points if self.points else math.nan,
        }


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


class Scorer:
    """crossmatch.py's score, both catalogues cut to the image footprint, radius 1 x BMAJ."""

    def __init__(self) -> None:
        self.cm = load_crossmatch()

    def footprint(self, cat: Cat, image: Image) -> Cat:
        keep, _ = self.cm.footprint_mask(cat.ra, cat.dec, str(image.path), 0)
        return cat.take(np.asarray(keep, bool))

    def add(
        self, pool: Pool, cat: Cat, ref: Cat, image: Image, truth: Cat | None = None
    ) -> dict[str, Any]:
        """Match ``cat`` to ``ref`` on ``image``, add to ``pool``; this image's score. With
        ``truth`` (all true units; ``ref`` is then the truth cut), the truth-only measures
        too."""
        c, r = self.footprint(cat, image), self.footprint(ref, image)
        res, (ic, ir, sep) = self.cm.score(c.ra, c.dec, r.ra, r.dec, image.bmaj_arcsec)
        pool.n_cat += res["n_cat"]
        pool.n_ref += res["n_ref"]
        pool.n_matched += res["n_matched"]
        pool.seps.extend(float(s) for s in sep)
        bright = r.snr[ir] >= FLUX_SNR_MIN
        for found, true, errs in (
            (c.int_flux, r.int_flux, pool.int_err),
            (c.peak, r.peak, pool.peak_err),
        ):
            errs.extend(_flux_err(found[ic][bright], true[ir][bright]))
        elongated = (r.snr[ir] >= PA_SNR_MIN) & (r.maj[ir] >= PA_ELONGATION * r.min[ir])
        d_pa = np.mod(c.pa[ic][elongated] - r.pa[ir][elongated] + 90.0, 180.0) - 90.0
        pool.pa_err.extend(d_pa[np.isfinite(d_pa)].tolist())
        out = {k: v for k, v in res.items() if k != "radius_arcsec"}
        if truth is not None:
            out |= truth_measures(pool, c, r, (ic, ir), truth, image.bmaj_arcsec)
        return out


def _flux_err(found: np.ndarray, true: np.ndarray) -> list[float]:
    """found / true - 1 where both are known (and the true flux positive)."""
    ok = np.isfinite(found) & np.isfinite(true) & (true > 0)
    return (found[ok] / true[ok] - 1.0).tolist()


def truth_measures(
    pool: Pool,
    cat: Cat,
    ref: Cat,
    matches: tuple[np.ndarray, np.ndarray],
    truth: Cat,
    radius_arcsec: float,
) -> dict[str, Any]:
    """Add one image's truth-only measures to ``pool``: completeness above C5_SNR, the
    int flux error of matched unresolved units above FLUX_SNR_MIN, duplicates (``cat`` and
    ``ref`` footprint-cut, ``matches`` their one-to-one pairs); this image's figures."""
    ic, ir = matches
    strong = ref.take(ref.snr >= C5_SNR)
    vs5, _ = load_crossmatch().score(cat.ra, cat.dec, strong.ra, strong.dec, radius_arcsec)
    sub = Pool(
        n_cat=len(cat),
        n_ref5=len(strong),
        n_matched5=int((ref.snr[ir] >= C5_SNR).sum()),
        n_matched_vs5=int(vs5["n_matched"]),
    )
    unresolved = (ref.resolved[ir] == 0) & (ref.snr[ir] >= FLUX_SNR_MIN)
    sub.unres_err = _flux_err(cat.int_flux[ic][unresolved], ref.int_flux[ir][unresolved])
    sub.points, sub.dup_points, sub.dup_extra = duplicates(cat, truth, radius_arcsec)
    pool.n_ref5 += sub.n_ref5
    pool.n_matched5 += sub.n_matched5
    pool.n_matched_vs5 += sub.n_matched_vs5
    pool.unres_err.extend(sub.unres_err)
    pool.points += sub.points
    pool.dup_points += sub.dup_points
    pool.dup_extra += sub.dup_extra
    return sub.truth_summary()


def duplicates(cat: Cat, truth: Cat, radius_arcsec: float) -> tuple[int, int, int]:
    """Every detection goes to its nearest true unit (of all truth rows, any S/N) when it
    is within ``radius_arcsec``; a true point source (unresolved, S/N >= POINT_SNR) given
    two or more is duplicated. Returns (point sources, duplicated ones, detections beyond
    the first on those)."""
    points = (truth.resolved == 0) & (truth.snr >= POINT_SNR)
    counts = np.zeros(len(truth), dtype=int)
    if len(cat) and len(truth):
        found = SkyCoord(cat.ra, cat.dec, unit="deg")
        true = SkyCoord(truth.ra, truth.dec, unit="deg")
        idx, d2d, _ = found.match_to_catalog_sky(true)
        near = d2d.arcsec <= radius_arcsec
        counts = np.bincount(np.asarray(idx)[near], minlength=len(truth))
    dup = points & (counts >= 2)
    return int(points.sum()), int(dup.sum()), int((counts[dup] - 1).sum())


def reference(truth: Cat) -> Cat:
    """The truth units a finder is scored against: true peak S/N >= TRUTH_SNR."""
    return truth.take(truth.snr >= TRUTH_SNR)


#: The truth counts of an image (:func:`truth_counts`).
TRUTH_COUNTS = ("n_truth", "n_ref", "n_ref_5sigma", "n_unresolved_10sigma", "n_points")


def truth_counts(truth: Cat) -> dict[str, int]:
    """How many true units an image holds, in all and in each measure's selection."""
    unresolved = truth.resolved == 0
    counts = (
        len(truth),
        (truth.snr >= TRUTH_SNR).sum(),
        (truth.snr >= C5_SNR).sum(),
        (unresolved & (truth.snr >= FLUX_SNR_MIN)).sum(),
        (unresolved & (truth.snr >= POINT_SNR)).sum(),
    )
    return {name: int(n) for name, n in zip(TRUTH_COUNTS, counts, strict=True)}


def sdc1_truth(path: Path, image: Image) -> Cat:
    """An SDC1 held-out truth CSV (``training.simulate.write_field``). It has no
    ``resolved`` column, so here a source counts as unresolved (a point source for the
    duplicate measure, and in the unresolved-flux measure) when its true observed
    (beam-convolved) FWHM major axis is under SDC1_RESOLVED x the beam's FWHM (BMAJ), and
    as resolved otherwise."""
    truth = read_csv(path)
    if np.isnan(truth.resolved).all():
        truth.resolved = (truth.maj >= SDC1_RESOLVED * image.bmaj_arcsec).astype(float)
    return truth


# --------------------------------------------------------------------------- evaluation


def finder_keys(precisions: list[str]) -> list[str]:
    return [f"ours-{p}" for p in precisions] + list(PEERS)


def label(key: str) -> str:
    if not key.startswith("ours-"):
        return PEER_NAMES[key]
    precision, _, min_snr = key[5:].partition("@")
    return f"ours {precision}" + (f", MIN_SNR {min_snr}" if min_snr else "")


def run_all(
    image: Image, ours: Ours, precisions: list[str], args: argparse.Namespace
) -> tuple[dict[str, Run], str]:
    """Ours at every precision, then the peers (run, or from the cache); and where the
    peers' results came from."""
    runs: dict[str, Run] = {}
    for p in precisions:
        runs[f"ours-{p}"] = run = ours.run(image, p)
        n = len(run.cat) if run.cat is not None else "-"
        msg = f"  ours {p:<5} {run.status:<7} n={n:<5} {_s(run.wall_s)}"
        print(msg + (f"  {run.error}" if run.error else ""), flush=True)
    t0 = time.perf_counter()
    peers, origin = run_peers(
        image,
        args.out / "peers",
        args.peers_python,
        args.peer_timeout,
        args.rerun_peers,
        args.skip_peers,
    )
    runs.update(peers)
    print(f"  peers {origin} ({time.perf_counter() - t0:.1f} s)", flush=True)
    for f in PEERS:
        run = peers[f]
        n = len(run.cat) if run.cat is not None else "-"
        msg = f"  {f:<10} {run.status:<7} n={n:<5} {_s(run.wall_s)}"
        print(msg + (f"  {run.error[-200:]}" if run.error else ""), flush=True)
    return runs, origin


def _s(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.3f} s"


def run_facts(run: Run, image: Image) -> dict[str, Any]:
    out: dict[str, Any] = {"status": run.status}
    if run.cat is not None:
        out["n"] = len(run.cat)
    if run.wall_s is not None:
        out["wall_s"] = run.wall_s
        out["s_per_mpix"] = run.wall_s / image.mpix
    if run.runs_s:
        out["runs_s"] = run.runs_s
    if run.error:
        out["error"] = run.error
    return out


def main_precision(precisions: list[str]) -> str:
    return "fp32" if "fp32" in precisions else precisions[0]


#: The pooled figures a finder is not given when it failed on one of the pooled images.
SCORE_KEYS = (
    "f1_vs_5sigma",
    "completeness",
    "purity",
    "f1",
    "completeness_5sigma",
    "unresolved_flux_err_median",
    "unresolved_flux_err_median_abs",
    "no_duplicate_share",
)


def score_image(
    image: Image,
    truth: Cat,
    runs: dict[str, Run],
    scorer: Scorer,
    pools: dict[str, Pool],
    failed: dict[str, list[str]],
) -> dict[str, Any]:
    """Score every finder's catalogue of ``image`` against the truth (the reference: units
    with S/N >= TRUTH_SNR; duplicates against all units) into ``pools``, noting in
    ``failed`` the finders without a catalogue; the image's entry: its truth counts and,
    per finder, its facts and score."""
    ref = reference(truth)
    entry: dict[str, Any] = {
        "shape": list(image.shape),
        "mpix": image.mpix,
        "bmaj_arcsec": image.bmaj_arcsec,
        **truth_counts(truth),
    }
    for k, run in runs.items():
        facts = run_facts(run, image)
        cat = run.cat if run.ok else None
        if cat is not None:
            facts["score"] = scorer.add(pools[k], cat, ref, image, truth)
        else:
            failed[k].append(image.name)
        entry[k] = facts
    return entry


def pool_summary(pool: Pool, failed: list[str], s_per_mpix: float) -> dict[str, Any]:
    out = pool.summary() | {"failed_images": failed, "s_per_mpix": s_per_mpix}
    if failed:  # a finder that missed an image is not scored on the pool
        out.update(dict.fromkeys(SCORE_KEYS, math.nan))
    return out


def pooled_speed(entries: list[dict[str, Any]], key: str) -> float:
    """Wall time summed over the images per Mpix summed (NaN unless timed on every one)."""
    walls = [e[key].get("wall_s") for e in entries]
    if not walls or any(w is None for w in walls):
        return math.nan
    return sum(walls) / sum(e["mpix"] for e in entries)


def sum_counts(entries: list[dict[str, Any]]) -> dict[str, int]:
    return {name: sum(e[name] for e in entries) for name in TRUTH_COUNTS}


def heldout(
    ours: Ours, scorer: Scorer, precisions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """The SDC1-like held-out fields: the four 512² pooled; the 1024² one (same sky, other
    noise) scored on its own and timed."""
    from training import simulate as sim

    folder = args.out / "heldout"
    pairs = sim.write_heldout(folder)
    big = sim.write_field(folder / "heldout_big", *sim.HELDOUT_BOX[:2], BIG_SIZE, BIG_SEED)
    keys = finder_keys(precisions)
    pools = {k: Pool() for k in keys}
    failed: dict[str, list[str]] = {k: [] for k in keys}
    per_field: dict[str, Any] = {}
    for path, truth_path in [*pairs, big]:
        image = image_info(path, path.stem)
        truth = sdc1_truth(truth_path, image)
        print(f"{image.name}: {image.shape[1]}x{image.shape[0]}, {len(truth)} true", flush=True)
        runs, origin = run_all(image, ours, precisions, args)
        if path == big[0]:  # scored, not pooled
            entry = score_image(
                image, truth, runs, scorer, {k: Pool() for k in keys}, {k: [] for k in keys}
            )
        else:
            entry = score_image(image, truth, runs, scorer, pools, failed)
        per_field[image.name] = entry | {"peers": origin}
    speed = per_field["heldout_big"]
    fields = [per_field[p.stem] for p, _ in pairs]
    return {
        "fields": [p.stem for p, _ in pairs],
        "speed_field": "heldout_big",
        "truth": sum_counts(fields),
        "n_truth": sum(e["n_truth"] for e in fields),
        "radius_arcsec": fields[0]["bmaj_arcsec"],
        "pooled": {
            k: pool_summary(pools[k], failed[k], speed[k].get("s_per_mpix", math.nan)) for k in keys
        },
        "per_field": per_field,
    }


def configurations(
    ours: Ours, scorer: Scorer, precisions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Every configuration asked for, its held-out images pooled."""
    return {name: configuration(name, ours, scorer, precisions, args) for name in args.configs}


def configuration(
    name: str, ours: Ours, scorer: Scorer, precisions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    config = cfgs.config(name)
    pairs, rendered = cfgs.images(name, args.out / "configs")
    print(f"configuration {name}: {len(pairs)} images", "(rendered)" if rendered else "(cached)")
    keys = finder_keys(precisions)
    pools = {k: Pool() for k in keys}
    failed: dict[str, list[str]] = {k: [] for k in keys}
    per_image: dict[str, Any] = {}
    for path, truth_path in pairs:
        image = image_info(path, path.stem)
        truth = read_csv(truth_path)
        print(
            f"{image.name}: {image.shape[1]}x{image.shape[0]}, {len(truth)} true units, "
            f"{int((truth.snr >= TRUTH_SNR).sum())} with S/N >= {TRUTH_SNR:g}",
            flush=True,
        )
        runs, origin = run_all(image, ours, precisions, args)
        entry = score_image(image, truth, runs, scorer, pools, failed)
        per_image[image.name] = entry | {"peers": origin}
    entries = list(per_image.values())
    return {
        "description": config.description,
        "pixel_arcsec": config.pixel_arcsec,
        "size": config.size,
        "images": list(per_image),
        "radius_arcsec": entries[0]["bmaj_arcsec"],
        "truth": sum_counts(entries),
        "pooled": {k: pool_summary(pools[k], failed[k], pooled_speed(entries, k)) for k in keys},
        "per_image": per_image,
    }


def real(
    ours: Ours, scorer: Scorer, precisions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    keys = finder_keys(precisions)
    out: dict[str, Any] = {}
    for image in [] if args.skip_real else real_images():
        print(
            f'{image.name}: {image.shape[1]}x{image.shape[0]}, BMAJ {image.bmaj_arcsec:.3g}"',
            flush=True,
        )
        runs, origin = run_all(image, ours, precisions, args)
        entry: dict[str, Any] = {
            "peers": origin,
            "shape": list(image.shape),
            "mpix": image.mpix,
            "bmaj_arcsec": image.bmaj_arcsec,
            "finders": {k: run_facts(runs[k], image) for k in keys},
        }
        ref: Cat | None = None
        if image.name == TRUTH_IMAGE:
            ref, entry["reference"] = read_csv(REAL / TRUTH_CSV), "truth"
        elif runs["bdsf"].ok:
            ref, entry["reference"] = runs["bdsf"].cat, "PyBDSF"
        else:
            entry["reference"] = None
        for k in keys:
            cat = runs[k].cat if runs[k].ok else None
            is_ref = k == "bdsf" and entry["reference"] == "PyBDSF"
            if ref is not None and cat is not None and not is_ref:
                entry["finders"][k]["score"] = scorer.add(Pool(), cat, ref, image)
        out[image.name] = entry
    return out


def speed(
    held: dict[str, Any], reals: dict[str, Any], configs: dict[str, Any], precisions: list[str]
) -> dict[str, Any]:
    """PyBDSF s/Mpix over ours, per precision, on every image of >= 1000² pixels: the real
    ones, the SDC1 1024² field and the configurations' images."""
    finders = {name: e["finders"] for name, e in reals.items()}
    finders["heldout_big"] = held["per_field"]["heldout_big"]
    shapes = {name: e["shape"] for name, e in reals.items()}
    shapes["heldout_big"] = finders["heldout_big"]["shape"]
    for c in configs.values():
        finders |= c["per_image"]
        shapes |= {name: e["shape"] for name, e in c["per_image"].items()}
    keys = ["bdsf", *(f"ours-{p}" for p in precisions)]
    s_per_mpix = {
        name: {k: finders[name][k].get("s_per_mpix", math.nan) for k in keys}
        for name, shape in shapes.items()
        if shape[0] * shape[1] >= BIG_PIXELS
    }
    ratios = {
        name: {p: s["bdsf"] / s[f"ours-{p}"] for p in precisions} for name, s in s_per_mpix.items()
    }
    out: dict[str, Any] = {"images": list(s_per_mpix), "s_per_mpix": s_per_mpix}
    out |= {"ratios": ratios, "min_ratio": {}, "min_image": {}, "unmeasured": {}}
    for p in precisions:
        values = {name: r[p] for name, r in ratios.items() if not math.isnan(r[p])}
        worst = min(values, key=values.__getitem__) if values else None
        out["min_ratio"][p] = values[worst] if worst else math.nan
        out["min_image"][p] = worst
        out["unmeasured"][p] = [name for name in ratios if name not in values]
    return out


# --------------------------------------------------------------------------- targets

#: (verdict: None when it cannot be measured, margin: lower is worse, text)
Check = tuple[bool | None, float, str]


def every_scope(checks: dict[str, Check]) -> tuple[str, bool | None]:
    """The measured cell and verdict of a target that must hold on every scope: the scopes
    that missed (or the closest one when none did) and those without a measure."""
    measured = {n: c for n, c in checks.items() if c[0] is not None}
    missing = [n for n, c in checks.items() if c[0] is None]
    misses = [n for n, c in measured.items() if not c[0]]
    parts = []
    if misses:
        parts.append("missed on " + ", ".join(f"{n} ({measured[n][2]})" for n in misses))
    elif measured:
        worst = min(measured, key=lambda n: measured[n][1])
        parts.append(f"holds on all {len(measured)}; closest {worst} ({measured[worst][2]})")
    if missing:
        parts.append("n/a on " + ", ".join(missing))
    ok = False if misses else None if missing or not measured else True
    return "; ".join(parts) or "-", ok


def f1_check(pooled: dict[str, Any], ours: str, key: str = "f1") -> Check:
    """Ours' F1 (or another score ``key``) against the best of the peers that were
    scored."""
    f1 = pooled[ours][key]
    peers = {k: pooled[k][key] for k in PEERS if not math.isnan(pooled[k][key])}
    if math.isnan(f1):
        return False, -math.inf, "ours not scored"
    if not peers:
        return None, math.nan, "no peers"
    best = max(peers, key=peers.__getitem__)
    text = f"{f1:.3f} vs {PEER_NAMES[best]} {peers[best]:.3f}"
    return f1 >= peers[best], f1 - peers[best], text


def c5_check(pooled: dict[str, Any], ours: str) -> Check:
    """Ours' completeness above 5 sigma against sep's."""
    mine, sep = pooled[ours]["completeness_5sigma"], pooled["sep"]["completeness_5sigma"]
    if math.isnan(mine):
        return False, -math.inf, "ours not scored"
    if math.isnan(sep):
        return None, math.nan, "no sep"
    return mine >= sep, mine - sep, f"{mine:.3f} vs sep {sep:.3f}"


def flux_check(pooled: dict[str, Any], ours: str) -> Check:
    """Ours' median int flux error on unresolved sources above FLUX_SNR_MIN."""
    s = pooled[ours]
    median, n = s["unresolved_flux_err_median"], s["unresolved_flux_n"]
    if math.isnan(median):
        return (None, math.nan, "no sources") if not s["failed_images"] else (False, 0, "failed")
    bound = TARGETS["flux_bias"]
    return abs(median) <= bound, bound - abs(median), f"{median:+.1%}, n={n}"


def duplicate_row(scopes: dict[str, dict[str, Any]], ours: str) -> tuple[str, bool | None]:
    """Point sources without a duplicate, pooled over every scope, and each scope's share."""
    points = sum(s[ours]["points"] for s in scopes.values())
    dup = sum(s[ours]["duplicated_points"] for s in scopes.values())
    failed = [n for n, s in scopes.items() if s[ours]["failed_images"]]
    shares = {n: s[ours]["no_duplicate_share"] for n, s in scopes.items()}
    bound = TARGETS["no_duplicate"]
    share = 1 - dup / points if points else math.nan
    text = f"{_f(share, '.2%')} of {points} ({dup} duplicated); " + ", ".join(
        f"{n} {_f(v, '.1%')}" for n, v in shares.items()
    )
    below = [n for n, v in shares.items() if v < bound]
    if below:
        text += "; below on " + ", ".join(below)
    if failed:
        return text + "; ours failed on " + ", ".join(failed), False
    return text, None if math.isnan(share) else share >= bound


def speed_row(sp: dict[str, Any], precisions: list[str], main: str) -> tuple[str, bool | None]:
    least = sp["min_ratio"]
    if math.isnan(least[main]):
        text = "not measured"
    else:
        text = f"{least[main]:.1f}x ({sp['min_image'][main]})"
    others = [f"{p} {_f(least[p], '.1f')}x" for p in precisions if p != main]
    text += f" ({', '.join(others)})" if others else ""
    below = [n for n, r in sp["ratios"].items() if r[main] < TARGETS["speedup"]]
    if below:
        text += "; below on " + ", ".join(below)
    unmeasured = sp["unmeasured"][main]
    if unmeasured:
        text += f"; no PyBDSF time on {len(unmeasured)} of {len(sp['ratios'])} images"
    ok = False if below else None if unmeasured or not sp["ratios"] else True
    return text, ok


def ami_row(reals: dict[str, Any], precisions: list[str], main: str) -> tuple[str, bool | None]:
    if AMI_IMAGE not in reals:
        return "not run", None
    ami = reals[AMI_IMAGE]["finders"]
    ami_n = {p: ami.get(f"ours-{p}", {}).get("n", math.nan) for p in precisions}
    score = ami.get(f"ours-{main}", {}).get("score")
    matched = score is None or score["n_matched"] >= 1
    ref = (
        "no PyBDSF reference to match"
        if score is None
        else f"{score['n_matched']} matched to PyBDSF's {score['n_ref']}"
    )
    others = [f"{p} {_f(ami_n[p], 'g')}" for p in precisions if p != main]
    text = f"{_f(ami_n[main], 'g')} detection(s), {ref}" + (
        f" ({', '.join(others)})" if others else ""
    )
    return text, ami_n[main] == TARGETS["ami_n"] and matched


def targets(
    held: dict[str, Any],
    reals: dict[str, Any],
    configs: dict[str, Any],
    sp: dict[str, Any],
    precisions: list[str],
) -> list[dict[str, Any]]:
    main = main_precision(precisions)
    ours = f"ours-{main}"
    scopes = {name: c["pooled"] for name, c in configs.items()} | {"SDC1": held["pooled"]}
    every = "on every configuration and SDC1"
    rows = [
        (
            f"F1 >= the best peer's {every}, reference truth S/N >= {TRUTH_SNR:g} ({main})",
            *every_scope({n: f1_check(s, ours) for n, s in scopes.items()}),
        ),
        (
            f"F1 >= the best peer's {every}, reference truth S/N >= {C5_SNR:g} ({main})",
            *every_scope({n: f1_check(s, ours, "f1_vs_5sigma") for n, s in scopes.items()}),
        ),
        (
            f"completeness above {C5_SNR:g}{SIGMA} >= sep's {every} ({main})",
            *every_scope({n: c5_check(s, ours) for n, s in scopes.items()}),
        ),
        (
            f"median int flux / true within {TARGETS['flux_bias']:.0%} for unresolved sources "
            f"above {FLUX_SNR_MIN:g}{SIGMA}, {every} ({main})",
            *every_scope({n: flux_check(s, ours) for n, s in scopes.items()}),
        ),
        (
            f"true point sources (S/N ≥ {POINT_SNR:g}) without a duplicate >= "
            f"{TARGETS['no_duplicate']:.1%}, pooled over the configurations and SDC1 ({main})",
            *duplicate_row(scopes, ours),
        ),
        (
            f">= {TARGETS['speedup']:.0f}x PyBDSF per Mpix on every image of >= 1000² pixels, "
            f"min ({main})",
            *speed_row(sp, precisions, main),
        ),
        (
            f"AMI SWIFT_554620: exactly one detection ({main})",
            *ami_row(reals, precisions, main),
        ),
    ]
    return [
        {"target": t, "measured": m, "result": "n/a" if ok is None else "PASS" if ok else "MISS"}
        for t, m, ok in rows
    ]


# --------------------------------------------------------------------------- reporting


def _f(value: float | None, fmt: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def _pct(median: float, median_abs: float) -> str:
    if math.isnan(median):
        return "-"
    return f"{median:+.1%} / {median_abs:.1%}".replace("%", " %")


def _md(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _dup(s: dict[str, Any]) -> str:
    """Point sources without a duplicate: share (duplicated / point sources)."""
    if not s["points"] or math.isnan(s["no_duplicate_share"]):
        return "-"
    share = f"{s['no_duplicate_share']:.1%}".replace("%", " %")
    return f"{share} ({s['duplicated_points']} / {s['points']})"


def _status(images: dict[str, Any], s: dict[str, Any], key: str) -> str | None:
    """The status of a finder that failed on one of the pooled images, else None."""
    return images[s["failed_images"][0]][key]["status"] if s["failed_images"] else None


def _truth_cells(s: dict[str, Any]) -> list[str]:
    return [
        _f(s["completeness_5sigma"]),
        _pct(s["unresolved_flux_err_median"], s["unresolved_flux_err_median_abs"]),
        _dup(s),
    ]


TRUTH_HEADER = [
    f"completeness ≥ {C5_SNR:g}{SIGMA}",
    f"unresolved int flux error, median / median abs (S/N ≥ {FLUX_SNR_MIN:g})",
    f"point sources (S/N ≥ {POINT_SNR:g}) without a duplicate (duplicated / all)",
]


def heldout_table(held: dict[str, Any], keys: list[str]) -> list[str]:
    rows = []
    for k in keys:
        s = held["pooled"][k]
        status = _status(held["per_field"], s, k)
        if status:
            rows.append([label(k), status, *["-"] * 10, _f(s["s_per_mpix"], ".3g")])
            continue
        rows.append(
            [
                label(k),
                str(s["n_cat"]),
                _f(s["completeness"]),
                _f(s["purity"]),
                _f(s["f1"]),
                _f(s["median_offset_arcsec"], ".2f"),
                _pct(s["int_flux_err_median"], s["int_flux_err_median_abs"]),
                _pct(s["peak_flux_err_median"], s["peak_flux_err_median_abs"]),
                _f(s["pa_err_median_abs_deg"], ".1f"),
                *_truth_cells(s),
                _f(s["s_per_mpix"], ".3g"),
            ]
        )
    header = ["finder", "found", "completeness", "purity", "F1", 'median offset (")']
    header += [
        f"int flux error, median / median abs (S/N ≥ {FLUX_SNR_MIN:g})",
        "peak flux error, median / median abs",
        f"median abs PA error (°), maj/min ≥ {PA_ELONGATION}, S/N ≥ {PA_SNR_MIN:g}",
        *TRUTH_HEADER,
        f"s/Mpix ({BIG_SIZE}²)",
    ]
    return _md(header, rows)


def _speed_cell(s_per_mpix: float, bdsf: float, ours: bool) -> str:
    """s/Mpix, and for ours PyBDSF's over it."""
    ratio = bdsf / s_per_mpix if ours else math.nan
    return _f(s_per_mpix, ".3g") + ("" if math.isnan(ratio) else f" ({ratio:.0f}x)")


def config_table(c: dict[str, Any], keys: list[str]) -> list[str]:
    """One configuration's pooled scores, a row per finder."""
    bdsf = c["pooled"]["bdsf"]["s_per_mpix"]
    rows = []
    for k in keys:
        s = c["pooled"][k]
        speed_cell = _speed_cell(s["s_per_mpix"], bdsf, k.startswith("ours-"))
        status = _status(c["per_image"], s, k)
        if status:
            rows.append([label(k), status, *["-"] * 6, speed_cell])
            continue
        rows.append(
            [
                label(k),
                str(s["n_cat"]),
                _f(s["completeness"]),
                _f(s["purity"]),
                _f(s["f1"]),
                *_truth_cells(s),
                speed_cell,
            ]
        )
    header = ["finder", "found", "completeness", "purity", "F1", *TRUTH_HEADER]
    return _md([*header, "s/Mpix (PyBDSF ÷ ours)"], rows)


def config_heading(name: str, c: dict[str, Any]) -> str:
    t = c["truth"]
    return (
        f"*{name}*: {c['description']}. {len(c['images'])} images of {c['size']}² "
        f'({c["pixel_arcsec"]:g}" pixels, match radius {c["radius_arcsec"]:.3g}"): '
        f"{t['n_truth']} true units, {t['n_ref']} with S/N ≥ {TRUTH_SNR:g} (the reference), "
        f"{t['n_ref_5sigma']} ≥ {C5_SNR:g}{SIGMA}, {t['n_unresolved_10sigma']} unresolved ≥ "
        f"{FLUX_SNR_MIN:g}{SIGMA}, {t['n_points']} point sources ≥ {POINT_SNR:g}{SIGMA}."
    )


def summary_table(
    scopes: dict[str, dict[str, Any]], keys: list[str], score: str = "f1"
) -> list[str]:
    """F1 (or ``score``) per scope (row) and finder (column), the best of the four peers in
    bold."""
    rows = []
    for name, pooled in scopes.items():
        f1 = {k: pooled[k][score] for k in keys}
        peers = [f1[k] for k in PEERS if not math.isnan(f1[k])]
        best = max(peers) if peers else math.nan
        cells = [f"**{_f(f1[k])}**" if k in PEERS and f1[k] == best else _f(f1[k]) for k in keys]
        rows.append([name, *cells])
    return _md(["", *(label(k) for k in keys)], rows)


def real_table(reals: dict[str, Any], main: str) -> list[str]:
    """One row per image; per finder "n (F1 vs the reference)"."""
    rows = []
    for name, e in reals.items():
        fs = e["finders"]
        ref = e["reference"]

        def cell(k: str, fs: dict[str, Any] = fs, ref: str | None = ref) -> str:
            if "n" not in fs[k]:
                return fs[k]["status"]
            if k == "bdsf" and ref == "PyBDSF":
                return f"{fs[k]['n']} (ref)"
            if "score" not in fs[k]:
                return str(fs[k]["n"])
            return f"{fs[k]['n']} ({_f(fs[k]['score']['f1'], '.2f')})"

        rows.append(
            [
                f"`{name}`",
                f"{e['shape'][1]}x{e['shape'][0]}",
                "truth" if ref == "truth" else "PyBDSF (not truth)" if ref else "none",
                cell(f"ours-{main}"),
                *(cell(k) for k in PEERS),
                _f(fs[f"ours-{main}"].get("s_per_mpix"), ".3g"),
                _f(fs["bdsf"].get("s_per_mpix"), ".3g"),
            ]
        )
    return _md(
        [
            "image",
            "pixels",
            "F1 vs",
            f"ours {main}",
            *(PEER_NAMES[k] for k in PEERS),
            "s/Mpix ours",
            "s/Mpix PyBDSF",
        ],
        rows,
    )


def speed_table(sp: dict[str, Any], precisions: list[str]) -> list[str]:
    rows = []
    for name in sp["images"]:
        s, ratios = sp["s_per_mpix"][name], sp["ratios"][name]
        cells = [
            _f(s[f"ours-{p}"], ".3g") + ("" if math.isnan(ratios[p]) else f" ({ratios[p]:.0f}x)")
            for p in precisions
        ]
        rows.append([f"`{name}`", _f(s["bdsf"], ".3g"), *cells])
    return _md(
        ["image", "PyBDSF s/Mpix", *(f"ours {p} s/Mpix (PyBDSF ÷ ours)" for p in precisions)],
        rows,
    )


def heldout_section(held: dict[str, Any], keys: list[str]) -> list[str]:
    t = held["truth"]
    return [
        f"**Held-out simulated fields** ({len(held['fields'])} SDC1-like 1000 h fields of "
        f"512², pooled: {t['n_truth']} true sources, {t['n_ref']} of them with S/N ≥ "
        f"{TRUTH_SNR:g}, the reference; match radius 1 x BMAJ = "
        f'{held["radius_arcsec"]:g}"). Flux error is found / true - 1 over matched sources '
        f"with true peak S/N ≥ {FLUX_SNR_MIN:g}; the PA error is over matched true sources "
        f"with observed maj/min ≥ {PA_ELONGATION:g} and S/N ≥ {PA_SNR_MIN:g} (where an angle "
        "is measurable). The last three measures are the configurations' (below); the SDC1 "
        "truth has no resolved flag, so there a source is unresolved when its true observed "
        f"FWHM is under {SDC1_RESOLVED:g} x BMAJ ({t['n_points']} point sources ≥ "
        f"{POINT_SNR:g}{SIGMA}). s/Mpix on the {BIG_SIZE}² field of the same sky.",
        "",
        *heldout_table(held, keys),
    ]


def configs_section(configs: dict[str, Any], held: dict[str, Any], keys: list[str]) -> list[str]:
    scopes = {n: c["pooled"] for n, c in configs.items()} | {"SDC1": held["pooled"]}
    if not configs:
        return []
    lines = [
        "**Telescope-like configurations** (`training/synthesis.py`: restored images with "
        "CLEAN residuals, correlated noise, sidelobes, calibration errors and primary-beam "
        "correction; held-out seeds, never drawn in training; pooled over each "
        "configuration's images). The reference is the true units with peak S/N ≥ "
        f"{TRUTH_SNR:g} over the local rms a finder measures: fainter units are not counted "
        "as missed, and a detection of one counts against purity. Matching is crossmatch.py's "
        "(one-to-one within 1 x BMAJ, both catalogues cut to the image footprint). "
        f"Completeness ≥ {C5_SNR:g}{SIGMA}: matched units with S/N ≥ {C5_SNR:g} over all of them. "
        "Unresolved int flux error: found / true - 1 over matched unresolved units with S/N ≥ "
        f"{FLUX_SNR_MIN:g}. Duplicates: each detection goes to its nearest true unit (of all, "
        "any S/N) within 1 x BMAJ; a true point source (unresolved, S/N ≥ "
        f"{POINT_SNR:g}) given two or more is duplicated. s/Mpix: wall time summed over the "
        "images per Mpix summed.",
        "",
        f"F1 per configuration, reference the true units of S/N ≥ {TRUTH_SNR:g} (bold: the "
        "best of the four peers):",
        "",
        *summary_table(scopes, keys),
        "",
        f"F1 per configuration, reference the true units of S/N ≥ {C5_SNR:g} alone, as a "
        f"{C5_SNR:g}{SIGMA} catalogue would be judged (a detection of a fainter true source "
        "counts as false):",
        "",
        *summary_table(scopes, keys, "f1_vs_5sigma"),
    ]
    for name, c in configs.items():
        lines += ["", config_heading(name, c), "", *config_table(c, keys)]
    return lines


def real_section(reals: dict[str, Any], main: str) -> list[str]:
    if not reals:
        return []
    return [
        f"**Real and third-party images** (`../shared/data/real`). Only `{TRUTH_IMAGE}` has a "
        f"truth catalogue; elsewhere F1 is agreement with PyBDSF's catalogue (vs PyBDSF), not "
        "accuracy. Each finder's cell: sources found (F1 vs the reference, both catalogues cut "
        f"to the image footprint). Ours at {main}.",
        "",
        *real_table(reals, main),
    ]


def footer(result: dict[str, Any], origins: list[str]) -> str:
    m, model = result["machine"], result["model"]
    versions = ", ".join(f"{k} {v}" for k, v in result["peer_versions"].items())
    text = (
        f"Made by `{result['command']}` on {result['date']}: {m['nproc']} cores "
        f"({m['cpu']}), model {model['id']} {model['version']} (fp32 sha256 "
        f"{model['sha256'].get('fp32', '?')[:12]}…) with {model['onnxruntime_threads']} "
        f"ONNX Runtime thread(s); peers on 1 core each ({versions or 'versions unknown'})"
    )
    if origins.count("cached"):
        text += (
            f"; the peers' results for {origins.count('cached')} of {len(origins)} images are "
            "from an earlier run of this script (cached by image sha256)"
        )
    if origins.count("skipped"):
        text += f"; the peers were skipped on {origins.count('skipped')} images"
    return text + "."


def report(result: dict[str, Any], precisions: list[str]) -> str:
    held, reals, configs = result["heldout"], result["real"], result["configs"]
    keys = finder_keys(precisions)
    entries = [*held["per_field"].values(), *reals.values()]
    entries += [e for c in configs.values() for e in c["per_image"].values()]
    sections = [
        heldout_section(held, keys),
        configs_section(configs, held, keys),
        real_section(reals, main_precision(precisions)),
        [
            "**Speed on images of ≥ 1000² pixels** (finder wall time per Mpix; ours after a "
            f"warm-up run, median of {result['repeats']}; PyBDSF as timed inside "
            "run_peers.py).",
            "",
            *speed_table(result["speed"], precisions),
        ],
        [
            "**Targets**",
            "",
            *_md(
                ["target", "measured", "result"],
                [[t["target"], t["measured"], t["result"]] for t in result["targets"]],
            ),
        ],
        [footer(result, [e["peers"] for e in entries])],
    ]
    return "\n\n".join("\n".join(lines) for lines in sections if lines)


def card_text(card: Path) -> str:
    """The card's text, checked for the science section's markers (exit when missing)."""
    try:
        text = card.read_text()
        check_section(text, "science")
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{card}: {exc}") from exc
    return text


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "cpu": cpu_model(), "node": platform.node()}


def _clean(value: Any) -> Any:
    """NaN as null, for strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "build" / "science",
        help="work folder: held-out fields, configuration images, the peers' cached catalogues",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-science.json"))
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument(
        "--model-version", help="an installed version of the detector (default: the newest)"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="extra model folder: its radio-detector is used instead of the shipped one",
    )
    parser.add_argument(
        "--precisions",
        default="fp32,fp16,int8",
        help="ours' runs; PRECISION@S runs that precision with MIN_SNR S (another operating "
        "point), e.g. fp32@4.5",
    )
    parser.add_argument(
        "--configs",
        default=",".join(cfgs.names()),
        help="configurations of training/synthesis.py to evaluate (default: all)",
    )
    parser.add_argument(
        "--skip-configs", action="store_true", help="don't evaluate the configurations"
    )
    parser.add_argument("--skip-real", action="store_true", help="don't evaluate the real images")
    parser.add_argument(
        "--skip-peers", action="store_true", help="don't run the peers (cached results are used)"
    )
    parser.add_argument("--rerun-peers", action="store_true", help="ignore cached peer results")
    parser.add_argument("--peer-timeout", type=float, default=900, help="per finder, s")
    parser.add_argument("--card", type=Path, help="model card to update between the markers")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime threads (default 1: as each peer, and as each of the service's "
        "2 workers on 2 cores; 0 = all cores)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    names = [] if args.skip_configs else [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(names) - set(cfgs.names()))
    if unknown:
        parser.error(
            f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(cfgs.names())}"
        )
    args.configs = names
    if args.card:
        card_text(args.card)  # fail now, not after the peers' minutes
    return args


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    precisions = args.precisions
    ours = Ours(args.models_dir, args.threads, args.repeats, args.model_version)
    scorer = Scorer()
    result: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": ours.describe(precisions),
        "precisions": precisions,
        "repeats": args.repeats,
        "match_radius": "1 x BMAJ, footprint-cut",
        "truth_snr": TRUTH_SNR,
        "peer_versions": {} if args.skip_peers else peer_versions(args.peers_python),
    }
    result["heldout"] = heldout(ours, scorer, precisions, args)
    result["configs"] = configurations(ours, scorer, precisions, args)
    result["real"] = real(ours, scorer, precisions, args)
    parts = (result["heldout"], result["real"], result["configs"])
    result["speed"] = speed(*parts, precisions)
    result["targets"] = targets(*parts, result["speed"], precisions)
    return result


def main() -> None:
    args = parse_args()
    warnings.simplefilter("ignore")  # FITS header fix-ups, WCS notes
    started = time.perf_counter()
    result = evaluate(args)
    result["wall_s"] = time.perf_counter() - started
    text = report(result, args.precisions)
    print()
    print(text)
    print()
    for t in result["targets"]:
        print(f"{t['result']:<4}  {t['target']}: {t['measured']}")
    args.json.write_text(json.dumps(_clean(result), indent=2, ensure_ascii=False))
    print(f"wrote {args.json} ({result['wall_s']:.0f} s)")
    if args.card:
        args.card.write_text(replace_section(card_text(args.card), "science", text))
        print(f"updated {args.card}")


if __name__ == "__main__":
    main()
