"""Batched inference end to end, against its limit and against the naive way.

- service: N jobs of 512x512 images submitted at once over HTTP (MODEL, default matched-filter) to a
  real server (SQLite, local executor), from the first upload to the last COMPLETED: jobs/s
  and tiles/s end to end.
- raw (the limit): the same tiles through one bare ONNX Runtime session in this process, at
  its best batch size, forward passes only.
- naive (as caesar-rest and PIC run jobs): one new process per job that loads the model,
  runs it and writes the same result files as the service; timed on a sample of the jobs and
  given as jobs/s.

Prints service/raw (tiles/s) and service/naive (jobs/s). Targets at N=200: service/raw >= 0.95
and service/naive >= 20.

Usage: python bench/batching.py --jobs N [--naive-sample K] [--json OUT] [--no-preview]
           [--model radio-detector]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import start_server, wait_done

from astro_otf.data import SAMPLE_IMAGE
from astro_otf.imaging.normalise import parse_chain
from astro_otf.imaging.tiling import read_tile, tile_grid
from astro_otf.models.manifest import SHIPPED_MODELS, load_manifests
from astro_otf.models.onnx_detector import FORWARD_MEMORY_MB
from astro_otf.models.onnx_runtime import SessionCache, run

SIZE = 512
NAIVE_JOB = """
import logging, os, socket, sys, tempfile
from datetime import UTC, datetime
from pathlib import Path
from astro_otf.domain.parameters import validate
from astro_otf.models.base import AppRequest
from astro_otf.models.registry import build_registry
from astro_otf.results.products import JobContext, write_products
app = build_registry().get(sys.argv[3])
v = validate({"preview": sys.argv[2]}, ["image"], app.parameters, precisions=app.precisions,
             model_id=app.model_id)
out = Path(tempfile.mkdtemp())
started = datetime.now(UTC)
result = app.run(AppRequest("naive", Path(sys.argv[1]), v.values, None, out,
                            logging.getLogger("naive")))
write_products(result.catalogue, result.image, out, JobContext(
    "naive", None, app.model_id, app.version, "naive", 1, socket.gethostname(), os.getpid(),
    started, v.values, Path(sys.argv[1])))
"""


def make_images(folder: Path, n: int) -> list[Path]:
    """N distinct 512x512 fields: Gaussian noise and 40 point sources, with the sample
    image's header (and so its WCS)."""
    header = fits.getheader(SAMPLE_IMAGE)
    rng = np.random.default_rng(42)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    paths = []
    for i in range(n):
        img = rng.normal(0, 1e-3, (SIZE, SIZE)).astype(np.float32)
        for x, y, f in zip(
            rng.uniform(8, SIZE - 8, 40),
            rng.uniform(8, SIZE - 8, 40),
            rng.uniform(5e-3, 5e-2, 40),
            strict=True,
        ):
            img += (f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))).astype(np.float32)
        path = folder / f"field{i:04d}.fits"
        fits.writeto(path, img, header)
        paths.append(path)
    return paths


#: Job fields of every job the benchmark runs (``--no-preview`` adds PREVIEW=false).
FIELDS = {"MODEL": "matched-filter", "PHASE": "RUN"}


def service(url: str, images: list[Path]) -> float:
    def submit(path: Path) -> str:
        with httpx.Client(base_url=url, timeout=300) as c, path.open("rb") as f:
            r = c.post(
                "/jobs",
                data=FIELDS,
                files={"IMAGE": (path.name, f)},
            )
            if r.status_code != 303:
                raise SystemExit(f"submission refused: {r.status_code} {r.text}")
            return r.headers["location"].rsplit("/", 1)[-1]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, images))
    with httpx.Client(base_url=url, timeout=300) as c:
        docs = [wait_done(c, job_id) for job_id in ids]
    wall = time.perf_counter() - t0
    bad = [d["errorSummary"] for d in docs if d["phase"] != "COMPLETED"]
    if bad:
        raise SystemExit(f"{len(bad)} job(s) failed: {bad[:3]}")
    batches = {d["jobInfo"]["batch_id"] for d in docs}
    print(f"service: {len(images)} jobs in {wall:.2f} s, {len(batches)} batch(es)")
    return wall


def raw(images: list[Path]) -> tuple[float, int, int]:
    model = next(m for m in load_manifests(SHIPPED_MODELS) if m.model_id == FIELDS["MODEL"])
    manifest = model.manifest
    chain = parse_chain(manifest.normalisation)
    tiles = []
    for path in images:
        data = fits.getdata(path)
        fitted = chain.fit(data)
        for spec in tile_grid(data.shape, manifest.tiling.tile, manifest.tiling.overlap):
            tiles.append(fitted.apply(read_tile(data, spec, fill=np.nan)))
    stack = np.stack(tiles)[:, None]
    session = SessionCache(1024, ["cpu"], 0).get(model, "fp32")
    best = (float("inf"), 0)
    # the batch sizes the app could use: at most FORWARD_MEMORY_MB worth of tiles per pass
    cap = int(FORWARD_MEMORY_MB // manifest.tile_memory_mb) if manifest.tile_memory_mb else 128
    for size in sorted({max(1, min(s, cap)) for s in (8, 16, 32, 64, 128)}):
        run(session, stack[:size], input_name=manifest.input.name)  # warm
        t0 = time.perf_counter()
        for start in range(0, len(stack), size):
            run(session, stack[start : start + size], input_name=manifest.input.name)
        best = min(best, (time.perf_counter() - t0, size))
    print(f"raw: {len(stack)} tiles in {best[0]:.2f} s at batch size {best[1]}")
    return best[0], len(stack), best[1]


def naive(images: list[Path]) -> float:
    t0 = time.perf_counter()
    for path in images:
        subprocess.run(
            [
                sys.executable,
                "-c",
                NAIVE_JOB,
                str(path),
                FIELDS.get("PREVIEW", "true"),
                FIELDS["MODEL"],
            ],
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    wall = time.perf_counter() - t0
    print(f"naive: {len(images)} jobs, one process each, in {wall:.2f} s")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--naive-sample", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("bench-batching.json"))
    parser.add_argument(
        "--preview",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw each job's PNG preview (the service default), in the service and naive runs",
    )
    parser.add_argument("--model", default="matched-filter", help="the ONNX model the jobs run")
    args = parser.parse_args()
    FIELDS["MODEL"] = args.model
    if not args.preview:
        FIELDS["PREVIEW"] = "false"
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp), args.jobs)
        proc, url = start_server(Path(tmp) / "data")
        try:
            with httpx.Client(base_url=url, timeout=300) as c:  # warm the workers
                wait_done(c, _one(c, images[0]))
            service_s = service(url, images)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        raw_s, n_tiles, best_batch = raw(images)
        naive_s = naive(images[: args.naive_sample])
    service_jobs, naive_jobs = args.jobs / service_s, args.naive_sample / naive_s
    result = {
        "jobs": args.jobs,
        "model": args.model,
        "preview": args.preview,
        "image": f"{SIZE}x{SIZE}",
        "tiles": n_tiles,
        "service": {
            "wall_s": service_s,
            "jobs_per_s": service_jobs,
            "tiles_per_s": n_tiles / service_s,
        },
        "raw": {"wall_s": raw_s, "tiles_per_s": n_tiles / raw_s, "batch_size": best_batch},
        "naive": {"sample_jobs": args.naive_sample, "wall_s": naive_s, "jobs_per_s": naive_jobs},
        "service_over_raw": (n_tiles / service_s) / (n_tiles / raw_s),
        "service_over_naive": service_jobs / naive_jobs,
        "targets": {"service_over_raw": 0.95, "service_over_naive": 20},
    }
    print(
        f"service {service_jobs:.1f} jobs/s, {n_tiles / service_s:.0f} tiles/s | raw "
        f"{n_tiles / raw_s:.0f} tiles/s | naive {naive_jobs:.2f} jobs/s"
    )
    print(
        f"service/raw = {result['service_over_raw']:.3f} (target 0.95); "
        f"service/naive = {result['service_over_naive']:.1f}x (target 20x)"
    )
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


def _one(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as f:
        r = client.post(
            "/jobs",
            data=FIELDS,
            files={"IMAGE": (path.name, f)},
        )
    return r.headers["location"].rsplit("/", 1)[-1]


if __name__ == "__main__":
    main()
