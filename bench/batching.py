"""Batched inference end to end, against its limit and against the naive way.

- service: N jobs of 512x512 images submitted at once over HTTP (MODEL, default matched-filter) to a
  real server (SQLite, local executor), from the first upload to the last COMPLETED: jobs/s
  and tiles/s end to end.
- raw (the limit): the same tiles through one bare ONNX Runtime session in this process, at
  its best batch size, forward passes only.
- naive (as caesar-rest and PIC run jobs): one new process per job that loads the model,
  runs it and writes the same result files as the service; timed on a sample of the jobs and
  given as jobs/s.

Then, on the same server (issue 13, "use the whole machine"):

- burst: B 1000x1000 images submitted at once: image-Mpix/s end to end, and whether every
  worker stayed busy until the work ran out (each batch's worker pid and interval, from the
  jobs' jobInfo and times: a worker's idle seconds between the burst's first start and its
  last end, target at most 10 % of that span; a burst queued whole into one worker's
  batch leaves the other idle for most of it);
- lone job: one 512x512 job on an idle service, POST to COMPLETED as the client sees it,
  against the job's own run in its worker (jobInfo run_seconds) + 150 ms;
- own end: for every job of the service run and the burst, the delay between the "done in"
  line of its worker log (its own end) and its recorded endTime (target: median <= 50 ms).

Prints each figure with PASS or MISS against its target: service/raw >= 0.9,
service/naive >= 20x, lone job <= run + 150 ms, own-end delay <= 50 ms, workers busy.

Usage: python bench/batching.py --jobs N [--naive-sample K] [--json OUT] [--no-preview]
           [--model radio-detector] [--burst B] [--lone L]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import parse_time, start_server, wait_done

from astro_otf.data import SAMPLE_IMAGE
from astro_otf.imaging.tiling import read_tile
from astro_otf.models.onnx_detector import FORWARD_MEMORY_MB
from astro_otf.models.onnx_runtime import SessionCache, run

SIZE = 512
BURST_SIZE = 1000
#: The targets this benchmark checks.
TARGETS = {
    "service_over_raw": 0.9,
    "service_over_naive": 20.0,
    "lone_overhead_s": 0.150,
    "own_end_delay_median_s": 0.050,
    "burst_idle_fraction": 0.10,
}
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


def make_images(folder: Path, n: int, size: int = SIZE, prefix: str = "field") -> list[Path]:
    """N distinct size x size fields: Gaussian noise and 40 point sources per 512^2, with the
    sample image's header (and so its WCS)."""
    header = fits.getheader(SAMPLE_IMAGE)
    rng = np.random.default_rng(42)
    yy, xx = np.mgrid[0:size, 0:size]
    sources = max(1, round(40 * size * size / SIZE**2))
    paths = []
    for i in range(n):
        img = rng.normal(0, 1e-3, (size, size)).astype(np.float32)
        for x, y, f in zip(
            rng.uniform(8, size - 8, sources),
            rng.uniform(8, size - 8, sources),
            rng.uniform(5e-3, 5e-2, sources),
            strict=True,
        ):
            x0, y0 = int(x) - 12, int(y) - 12  # a 25x25 stamp is enough for a 2 px sigma
            sl = np.s_[max(0, y0) : y0 + 25, max(0, x0) : x0 + 25]
            img[sl] += (f * np.exp(-((xx[sl] - x) ** 2 + (yy[sl] - y) ** 2) / 8.0)).astype(
                np.float32
            )
        path = folder / f"{prefix}{i:04d}.fits"
        fits.writeto(path, img, header)
        paths.append(path)
    return paths


#: Job fields of every job the benchmark runs (``--no-preview`` adds PREVIEW=false).
# NOCACHE: the same image again is the point of this benchmark, not a repeat to skip
FIELDS = {"MODEL": "matched-filter", "PHASE": "RUN", "NOCACHE": "true"}


def service(url: str, images: list[Path]) -> tuple[float, list[dict[str, Any]]]:
    """Submit every image at once (8 uploads at a time); the wall time from the first upload
    to the last COMPLETED, and the jobs' final documents."""

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
    return wall, docs


def _log_time(text: str) -> datetime:
    """A worker log line's asctime (local time, milliseconds) as an aware datetime."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").astimezone()


def own_end_delays(data_dir: Path, docs: list[dict[str, Any]]) -> list[float]:
    """Per job: its recorded endTime minus the time of its worker log's last "done in"."""
    delays = []
    for doc in docs:
        log = data_dir / "jobs" / doc["jobId"] / "logs" / "job.log"
        done = [line for line in log.read_text().splitlines() if ": done in " in line]
        if not done or not doc.get("endTime"):
            continue
        ended = _log_time(done[-1][:23])
        delays.append((parse_time(doc["endTime"]) - ended).total_seconds())
    return delays


def worker_use(docs: list[dict[str, Any]], expected: int = 2) -> dict[str, Any]:
    """Which worker ran each batch and when: per worker pid, its idle seconds between the
    first job's start and the last job's end."""
    batches: dict[str, dict[str, Any]] = {}
    for doc in docs:
        info = doc["jobInfo"]
        b = batches.setdefault(
            info["batch_id"],
            {"pid": info["worker"]["pid"], "jobs": 0, "start": None, "end": None},
        )
        start, end = parse_time(doc["startTime"]), parse_time(doc["endTime"])
        b["jobs"] += 1
        b["start"] = start if b["start"] is None else min(b["start"], start)
        b["end"] = end if b["end"] is None else max(b["end"], end)
    t0 = min(b["start"] for b in batches.values())
    last_end = max(parse_time(d["endTime"]) for d in docs)
    span = (last_end - t0).total_seconds()
    workers: dict[int, dict[str, Any]] = {}
    for b in sorted(batches.values(), key=lambda b: b["start"]):
        w = workers.setdefault(b["pid"], {"batches": [], "busy_s": 0.0})
        w["batches"].append(
            {
                "jobs": b["jobs"],
                "start_s": round((b["start"] - t0).total_seconds(), 3),
                "end_s": round((b["end"] - t0).total_seconds(), 3),
            }
        )
    for w in workers.values():
        busy, until = 0.0, 0.0
        for b in w["batches"]:  # union of this worker's batch intervals
            lo, hi = max(b["start_s"], until), min(b["end_s"], span)
            if hi > lo:
                busy += hi - lo
            until = max(until, b["end_s"])
        w["busy_s"] = round(busy, 3)
        w["idle_s"] = round(max(0.0, span - busy), 3)
    worst = max((w["idle_s"] for w in workers.values()), default=0.0)
    if len(workers) < expected:  # a worker that ran none of it was idle all along
        worst = span
    return {
        "span_s": round(span, 3),
        "workers": {str(pid): w for pid, w in workers.items()},
        "worst_idle_fraction": worst / span if span > 0 else 0.0,
    }


def lone_jobs(url: str, image: Path, n: int) -> list[dict[str, float]]:
    """One job at a time on an idle service: POST to COMPLETED as the client sees it."""
    out = []
    with httpx.Client(base_url=url, timeout=300) as c:
        for _ in range(n):
            time.sleep(0.5)  # let the service settle: idle workers, empty queue
            t0 = time.perf_counter()
            job_id = _one(c, image)
            doc = wait_done(c, job_id)
            e2e = time.perf_counter() - t0
            assert doc["phase"] == "COMPLETED", doc["errorSummary"]
            run_s = float(doc["jobInfo"]["run_seconds"])
            queued = (
                parse_time(doc["startTime"]) - parse_time(doc["creationTime"])
            ).total_seconds()
            out.append(
                {
                    "e2e_s": e2e,
                    "run_s": run_s,
                    "overhead_s": e2e - run_s,
                    "start_after_creation_s": queued,
                }
            )
    return out


def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def raw(images: list[Path]) -> tuple[float, int, int]:
    """The limit: the very tiles a worker runs for these images (the app's own plan: its
    block-averaging, normalisation and tile sizes, from its ``prepare`` stage), through one
    bare ONNX Runtime session, forward passes only."""
    import logging

    from astro_otf.models.base import AppRequest
    from astro_otf.models.onnx_detector import OnnxDetector
    from astro_otf.models.registry import build_registry

    app = build_registry().get(FIELDS["MODEL"])
    assert isinstance(app, OnnxDetector), f"{FIELDS['MODEL']} is not an ONNX model"
    model = app.model
    manifest = model.manifest
    tiles = []
    quiet = logging.getLogger("bench.raw")
    with tempfile.TemporaryDirectory() as staging:
        for path in images:
            request = AppRequest("raw", path, {}, None, Path(staging), quiet)
            prepared = app.prepare(request)
            for spec in prepared.specs:
                tile = read_tile(prepared.pixels, spec, fill=np.nan)
                tiles.append(prepared.chain.apply(tile, (spec.y0, spec.x0)))
    shapes = sorted({t.shape for t in tiles})
    if len(shapes) > 1:
        raise SystemExit(f"the images give tiles of several shapes: {shapes}")
    stack = np.stack(tiles)[:, None]
    session = SessionCache(1024, ["cpu"], 0).get(model, "fp32")
    best = (float("inf"), 0)
    # the batch sizes the app could use: at most FORWARD_MEMORY_MB worth of tiles per pass
    # (the app scales a tile's memory with its area)
    area = shapes[0][0] * shapes[0][1] / manifest.tiling.tile**2
    mb = manifest.tile_memory_mb * area if manifest.tile_memory_mb else None
    cap = int(FORWARD_MEMORY_MB // mb) if mb else 128
    for size in sorted({max(1, min(s, cap)) for s in (8, 16, 32, 64, 128)}):
        run(session, stack[:size], input_name=manifest.input.name)  # warm
        t0 = time.perf_counter()
        for start in range(0, len(stack), size):
            run(session, stack[start : start + size], input_name=manifest.input.name)
        best = min(best, (time.perf_counter() - t0, size))
    print(
        f"raw: {len(stack)} tiles of {shapes[0][0]}x{shapes[0][1]} in {best[0]:.2f} s at "
        f"batch size {best[1]}"
    )
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
    parser.add_argument("--burst", type=int, default=32, help="1000x1000 images at once (0: skip)")
    parser.add_argument("--lone", type=int, default=5, help="lone jobs, one at a time (0: skip)")
    args = parser.parse_args()
    FIELDS["MODEL"] = args.model
    if not args.preview:
        FIELDS["PREVIEW"] = "false"
    burst: dict[str, Any] = {}
    lone: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp), args.jobs)
        big = make_images(Path(tmp), args.burst, BURST_SIZE, "big")
        data_dir = Path(tmp) / "data"
        proc, url = start_server(data_dir)
        try:
            with httpx.Client(base_url=url, timeout=300) as c:  # warm the workers
                wait_done(c, _one(c, images[0]))
            service_s, docs = service(url, images)
            delays = own_end_delays(data_dir, docs)
            if args.lone:
                lone = lone_jobs(url, images[0], args.lone)
            if args.burst:
                burst_s, burst_docs = service(url, big)
                delays += own_end_delays(data_dir, burst_docs)
                burst = {
                    "images": args.burst,
                    "image": f"{BURST_SIZE}x{BURST_SIZE}",
                    "wall_s": burst_s,
                    "image_mpix_per_s": args.burst * BURST_SIZE**2 / 1e6 / burst_s,
                    **worker_use(burst_docs),
                }
            service_use = worker_use(docs)
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
        "service_workers": service_use,
        "burst": burst,
        "lone": lone,
        "own_end_delay_s": {
            "jobs": len(delays),
            "median": statistics.median(delays) if delays else None,
            "p90": sorted(delays)[int(0.9 * (len(delays) - 1))] if delays else None,
            "max": max(delays) if delays else None,
        },
        "targets": TARGETS,
    }
    print(
        f"service {service_jobs:.1f} jobs/s, {n_tiles / service_s:.0f} tiles/s | raw "
        f"{n_tiles / raw_s:.0f} tiles/s | naive {naive_jobs:.2f} jobs/s"
    )
    verdicts = {}
    ratio = result["service_over_raw"]
    verdicts["service_over_raw"] = ratio >= TARGETS["service_over_raw"]
    print(f"service/raw = {ratio:.3f} (target >= 0.9): {mark(verdicts['service_over_raw'])}")
    ratio = result["service_over_naive"]
    verdicts["service_over_naive"] = ratio >= TARGETS["service_over_naive"]
    print(f"service/naive = {ratio:.1f}x (target >= 20x): {mark(verdicts['service_over_naive'])}")
    if lone:
        over = statistics.median(x["overhead_s"] for x in lone)
        verdicts["lone"] = over <= TARGETS["lone_overhead_s"]
        e2e = statistics.median(x["e2e_s"] for x in lone)
        run_s = statistics.median(x["run_s"] for x in lone)
        print(
            f"lone 512^2 job: POST->COMPLETED median {e2e * 1000:.0f} ms, "
            f"its run in the worker {run_s * 1000:.0f} ms, "
            f"overhead {over * 1000:.0f} ms (target <= 150 ms): {mark(verdicts['lone'])}"
        )
    if delays:
        med = statistics.median(delays)
        verdicts["own_end"] = med <= TARGETS["own_end_delay_median_s"]
        print(
            f"own end -> endTime: median {med * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms "
            f"over {len(delays)} jobs (target median <= 50 ms): {mark(verdicts['own_end'])}"
        )
    if burst:
        idle = burst["worst_idle_fraction"]
        verdicts["burst_busy"] = idle <= TARGETS["burst_idle_fraction"]
        per = ", ".join(
            f"pid {pid}: {len(w['batches'])} batch(es), idle {w['idle_s']:.1f} s"
            for pid, w in burst["workers"].items()
        )
        print(
            f"burst {args.burst} x {BURST_SIZE}^2: {burst['image_mpix_per_s']:.2f} image-Mpix/s, "
            f"{burst['wall_s']:.1f} s; {len(burst['workers'])} worker(s) ({per}); worst idle "
            f"{idle:.0%} of {burst['span_s']:.1f} s (target <= 10%): "
            f"{mark(verdicts['burst_busy'])}"
        )
    result["verdicts"] = verdicts
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
