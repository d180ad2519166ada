"""How fast the UWS front end answers, against the limit of its own stack.

Starts a real server (SQLite, local executor, the diagnostic ``sleep`` app) and, in the same
run, a bare FastAPI app served by uvicorn with the service's own uvicorn settings
(:func:`astro_otf.app.uvicorn_options`): it answers GET /jobs/{id} with a fixed UWS job
document, GET /jobs/{id}/phase with a word, GET /jobs with a fixed job list and POST /jobs
with a 303. Both are driven by ``/work/shared/tools/uws_load.py`` (16 clients by default),
each figure is the median of ``--runs`` runs, and the service's figures are printed beside the
bare stack's, with their ratio and each target marked PASS or MISS. Throughput on a shared
machine moves with whatever else runs on it, so each run also reports the server process's
CPU milliseconds per request answered (from /proc; the service's includes its e2e jobs'
scheduling, the bare stack runs no e2e), the figure to compare between code versions.

Usage: python bench/uws.py [--runs 3] [--seconds 5] [--n 500] [--c 16] [--json OUT]
       [--tool /work/shared/tools/uws_load.py] [--service-src OLD/src]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

sys.path.insert(0, str(Path(__file__).parent))
from latency import free_port, start_server, wait_ready

TOOL = Path("/work/shared/tools/uws_load.py")

#: (figure, comparison, limit): the targets of issue 13, item 8.
TARGETS: list[tuple[str, str, float]] = [
    ("get_job.ok_rps", ">=", 1000.0),
    ("get_job.p99_ms", "<=", 50.0),
    ("create.ok_rps", ">=", 300.0),
    ("e2e.median_ms", "<=", 130.0),
]
FIGURES = [
    "create.ok_rps",
    "create.p50_ms",
    "create.p99_ms",
    "get_job.ok_rps",
    "get_job.p50_ms",
    "get_job.p99_ms",
    "get_phase.ok_rps",
    "get_phase.p50_ms",
    "get_phase.p99_ms",
    "list.ok_rps",
    "list.p50_ms",
    "list.p99_ms",
    "e2e.median_ms",
]

_JOB_DOC = b"""<?xml version='1.0' encoding='UTF-8'?>
<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" \
xmlns:xlink="http://www.w3.org/1999/xlink" \
xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1">
  <uws:jobId>0123456789abcdef</uws:jobId>
  <uws:ownerId xsi:nil="true"/>
  <uws:phase>PENDING</uws:phase>
  <uws:quote xsi:nil="true"/>
  <uws:creationTime>2026-11-29T12:00:00.000Z</uws:creationTime>
  <uws:startTime xsi:nil="true"/>
  <uws:endTime xsi:nil="true"/>
  <uws:executionDuration>3600</uws:executionDuration>
  <uws:destruction>2026-12-06T12:00:00.000Z</uws:destruction>
  <uws:parameters>
    <uws:parameter id="duration">0.1</uws:parameter>
    <uws:parameter id="model">sleep</uws:parameter>
    <uws:parameter id="model_version">1.0</uws:parameter>
  </uws:parameters>
  <uws:results/>
</uws:job>
"""


def bare_app() -> FastAPI:
    """The limit of the stack: FastAPI routes that do no work but answer like UWS."""
    from astro_otf.app import fastapi_options

    app = FastAPI(**fastapi_options())
    listing = b"<?xml version='1.0' encoding='UTF-8'?>\n" + (
        b'<uws:jobs xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" '
        b'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1">'
        + b"".join(
            f'<uws:jobref id="{i:016x}" xlink:href="http://x/jobs/{i:016x}">'
            f"<uws:phase>PENDING</uws:phase>"
            f"<uws:creationTime>2026-11-29T12:00:00.000Z</uws:creationTime>"
            f"</uws:jobref>".encode()
            for i in range(100)
        )
        + b"</uws:jobs>"
    )

    @app.get("/health/ready")
    async def ready() -> Response:
        return PlainTextResponse("ok")

    @app.get("/jobs")
    async def jobs() -> Response:
        return Response(listing, media_type="application/xml")

    @app.post("/jobs")
    async def create(request: Request) -> Response:
        await request.body()
        return RedirectResponse(f"{request.base_url}jobs/{uuid.uuid4().hex[:16]}", 303)

    @app.get("/jobs/{job_id}")
    async def job(job_id: str) -> Response:
        return Response(_JOB_DOC, media_type="application/xml")

    @app.get("/jobs/{job_id}/phase")
    async def phase(job_id: str) -> Response:
        return PlainTextResponse("PENDING")

    return app


def serve_bare(port: int) -> None:
    import uvicorn

    from astro_otf.app import uvicorn_options
    from astro_otf.config import Settings

    options = uvicorn_options(Settings(log_level="warning"))
    uvicorn.run(bare_app(), host="127.0.0.1", port=port, **options)


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, wait_ready(proc, f"http://127.0.0.1:{port}", 30.0)


def load(
    tool: Path, base: str, pid: int, out: Path, args: argparse.Namespace, skip: list[str]
) -> None:
    command = [
        sys.executable,
        str(tool),
        "--base",
        f"{base}/jobs",
        "--param",
        "model=sleep",
        "--param",
        "duration=0.1",
        "--n",
        str(args.n),
        "--c",
        str(args.c),
        "--m",
        str(args.m),
        "--seconds",
        str(args.seconds),
        "--pid",
        str(pid),
        "--json",
        str(out),
    ]
    for phase in skip:
        command += ["--skip", phase]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_made(result: Path) -> int:
    results = json.loads(result.read_text())["results"]
    total = 0
    for value in results.values():
        if not isinstance(value, dict):
            continue
        count = value.get("requests")
        if isinstance(count, dict):  # e2e: its requests' own summary
            count = count.get("requests")
        total += count or 0
    return total


PHASES = ("create", "get_job", "get_phase", "list")


def measured(
    tool: Path, base: str, pid: int, out: Path, args: argparse.Namespace, skip: list[str]
) -> dict[str, float]:
    """Runs the load; returns the server's CPU milliseconds per request answered, in all
    and per phase (a figure that other work on the machine disturbs less than throughput).
    The phases run one after another from the tool's start; the server's CPU time is
    sampled every 20 ms and each phase gets what it used between its start and its end."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), cpu_seconds(pid)))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        load(tool, base, pid, out, args, skip)
    finally:
        done.set()
        sampler.join()
    samples.append((time.time(), cpu_seconds(pid)))
    used = samples[-1][1] - samples[0][1]
    figures = {"all": round(1000 * used / max(requests_made(out), 1), 3)}
    report = json.loads(out.read_text())
    start = report["started_unix"]
    t = start
    for phase in PHASES:
        result = report["results"].get(phase)
        if not result or "elapsed_s" not in result:
            continue
        # the phase ends now + elapsed; it started elapsed before its end (the probe and
        # the list's one probe request are short)
        if phase == "create":
            t = start
        begin, end = t, t + result["elapsed_s"]
        cpu = _cpu_at(samples, end) - _cpu_at(samples, begin)
        figures[phase] = round(1000 * cpu / max(result["requests"], 1), 3)
        t = end
    return figures


def _cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """The CPU time at ``when``, interpolated between samples."""
    for (t0, c0), (t1, c1) in itertools.pairwise(samples):
        if t0 <= when <= t1:
            return c0 if t1 == t0 else c0 + (c1 - c0) * (when - t0) / (t1 - t0)
    return samples[0][1] if when < samples[0][0] else samples[-1][1]


def medians(tool: Path, files: list[Path], out: Path) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, str(tool), "median", *map(str, files), "--json", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    figures: dict[str, Any] = json.loads(out.read_text())["figures"]
    return {k: figures.get(k, {}).get("median") for k in FIGURES}


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def verdict(value: float | None, comparison: str, limit: float) -> str:
    if value is None:
        return "MISS"
    ok = value >= limit if comparison == ">=" else value <= limit
    return "PASS" if ok else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--c", type=int, default=16)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--tool", type=Path, default=TOOL)
    parser.add_argument("--json", type=Path, default=Path("bench-uws.json"))
    parser.add_argument(
        "--service-src",
        type=Path,
        help="serve the service from this source tree (e.g. an older commit unpacked with "
        "git archive) to compare versions; the bare stack is served from this one",
    )
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        service_runs: list[Path] = []
        bare_runs: list[Path] = []
        service_cpu: list[dict[str, float]] = []
        bare_cpu: list[dict[str, float]] = []
        for run in range(args.runs):
            # a fresh data folder per run: each run lists and reads jobs of the same number
            if args.service_src:
                os.environ["PYTHONPATH"] = str(args.service_src.resolve())
            try:
                proc, url = start_server(folder / f"data{run}")
            finally:
                os.environ.pop("PYTHONPATH", None)
            try:
                # one job through first: the workers start and import before timing
                httpx.post(
                    f"{url}/jobs",
                    data={"model": "sleep", "duration": "0", "PHASE": "RUN"},
                    timeout=60,
                )
                service_runs.append(folder / f"service{run}.json")
                service_cpu.append(
                    measured(args.tool, url, proc.pid, service_runs[-1], args, ["wait"])
                )
            finally:
                stop(proc)
            proc, url = start_bare()
            try:
                bare_runs.append(folder / f"bare{run}.json")
                bare_cpu.append(
                    measured(args.tool, url, proc.pid, bare_runs[-1], args, ["wait", "e2e"])
                )
            finally:
                stop(proc)
        service = medians(args.tool, service_runs, folder / "service.json")
        bare = medians(args.tool, bare_runs, folder / "bare.json")
        errors = [json.loads(p.read_text())["total_errors"] for p in service_runs]
        for name in ("all", *PHASES):
            key = f"cpu_ms_per_request.{name}"
            service[key] = _median([c.get(name) for c in service_cpu])
            bare[key] = _median([c.get(name) for c in bare_cpu])
    print(f"median of {args.runs} run(s), {args.c} clients, {args.seconds:g} s per GET phase")
    print(f"{'figure':<30}{'service':>10}{'bare':>10}{'ratio':>8}")
    for key in [*FIGURES, *(f"cpu_ms_per_request.{n}" for n in ("all", *PHASES))]:
        s, b = service[key], bare[key]
        ratio = f"{s / b:.2f}" if s is not None and b else "-"
        print(f"{key:<30}{_show(s):>10}{_show(b):>10}{ratio:>8}")
    print(f"service errors per run: {errors}")
    verdicts = {}
    for key, comparison, limit in TARGETS:
        verdicts[key] = verdict(service[key], comparison, limit)
        print(f"target {key} {comparison} {limit:g}: {_show(service[key])}  {verdicts[key]}")
    args.json.write_text(
        json.dumps(
            {
                "runs": args.runs,
                "clients": args.c,
                "seconds": args.seconds,
                "cpus": os.cpu_count(),
                "service": service,
                "bare": bare,
                "service_errors": errors,
                "targets": {
                    k: {"limit": f"{c} {v:g}", "verdict": verdicts[k]} for k, c, v in TARGETS
                },
            },
            indent=2,
        )
    )
    print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
