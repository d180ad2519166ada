"""Science evaluation of the trained detector (``radio-detector``) against truth and peers.

Why: the model card has to say how good the detector is and what it costs, measured the
same way for it and for the finders people use today (PyBDSF, Aegean, sep, photutils), on
images where the answer is known (simulated held-out SDC1-like fields, Aegean's synthetic
test image) and on real images where it is not (there PyBDSF's catalogue is the reference,
labelled "vs PyBDSF", never "truth").

- Held-out fields (``training.simulate``, never seen in training): the four 512² fields
  pooled (matched, found and true counts summed over fields): completeness, purity, F1,
  median offset, flux accuracy (found / true - 1, median and median of its absolute value)
  of the matched sources with true peak S/N >= 10, for int_flux and peak_flux, and the
  position-angle error of the elongated ones. Speed on the 1024² field of the same sky.
- Real images (every FITS in ``../shared/data/real`` but the catalogues): counts per finder,
  F1 vs truth (synthetic_test), F1 vs PyBDSF (the others), one detection on the AMI image.
- Speed: finder wall time per Mpix. Ours: ``app.run`` in this process (the code the service
  runs) after one warm-up run on the same image, the median of ``--repeats`` runs, with
  ``--threads`` ONNX Runtime threads. Peers: ``wall_s`` from ``run_peers.py`` (measured in
  their process, on 1 core). Ratio PyBDSF / ours on the images of >= 1000² pixels.

Matching is ``crossmatch.py``'s (one-to-one, radius 1 x BMAJ, both catalogues cut to the
image footprint). Peers run once per image, all four in one ``run_peers.py`` call, and are
cached in ``--out`` (keyed by the image's sha256) unless ``--rerun-peers``; PyBDSF takes
minutes on the big images. A peer that fails or times out is reported as failed.

Prints the tables and the targets (held-out F1 >= 0.92; held-out F1 above PyBDSF's; >= 20x
PyBDSF's speed per Mpix on >= 1000² images; median |int flux error| <= 10 % at S/N >= 10;
exactly one detection on the AMI image, PyBDSF's source), writes JSON and, with ``--card``,
replaces the text between ``<!-- science:begin -->`` and ``<!-- science:end -->`` in the
model card with the tables.

Usage: PYTHONPATH=. python bench/science.py [--out DIR] [--json OUT] [--models-dir DIR]
           [--precisions fp32,fp16,int8] [--peers-python PY] [--skip-peers] [--rerun-peers]
           [--card MODEL_CARD.md] [--threads N] [--repeats N]
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
from astropy.io import fits

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
FLUX_SNR_MIN = 10.0
#: Position angles are compared for true sources this bright and this elongated (observed
#: maj/min), where an angle is measurable.
PA_SNR_MIN = 20.0
PA_ELONGATION = 1.5
TARGETS = {"heldout_f1": 0.92, "speedup": 20.0, "flux_err": 0.10, "ami_n": 1}
LOG = logging.getLogger("bench.science")


# --------------------------------------------------------------------------- data


@dataclass
class Cat:
    """Positions (ICRS deg), fluxes (Jy/beam, Jy), observed FWHM axes (arcsec) and position
    angle (deg) of a catalogue; snr is the true peak S/N for truth catalogues, NaN
    otherwise."""

    ra: np.ndarray
    dec: np.ndarray
    peak: np.ndarray
    int_flux: np.ndarray
    snr: np.ndarray
    maj: np.ndarray
    min: np.ndarray
    pa: np.ndarray

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
        )


def read_csv(path: Path) -> Cat:
    """A CSV catalogue with ra, dec (deg) and optional peak_flux, int_flux, snr columns
    (a header-only file is an empty catalogue)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = ("ra", "dec", "peak_flux", "int_flux", "snr", "maj", "min", "pa")
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

    def __init__(self, models_dir: Path | None, threads: int, repeats: int) -> None:
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
            self.app = build_registry(RegistryConfig(runtime=runtime)).get(MODEL_ID)
        self.threads = runtime.threads()
        self.repeats = repeats

    def describe(self, precisions: list[str]) -> dict[str, Any]:
        model = self.app.model
        return {
            "id": self.app.model_id,
            "version": self.app.version,
            "manifest": str(model.path),
            "sha256": {p: model.sha256(p) for p in precisions},
            "threshold": model.manifest.postprocess.score_threshold,
            "onnxruntime_threads": self.threads,
        }

    def run(self, image: Image, precision: str) -> Run:
        from astro_otf.models.base import AppRequest

        try:
            with tempfile.TemporaryDirectory(prefix="science-") as tmp:
                request = AppRequest(
                    job_id="bench",
                    image_path=image.path,
                    values={"precision": precision},
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
    """Matches of one finder against a reference, summed over one or more images."""

    n_cat: int = 0
    n_ref: int = 0
    n_matched: int = 0
    seps: list[float] = field(default_factory=list)
    int_err: list[float] = field(default_factory=list)
    peak_err: list[float] = field(default_factory=list)
    #: position angle differences (deg, -90..90) of elongated bright true sources
    pa_err: list[float] = field(default_factory=list)

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
        return out


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


class Scorer:
    """crossmatch.py's score, both catalogues cut to the image footprint, radius 1 x BMAJ."""

    def __init__(self) -> None:
        self.cm = load_crossmatch()

    def footprint(self, cat: Cat, image: Image) -> Cat:
        keep, _ = self.cm.footprint_mask(cat.ra, cat.dec, str(image.path), 0)
        return cat.take(np.asarray(keep, bool))

    def add(self, pool: Pool, cat: Cat, ref: Cat, image: Image) -> dict[str, Any]:
        """Match ``cat`` to ``ref`` on ``image``, add to ``pool``; this image's score."""
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
            f, t = found[ic][bright], true[ir][bright]
            ok = np.isfinite(f) & np.isfinite(t) & (t > 0)
            errs.extend((f[ok] / t[ok] - 1.0).tolist())
        elongated = (r.snr[ir] >= PA_SNR_MIN) & (r.maj[ir] >= PA_ELONGATION * r.min[ir])
        d_pa = np.mod(c.pa[ic][elongated] - r.pa[ir][elongated] + 90.0, 180.0) - 90.0
        pool.pa_err.extend(d_pa[np.isfinite(d_pa)].tolist())
        return {k: v for k, v in res.items() if k != "radius_arcsec"}


# --------------------------------------------------------------------------- evaluation


def finder_keys(precisions: list[str]) -> list[str]:
    return [f"ours-{p}" for p in precisions] + list(PEERS)


def label(key: str) -> str:
    return f"ours {key[5:]}" if key.startswith("ours-") else PEER_NAMES[key]


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


def heldout(
    ours: Ours, scorer: Scorer, precisions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    from training import simulate as sim

    folder = args.out / "heldout"
    pairs = sim.write_heldout(folder)
    big = sim.write_field(folder / "heldout_big", *sim.HELDOUT_BOX[:2], BIG_SIZE, BIG_SEED)
    keys = finder_keys(precisions)
    pools = {k: Pool() for k in keys}
    per_field: dict[str, Any] = {}
    n_found = dict.fromkeys(keys, 0)
    failed: dict[str, list[str]] = {k: [] for k in keys}
    fields = [*pairs, big]
    for n, (path, truth_path) in enumerate(fields):
        image = image_info(path, path.stem)
        truth = read_csv(truth_path)
        print(f"{image.name}: {image.shape[1]}x{image.shape[0]}, {len(truth)} true", flush=True)
        runs, origin = run_all(image, ours, precisions, args)
        is_big = n == len(fields) - 1
        entry: dict[str, Any] = {
            "n_truth": len(truth),
            "shape": list(image.shape),
            "peers": origin,
        }
        for k in keys:
            run = runs[k]
            facts = run_facts(run, image)
            if run.ok:
                assert run.cat is not None
                facts["score"] = scorer.add(Pool() if is_big else pools[k], run.cat, truth, image)
                if not is_big:
                    n_found[k] += len(run.cat)
            elif not is_big:
                failed[k].append(image.name)
            entry[k] = facts
        per_field[image.name] = entry
    speed = per_field["heldout_big"]
    pooled = {}
    for k in keys:
        pooled[k] = pools[k].summary() | {
            "n_found": n_found[k],
            "failed_fields": failed[k],
            "s_per_mpix": speed[k].get("s_per_mpix", math.nan),
        }
        if failed[k]:  # a finder that missed a field is not scored on the pool
            for name in ("completeness", "purity", "f1"):
                pooled[k][name] = math.nan
    return {
        "fields": [p.stem for p, _ in pairs],
        "speed_field": "heldout_big",
        "n_truth": sum(per_field[p.stem]["n_truth"] for p, _ in pairs),
        "radius_arcsec": image_info(pairs[0][0], "").bmaj_arcsec,
        "flux_snr_min": FLUX_SNR_MIN,
        "pooled": pooled,
        "per_field": per_field,
    }


def real(
    ours: Ours, scorer: Scorer, precisions: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    keys = finder_keys(precisions)
    out: dict[str, Any] = {}
    for image in real_images():
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
        if ref is not None:
            for k in keys:
                if runs[k].ok and not (k == "bdsf" and entry["reference"] == "PyBDSF"):
                    assert runs[k].cat is not None
                    score = scorer.add(Pool(), runs[k].cat, ref, image)
                    entry["finders"][k]["score"] = score
        out[image.name] = entry
    return out


def speed(held: dict[str, Any], reals: dict[str, Any], precisions: list[str]) -> dict[str, Any]:
    """PyBDSF s/Mpix over ours, per precision, on the images of >= 1000² pixels."""
    big = {
        name: e["finders"]
        for name, e in reals.items()
        if e["shape"][0] * e["shape"][1] >= BIG_PIXELS
    }
    big["heldout_big"] = held["per_field"]["heldout_big"]
    ratios: dict[str, dict[str, float]] = {}
    for name, finders in big.items():
        bdsf = finders["bdsf"].get("s_per_mpix")
        ratios[name] = {
            p: bdsf / finders[f"ours-{p}"]["s_per_mpix"]
            if bdsf is not None and "s_per_mpix" in finders[f"ours-{p}"]
            else math.nan
            for p in precisions
        }
    minimum = {}
    for p in precisions:
        values = [r[p] for r in ratios.values()]
        minimum[p] = math.nan if not values or any(math.isnan(v) for v in values) else min(values)
    return {"images": list(big), "ratios": ratios, "min_ratio": minimum}


def targets(
    held: dict[str, Any], reals: dict[str, Any], sp: dict[str, Any], precisions: list[str]
) -> list[dict[str, Any]]:
    pooled = held["pooled"]
    main = "fp32" if "fp32" in precisions else precisions[0]
    ours = pooled[f"ours-{main}"]
    others = [p for p in precisions if p != main]

    def also(values: dict[str, float], fmt: str, unit: str = "") -> str:
        parts = [f"{p} {_f(values[p], fmt)}{unit}" for p in others]
        return f" ({', '.join(parts)})" if parts else ""

    f1s = {p: pooled[f"ours-{p}"]["f1"] for p in precisions}
    bdsf_f1 = pooled["bdsf"]["f1"]
    flux = {p: pooled[f"ours-{p}"]["int_flux_err_median_abs"] for p in precisions}
    ami = reals.get(AMI_IMAGE, {}).get("finders", {})
    ami_n = {p: ami.get(f"ours-{p}", {}).get("n", math.nan) for p in precisions}
    ami_score = ami.get(f"ours-{main}", {}).get("score")
    ami_matched = ami_score is None or ami_score["n_matched"] >= 1
    ami_ref = (
        "no PyBDSF reference to match"
        if ami_score is None
        else f"{ami_score['n_matched']} matched to PyBDSF's {ami_score['n_ref']}"
    )
    minimum = sp["min_ratio"]
    rows = [
        (
            f"held-out F1 >= {TARGETS['heldout_f1']} ({main})",
            f"{_f(f1s[main])}{also(f1s, '.3f')}",
            f1s[main] >= TARGETS["heldout_f1"],
        ),
        (
            f"held-out F1 above PyBDSF's ({main})",
            f"{_f(f1s[main])} vs {_f(bdsf_f1)}",
            None if math.isnan(bdsf_f1) else f1s[main] > bdsf_f1,
        ),
        (
            f">= {TARGETS['speedup']:.0f}x PyBDSF per Mpix on >= 1000² images, min ({main})",
            f"{_f(minimum[main], '.1f')}x{also(minimum, '.1f', 'x')}",
            None if math.isnan(minimum[main]) else minimum[main] >= TARGETS["speedup"],
        ),
        (
            f"median abs int flux error <= {TARGETS['flux_err']:.0%}, true S/N >= "
            f"{FLUX_SNR_MIN:g} ({main})",
            f"{_f(flux[main], '.1%')} (peak {_f(ours['peak_flux_err_median_abs'], '.1%')})"
            f"{also(flux, '.1%')}",
            None if math.isnan(flux[main]) else flux[main] <= TARGETS["flux_err"],
        ),
        (
            f"AMI SWIFT_554620: exactly one detection ({main})",
            f"{_f(ami_n[main], 'g')} detection(s), {ami_ref}{also(ami_n, 'g')}",
            ami_n[main] == TARGETS["ami_n"] and ami_matched,
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


def heldout_table(held: dict[str, Any], keys: list[str]) -> list[str]:
    rows = []
    for k in keys:
        s = held["pooled"][k]
        if s["failed_fields"]:
            status = held["per_field"][s["failed_fields"][0]][k]["status"]
            rows.append([label(k), status, *["-"] * 7, _f(s["s_per_mpix"], ".3g")])
            continue
        rows.append(
            [
                label(k),
                str(s["n_found"]),
                _f(s["completeness"]),
                _f(s["purity"]),
                _f(s["f1"]),
                _f(s["median_offset_arcsec"], ".2f"),
                _pct(s["int_flux_err_median"], s["int_flux_err_median_abs"]),
                _pct(s["peak_flux_err_median"], s["peak_flux_err_median_abs"]),
                _f(s["pa_err_median_abs_deg"], ".1f"),
                _f(s["s_per_mpix"], ".3g"),
            ]
        )
    return _md(
        [
            "finder",
            "found",
            "completeness",
            "purity",
            "F1",
            'median offset (")',
            "int flux error, median / median abs",
            "peak flux error, median / median abs",
            f"median abs PA error (°), maj/min ≥ {PA_ELONGATION}, S/N ≥ {PA_SNR_MIN:g}",
            f"s/Mpix ({BIG_SIZE}²)",
        ],
        rows,
    )


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


def speed_table(
    held: dict[str, Any], reals: dict[str, Any], sp: dict[str, Any], precisions: list[str]
) -> list[str]:
    rows = []
    for name in sp["images"]:
        fs = held["per_field"][name] if name == "heldout_big" else reals[name]["finders"]
        cells = [
            _f(fs[f"ours-{p}"].get("s_per_mpix"), ".3g")
            + ("" if math.isnan(sp["ratios"][name][p]) else f" ({sp['ratios'][name][p]:.0f}x)")
            for p in precisions
        ]
        rows.append([f"`{name}`", _f(fs["bdsf"].get("s_per_mpix"), ".3g"), *cells])
    return _md(
        ["image", "PyBDSF s/Mpix", *(f"ours {p} s/Mpix (PyBDSF ÷ ours)" for p in precisions)],
        rows,
    )


def report(result: dict[str, Any], precisions: list[str]) -> str:
    held, reals = result["heldout"], result["real"]
    main = "fp32" if "fp32" in precisions else precisions[0]
    keys = finder_keys(precisions)
    m = result["machine"]
    model = result["model"]
    versions = ", ".join(f"{k} {v}" for k, v in result["peer_versions"].items())
    origins = [e["peers"] for e in [*held["per_field"].values(), *reals.values()]]
    cached = origins.count("cached")
    lines = [
        f"**Held-out simulated fields** ({len(held['fields'])} SDC1-like 1000 h fields of "
        f"512², pooled: {held['n_truth']} true sources; match radius 1 x BMAJ = "
        f'{held["radius_arcsec"]:g}"). Flux '
        f"error is found / true - 1 over matched sources with true peak S/N ≥ "
        f"{FLUX_SNR_MIN:g}; the PA error is over matched true sources with observed maj/min ≥ "
        f"{PA_ELONGATION:g} and S/N ≥ {PA_SNR_MIN:g} (where an angle is measurable); s/Mpix "
        f"on the {BIG_SIZE}² field of the same sky.",
        "",
        *heldout_table(held, keys),
        "",
        f"**Real and third-party images** (`../shared/data/real`). Only `{TRUTH_IMAGE}` has a "
        f"truth catalogue; elsewhere F1 is agreement with PyBDSF's catalogue (vs PyBDSF), not "
        "accuracy. Each finder's cell: sources found (F1 vs the reference, both catalogues cut "
        f"to the image footprint). Ours at {main}.",
        "",
        *real_table(reals, main),
        "",
        "**Speed on images of ≥ 1000² pixels** (finder wall time per Mpix; ours after a "
        f"warm-up run, median of {result['repeats']}; PyBDSF as timed inside run_peers.py).",
        "",
        *speed_table(held, reals, result["speed"], precisions),
        "",
        "**Targets**",
        "",
        *_md(
            ["target", "measured", "result"],
            [[t["target"], t["measured"], t["result"]] for t in result["targets"]],
        ),
        "",
        f"Made by `{result['command']}` on {result['date']}: {m['nproc']} cores "
        f"({m['cpu']}), model {model['id']} {model['version']} (fp32 sha256 "
        f"{model['sha256'].get('fp32', '?')[:12]}…) with {model['onnxruntime_threads']} "
        f"ONNX Runtime thread(s); peers on 1 core each ({versions or 'versions unknown'})"
        + (
            f"; the peers' results for {cached} of {len(origins)} images are from an earlier "
            "run of this script (cached by image sha256)."
            if cached
            else "."
        ),
    ]
    return "\n".join(lines)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "build" / "science",
        help="work folder: held-out fields and the peers' cached catalogues",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-science.json"))
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="extra model folder: its radio-detector is used instead of the shipped one",
    )
    parser.add_argument("--precisions", default="fp32,fp16,int8")
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
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.card:
        card_text(args.card)  # fail now, not after the peers' minutes
    warnings.simplefilter("ignore")  # FITS header fix-ups, WCS notes
    started = time.perf_counter()

    ours = Ours(args.models_dir, args.threads, args.repeats)
    scorer = Scorer()
    result: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": ours.describe(precisions),
        "precisions": precisions,
        "repeats": args.repeats,
        "match_radius": "1 x BMAJ, footprint-cut",
        "peer_versions": {} if args.skip_peers else peer_versions(args.peers_python),
    }
    result["heldout"] = heldout(ours, scorer, precisions, args)
    result["real"] = real(ours, scorer, precisions, args)
    result["speed"] = speed(result["heldout"], result["real"], precisions)
    result["targets"] = targets(result["heldout"], result["real"], result["speed"], precisions)
    result["wall_s"] = time.perf_counter() - started

    text = report(result, precisions)
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
