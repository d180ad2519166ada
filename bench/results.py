"""Result writers and the PNG preview: time per job for 1000 and 10000 sources, before and
after the writers were vectorised and the preview moved off the job's path.

For each image side (512² and 2048² float32 FITS files with a TAN WCS and a beam) and each
source count, a standard catalogue of random sources (some sizes and positions blank) is
written as a worker writes it: VOTable, CSV, JSON, DS9 regions, the preview and the
provenance (output hashes and PROV-JSON). "after" is the code in this tree: the worker writes
the preview's plan, and the PNG is drawn on the first request by ``draw_from_plan`` (timed
as the service runs it: read the input image, the catalogue JSON, draw, encode, write).
"before" is the code of the revision given by ``--before`` (``git show REV:...`` loaded as
modules), where the worker drew the PNG with matplotlib at the end of each job.

Each figure is the best of ``--repeat`` runs (the median is also kept), as the machine may be
shared, and so is the process's CPU time (steadier when other processes share the cores).
Targets: preview <= 50 ms when drawn; each of DS9, CSV and JSON <= 10 ms per 1000 sources.
Each is printed with PASS or MISS, on wall and on CPU time.

Usage: python bench/results.py [--sides 512 2048] [--sources 1000 10000] [--repeat 5]
       [--before 7d20265] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astro_otf.imaging.facts import image_facts
from astro_otf.imaging.fits import load_image
from astro_otf.results.catalogue import Catalogue, conform
from astro_otf.results.entities import file_entity
from astro_otf.results.formats import write_csv, write_ds9, write_json
from astro_otf.results.preview import draw_from_plan, write_plan
from astro_otf.results.provenance import ProvenanceRecord, write_provenance
from astro_otf.results.votable import write_catalogue

ROOT = Path(__file__).resolve().parents[1]
PREVIEW_TARGET_S = 0.050
WRITER_TARGET_S_PER_1000 = 0.010


def make_image(path: Path, side: int, rng: np.random.Generator) -> None:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [side / 2 + 0.5, side / 2 + 0.5]
    wcs.wcs.cdelt = [-1.5 / 3600, 1.5 / 3600]
    header = wcs.to_header()
    header["BMAJ"] = header["BMIN"] = 6.0 / 3600
    header["BPA"] = 0.0
    header["BUNIT"] = "Jy/beam"
    data = rng.normal(0.0, 1e-4, size=(side, side)).astype(np.float32)
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)


def make_catalogue(image_path: Path, n: int, rng: np.random.Generator) -> Catalogue:
    image = load_image(image_path)
    ny, nx = image.shape
    x, y = rng.uniform(0, nx - 1, n), rng.uniform(0, ny - 1, n)
    sky = image.wcs.pixel_to_world(x, y).icrs
    maj = rng.uniform(6.0, 30.0, n)
    minor = maj * rng.uniform(0.3, 1.0, n)
    pa = rng.uniform(0.0, 180.0, n)
    blank = rng.random(n) < 0.1  # unresolved: no size
    maj[blank] = minor[blank] = pa[blank] = np.nan
    flux = rng.lognormal(-7.0, 1.0, n)
    table = Table(
        {
            "ra": sky.ra.deg,
            "dec": sky.dec.deg,
            "ra_err": rng.uniform(0.1, 2.0, n),
            "dec_err": rng.uniform(0.1, 2.0, n),
            "peak_flux": flux,
            "peak_flux_err": flux * 0.05,
            "int_flux": flux * 1.3,
            "int_flux_err": flux * 0.07,
            "maj": maj,
            "min": minor,
            "pa": pa,
            "score": rng.uniform(5.0, 100.0, n),
            "x": x,
            "y": y,
        }
    )
    facts = image_facts(image, full_shape=image.shape, rms=1e-4, rms_unit="Jy/beam")
    return Catalogue(conform(table, peak_unit="Jy/beam", int_unit="Jy"), facts=facts)


def load_old(rev: str, module: str) -> ModuleType | None:
    """``src/astro_otf/results/<module>.py`` at ``rev`` as a module, or None."""
    try:
        text = subprocess.run(
            ["git", "show", f"{rev}:src/astro_otf/results/{module}.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    folder = Path(tempfile.mkdtemp(prefix="bench-results-old-"))
    path = folder / f"old_{module}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"old_{module}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Wall and CPU time of ``fn`` (best and median of ``repeat`` runs). On a shared machine
    the CPU time of this (single-threaded) process is the steadier of the two."""
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return {
        "best_s": min(walls),
        "median_s": statistics.median(walls),
        "cpu_best_s": min(cpus),
        "runs": len(walls),
    }


def provenance(folder: Path, names: list[str], image_path: Path) -> None:
    outputs = [file_entity("result", folder / name, "application/octet-stream") for name in names]
    now = datetime.now(UTC)
    record = ProvenanceRecord(
        job_id="bench",
        owner=None,
        model_id="bench",
        model_version="1",
        started=now,
        ended=now,
        batch_id="b",
        batch_jobs=1,
        host="h",
        pid=1,
        service_name="astro-otf",
        service_version="bench",
        parameters={"thresh": "5"},
        inputs=[file_entity("image", image_path, "application/fits")],
        model_files=[],
        software={},
        outputs=outputs,
    )
    write_provenance(record, folder / "provenance.json")


def run_case(
    side: int, n: int, repeat: int, old: dict[str, ModuleType | None], work: Path
) -> dict[str, Any]:
    rng = np.random.default_rng(side * 100003 + n)
    case = work / f"{side}-{n}"
    (case / "after").mkdir(parents=True)
    (case / "before").mkdir()
    image_path = case / "image.fits"
    make_image(image_path, side, rng)
    catalogue = make_catalogue(image_path, n, rng)
    image = load_image(image_path)
    after, before = case / "after", case / "before"
    infos = {"job_id": "bench"}
    out: dict[str, Any] = {"side": side, "sources": n, "after": {}, "before": {}}
    a = out["after"]
    # Each run writes a new file, as a job does in its staging folder (replacing a file
    # costs an unlink on top, which is the file system's, not the writer's).
    a["votable"] = timed(
        lambda: write_catalogue(
            catalogue.table, fresh(after, "catalogue.xml"), infos=infos, facts=catalogue.facts
        ),
        repeat,
    )
    a["csv"] = timed(lambda: write_csv(catalogue, fresh(after, "catalogue.csv")), repeat)
    a["json"] = timed(
        lambda: write_json(catalogue, fresh(after, "catalogue.json"), infos=infos), repeat
    )
    a["ds9"] = timed(lambda: write_ds9(catalogue, fresh(after, "catalogue.reg")), repeat)
    a["preview_plan (worker)"] = timed(
        lambda: write_plan(image, fresh(after, "preview.plan.json")), repeat
    )
    # the files a job leaves, for the preview and the comparisons below
    write_catalogue(catalogue.table, after / "catalogue.xml", infos=infos, facts=catalogue.facts)
    write_csv(catalogue, after / "catalogue.csv")
    write_json(catalogue, after / "catalogue.json", infos=infos)
    write_ds9(catalogue, after / "catalogue.reg")
    write_plan(image, after / "preview.plan.json")
    pngs = iter(range(1_000_000))

    def draw() -> None:
        draw_from_plan(after / "preview.plan.json", image_path, after / f"{next(pngs)}.png")

    a["preview (drawn on request)"] = timed(draw, repeat)
    names = ["catalogue.xml", "catalogue.csv", "catalogue.json", "catalogue.reg"]
    a["provenance"] = timed(lambda: provenance(after, names, image_path), repeat)
    out["preview_png_bytes"] = (after / "0.png").stat().st_size

    b = out["before"]
    formats, preview = old["formats"], old["preview"]
    slow_repeat = max(1, min(repeat, 2 if n > 2000 else repeat))
    if formats is not None:
        b["csv"] = timed(lambda: formats.write_csv(catalogue, fresh(before, "c.csv")), repeat)
        b["json"] = timed(
            lambda: formats.write_json(catalogue, fresh(before, "c.json"), infos=infos), repeat
        )
        b["ds9"] = timed(lambda: formats.write_ds9(catalogue, fresh(before, "c.reg")), slow_repeat)
        formats.write_csv(catalogue, before / "catalogue.csv")
        formats.write_json(catalogue, before / "catalogue.json", infos=infos)
        formats.write_ds9(catalogue, before / "catalogue.reg")
        for name in ("catalogue.csv", "catalogue.json", "catalogue.reg"):
            same = (before / name).read_bytes() == (after / name).read_bytes()
            out.setdefault("same_bytes_as_before", {})[name] = same
    if preview is not None:
        b["preview (in the worker)"] = timed(
            lambda: preview.write_preview(catalogue, image, fresh(before, "preview.png")),
            slow_repeat,
        )
    return out


_FRESH = iter(range(1_000_000_000))


def fresh(folder: Path, name: str) -> Path:
    """A file name in ``folder`` not used before."""
    return folder / f"{next(_FRESH)}-{name}"


def verdicts(case: dict[str, Any], clock: str) -> list[tuple[str, float, float, bool]]:
    """(what, figure, target, passed) for each target of one case, on ``clock`` ("best_s",
    wall, or "cpu_best_s")."""
    n = case["sources"]
    a = case["after"]
    rows = []
    best = a["preview (drawn on request)"][clock]
    rows.append(("preview drawn", best, PREVIEW_TARGET_S, best <= PREVIEW_TARGET_S))
    for name in ("ds9", "csv", "json"):
        per_1000 = a[name][clock] * 1000 / n
        passed = per_1000 <= WRITER_TARGET_S_PER_1000
        rows.append((f"{name} per 1000 sources", per_1000, WRITER_TARGET_S_PER_1000, passed))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--sources", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--before", default="7d20265", help="git revision of 'before'")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    old = {m: load_old(args.before, m) for m in ("formats", "preview")}
    if old["formats"] is None:
        print(f"(no 'before' figures: revision {args.before} not found)", file=sys.stderr)
    cases = []
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        for side in args.sides:
            for n in args.sources:
                case = run_case(side, n, args.repeat, old, Path(tmp))
                cases.append(case)
                print(f"\n{side}x{side} image, {n} sources (best of {args.repeat}; ms)")
                names = sorted(set(case["after"]) | set(case["before"]))
                print(f"  {'':<28} {'before wall':>12} {'cpu':>8} {'after wall':>11} {'cpu':>8}")
                for name in names:
                    row = f"  {name:<28}"
                    for side_ in ("before", "after"):
                        got = case[side_].get(name)
                        row += (
                            f" {got['best_s'] * 1e3:12.2f} {got['cpu_best_s'] * 1e3:8.2f}"
                            if got
                            else " " * 22
                        )
                    print(row)
                if "same_bytes_as_before" in case:
                    print(f"  same bytes as before: {case['same_bytes_as_before']}")
                wall, cpu = verdicts(case, "best_s"), verdicts(case, "cpu_best_s")
                for (what, figure, target, passed), (_, cpu_figure, _, cpu_passed) in zip(
                    wall, cpu, strict=True
                ):
                    print(
                        f"  target {what} <= {target * 1e3:.0f} ms: wall {figure * 1e3:.2f} ms "
                        f"{'PASS' if passed else 'MISS'}, cpu {cpu_figure * 1e3:.2f} ms "
                        f"{'PASS' if cpu_passed else 'MISS'}"
                    )
                case["targets"] = [
                    {
                        "what": w,
                        "target_s": t,
                        "wall_s": f,
                        "wall_pass": p,
                        "cpu_s": cf,
                        "cpu_pass": cp,
                    }
                    for (w, f, t, p), (_, cf, _, cp) in zip(wall, cpu, strict=True)
                ]
    document = {
        "benchmark": "results",
        "before": args.before,
        "repeat": args.repeat,
        "python": sys.version.split()[0],
        "cases": cases,
        "sha256_of_this_script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
    }
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2))
        print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
