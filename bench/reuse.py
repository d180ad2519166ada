"""Work not repeated, and news not polled for (issue 14), measured on a running service.

- cache: a job, then the identical job again: seconds from POST to COMPLETED for each, with
  the trained detector on a 4096^2 field (limit: the second well under a second, and at
  least 20x faster than the first);
- uploads: three thresholds on one image, sent three times as multipart uploads vs uploaded
  once (POST /uploads) and named three times (IMAGE=upload:<id>): seconds until the three
  jobs are QUEUED (the client's side of the work; limit: the named jobs cost under a third
  of the uploads);
- events: how late a client learns that a job ended, following GET /jobs/events vs polling
  the job once a second (what clients did before): median and worst lateness over N jobs
  (limit: the stream's median under 50 ms).

    PYTHONPATH=. python bench/reuse.py [--size 4096] [--jobs 20] [--json bench-reuse.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import parse_time, start_server, wait_done

from astro_otf.data import SAMPLE_IMAGE

CACHE_LIMIT_S = 1.0
CACHE_RATIO = 20.0
UPLOAD_RATIO = 1 / 3
EVENT_LIMIT_S = 0.050


def make_field(path: Path, size: int) -> None:
    """A size x size noise field with 200 point sources, with the sample image's WCS."""
    header = fits.getheader(SAMPLE_IMAGE)
    rng = np.random.default_rng(7)
    img = rng.normal(0, 1e-4, (size, size)).astype(np.float32)
    yy, xx = np.mgrid[-6:7, -6:7]
    stamp = np.exp(-(xx**2 + yy**2) / 8.0).astype(np.float32)
    for x, y in rng.integers(16, size - 16, (200, 2)):
        img[y - 6 : y + 7, x - 6 : x + 7] += stamp * rng.uniform(1e-3, 1e-2)
    header["NAXIS1"], header["NAXIS2"] = size, size
    header["CRPIX1"], header["CRPIX2"] = size / 2, size / 2
    fits.writeto(path, img, header, overwrite=True)


def post_job(c: httpx.Client, fields: dict[str, str], image: Path | None = None) -> str:
    if image is None:
        r = c.post("/jobs", data=fields)
    else:
        with image.open("rb") as f:
            r = c.post("/jobs", data=fields, files={"IMAGE": (image.name, f)})
    if r.status_code != 303:
        raise SystemExit(f"submission refused: {r.status_code} {r.text}")
    return r.headers["location"].rsplit("/", 1)[-1]


def cache(c: httpx.Client, image: Path) -> dict[str, float]:
    fields = {"PHASE": "RUN", "MODEL": "radio-detector"}
    t0 = time.perf_counter()
    first = wait_done(c, post_job(c, fields, image))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = wait_done(c, post_job(c, fields, image))
    again_s = time.perf_counter() - t0
    assert first["phase"] == again["phase"] == "COMPLETED", (first, again)
    assert again["jobInfo"].get("cached_from") == first["jobId"], again["jobInfo"]
    print(
        f"cache: first run {first_s:.2f} s ({first['jobInfo'].get('n_sources')} sources), "
        f"identical job {again_s * 1000:.0f} ms from POST to COMPLETED"
    )
    return {"first_s": first_s, "again_s": again_s, "speedup": first_s / again_s}


def uploads(c: httpx.Client, image: Path) -> dict[str, float]:
    thresholds = ("0.4", "0.5", "0.6")

    def queued(job_id: str) -> None:
        phase = c.get(f"/jobs/{job_id}/phase").text
        assert phase in ("QUEUED", "EXECUTING", "COMPLETED"), phase

    t0 = time.perf_counter()
    sent = []
    for t in thresholds:
        sent.append(post_job(c, {"PHASE": "RUN", "THRESHOLD": t, "NOCACHE": "true"}, image))
    sent_s = time.perf_counter() - t0
    for job_id in sent:
        queued(job_id)
    t0 = time.perf_counter()
    with image.open("rb") as f:
        r = c.post("/uploads", files={"file": (image.name, f)})
    if r.status_code not in (200, 201):
        raise SystemExit(f"upload refused: {r.status_code} {r.text}")
    ref = f"upload:{r.json()['upload_id']}"
    upload_s = time.perf_counter() - t0
    named = [
        post_job(c, {"PHASE": "RUN", "THRESHOLD": t, "NOCACHE": "true", "IMAGE": ref})
        for t in thresholds
    ]
    named_s = time.perf_counter() - t0
    for job_id in named:
        queued(job_id)
    for job_id in sent + named:
        wait_done(c, job_id)
    mib = image.stat().st_size / 2**20
    print(
        f"uploads: 3 jobs on a {mib:.0f} MiB image: {sent_s:.2f} s sending it 3 times "
        f"({3 * mib:.0f} MiB sent), {named_s:.2f} s uploading once ({upload_s:.2f} s, "
        f"{mib:.0f} MiB sent) and naming it in 3 jobs ({(named_s - upload_s) * 1000:.0f} ms) "
        f"({named_s / sent_s:.2f}x)"
    )
    return {
        "image_mib": mib,
        "three_uploads_s": sent_s,
        "three_uploads_mib_sent": 3 * mib,
        "one_upload_s": named_s,
        "one_upload_mib_sent": mib,
        "the_upload_s": upload_s,
        "three_named_jobs_s": named_s - upload_s,
    }


def follow(url: str, out: queue.Queue[tuple[float, dict[str, Any]]], stop: threading.Event) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server stops at the end
        _follow(url, out, stop)


def _follow(
    url: str, out: queue.Queue[tuple[float, dict[str, Any]]], stop: threading.Event
) -> None:
    with httpx.stream("GET", f"{url}/jobs/events", timeout=httpx.Timeout(5, read=None)) as r:
        data = None
        for line in r.iter_lines():
            if stop.is_set():
                return
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif not line and data is not None:
                out.put((time.time(), data))
                data = None


def events(c: httpx.Client, url: str, jobs: int) -> dict[str, Any]:
    """Lateness of the news of each job's end: event stream vs polling once a second."""
    seen: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=follow, args=(url, seen, stop), daemon=True).start()
    time.sleep(0.5)
    stream_late, poll_late = [], []
    for _ in range(jobs):
        job_id = post_job(c, {"MODEL": "sleep", "DURATION": "0.3", "PHASE": "RUN"})
        # polling: a client that looks once a second
        polled_at = None
        while polled_at is None:
            time.sleep(1.0)
            if c.get(f"/jobs/{job_id}/phase").text == "COMPLETED":
                polled_at = time.time()
        end = parse_time(wait_done(c, job_id)["endTime"]).timestamp()
        pushed_at = None
        while pushed_at is None:
            at, data = seen.get(timeout=30)
            if data.get("job_id") == job_id and data.get("phase") == "COMPLETED":
                pushed_at = at
        stream_late.append(pushed_at - end)
        poll_late.append(polled_at - end)
    stop.set()
    out = {
        "jobs": jobs,
        "stream_median_s": statistics.median(stream_late),
        "stream_max_s": max(stream_late),
        "poll_1s_median_s": statistics.median(poll_late),
        "poll_1s_max_s": max(poll_late),
    }
    print(
        f"events: a job's end known {out['stream_median_s'] * 1000:.1f} ms late (median; "
        f"worst {out['stream_max_s'] * 1000:.1f} ms) on the stream, "
        f"{out['poll_1s_median_s'] * 1000:.0f} ms (worst {out['poll_1s_max_s'] * 1000:.0f} ms) "
        "polling once a second"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("bench-reuse.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / f"field{args.size}.fits"
        make_field(image, args.size)
        proc, url = start_server(Path(tmp) / "data")
        try:
            with httpx.Client(base_url=url, timeout=600) as c:
                wait_done(c, post_job(c, {"MODEL": "sleep", "DURATION": "0", "PHASE": "RUN"}))
                result: dict[str, Any] = {
                    "cache": cache(c, image),
                    "uploads": uploads(c, image),
                    "events": events(c, url, args.jobs),
                }
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    checks = {
        "cache_under_1s": result["cache"]["again_s"] < CACHE_LIMIT_S,
        "cache_20x": result["cache"]["speedup"] >= CACHE_RATIO,
        "upload_once_under_a_third": result["uploads"]["one_upload_s"]
        < UPLOAD_RATIO * result["uploads"]["three_uploads_s"],
        "events_median_under_50ms": result["events"]["stream_median_s"] < EVENT_LIMIT_S,
    }
    result["checks"] = {k: "PASS" if v else "MISS" for k, v in checks.items()}
    for name, verdict in result["checks"].items():
        print(f"{name}: {verdict}")
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
