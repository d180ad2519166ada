"""End-to-end latency of small jobs and how fast a blocking WAIT answers a phase change.

Starts a real server (SQLite, local executor) on a free port, then:
- submits the bundled 512x256 sample image with PHASE=RUN and waits with WAIT, N times:
  submit-to-catalogue latency, and the sep run time inside the worker for comparison;
- runs N diagnostic sleep jobs while a client blocks in WAIT, and measures the delay between
  the job's recorded endTime and the moment the WAIT answer arrives (the limit: 50 ms).

Usage: python bench/latency.py [--jobs N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from astro_otf.data import SAMPLE_IMAGE

WAIT_LIMIT_S = 0.050


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    data_dir: Path, settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """``otf serve`` on a free port, with extra ``OTF_*`` settings; waits until ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env.update(OTF_DATA_DIR=str(data_dir), OTF_DIAGNOSTIC_APPS="true", OTF_LOG_LEVEL="warning")
    env.update({f"OTF_{k.upper()}": v for k, v in (settings or {}).items()})
    # BENCH_SERVER_LOG=path keeps the server's log (warnings and errors) for a post-mortem
    log_path = os.environ.get("BENCH_SERVER_LOG")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from astro_otf.app import run_server; run_server('127.0.0.1', {port})",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    return proc, wait_ready(proc, f"http://127.0.0.1:{port}", 60.0)


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> str:
    """``url`` once its /health/ready answers 200; the process is killed if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server at {url} did not start")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_done(client: httpx.Client, job_id: str) -> dict:  # type: ignore[type-arg]
    while True:
        doc = client.get(
            f"/jobs/{job_id}", params={"WAIT": 30}, headers={"Accept": "application/json"}
        ).json()
        if doc["phase"] in ("COMPLETED", "ERROR", "ABORTED"):
            return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--json", type=Path, default=Path("bench-latency.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp) / "data")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                # warm the workers (imports happen at worker start, not in the first job)
                wait_done(client, _submit(client))
                e2e, runs = [], []
                for _ in range(args.jobs):
                    t0 = time.perf_counter()
                    job_id = _submit(client)
                    doc = wait_done(client, job_id)
                    client.get(f"/jobs/{job_id}/results/result").raise_for_status()
                    e2e.append(time.perf_counter() - t0)
                    assert doc["phase"] == "COMPLETED", doc["errorSummary"]
                    runs.append(doc["jobInfo"]["run_seconds"])
                lags = []
                for _ in range(args.jobs):
                    r = client.post(
                        "/jobs", data={"MODEL": "sleep", "DURATION": "0.2", "PHASE": "RUN"}
                    )
                    job_id = r.headers["location"].rsplit("/", 1)[-1]
                    client.get(f"/jobs/{job_id}", params={"WAIT": 10, "PHASE": "QUEUED"})
                    doc = client.get(
                        f"/jobs/{job_id}",
                        params={"WAIT": 10},
                        headers={"Accept": "application/json"},
                    ).json()
                    answered = datetime.now(UTC)
                    assert doc["phase"] == "COMPLETED", doc
                    lags.append((answered - parse_time(doc["endTime"])).total_seconds())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result = {
        "jobs": args.jobs,
        "image": "sample.fits (512x256, 102 sources)",
        "end_to_end_s": {"median": statistics.median(e2e), "min": min(e2e), "max": max(e2e)},
        "sep_run_in_worker_s": {"median": statistics.median(runs)},
        "wait_answer_after_phase_change_s": {
            "median": statistics.median(lags),
            "max": max(lags),
            "limit": WAIT_LIMIT_S,
        },
        "wait_within_limit": max(lags) <= WAIT_LIMIT_S,
    }
    print(
        f"end-to-end small job: median {result['end_to_end_s']['median'] * 1000:.0f} ms "
        f"(min {min(e2e) * 1000:.0f}, max {max(e2e) * 1000:.0f}); sep itself "
        f"{statistics.median(runs) * 1000:.0f} ms"
    )
    print(
        f"WAIT answers after a phase change: median {statistics.median(lags) * 1000:.1f} ms, "
        f"max {max(lags) * 1000:.1f} ms (limit {WAIT_LIMIT_S * 1000:.0f} ms): "
        f"{'OK' if result['wait_within_limit'] else 'OVER'}"
    )
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


def _submit(client: httpx.Client) -> str:
    with SAMPLE_IMAGE.open("rb") as f:
        r = client.post(
            "/jobs",
            data={"PHASE": "RUN", "MODEL": "sep", "NOCACHE": "true"},
            files={"IMAGE": ("sample.fits", f)},
        )
    if r.status_code != 303:
        raise SystemExit(f"submission refused: {r.status_code} {r.text}")
    return r.headers["location"].rsplit("/", 1)[-1]


if __name__ == "__main__":
    main()
