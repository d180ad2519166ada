"""Scale-out on Dask: the same jobs through the local executor and through a Dask cluster of
1 and of 2 workers on this machine.

- local: ``otf serve`` with 2 local worker processes (the reference).
- dask-1, dask-2: ``dask scheduler`` and ``dask worker --nworkers K --nthreads 1`` processes,
  and ``otf serve`` with executor = dask (at most K batches in flight).

Every run submits the same N matched-filter jobs (512x512 fields, as bench/batching.py) at
once over HTTP and times the first upload to the last COMPLETED. Prints jobs/s per setup, the
scaling dask-2/dask-1 and the overhead of the Dask path (local/dask-2 wall time), and writes
JSON. These are ratios measured in one run on one machine (2 cores here, so dask-2 cannot be
twice dask-1 when the web process shares the cores).

Usage: python bench/scale.py [--jobs N] [--json OUT] [--no-preview]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from batching import FIELDS, make_images, service
from latency import free_port, start_server, wait_done

DASK = Path(sys.executable).with_name("dask")


def dask_cluster(folder: Path, workers: int) -> tuple[list[subprocess.Popen[bytes]], str]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "1"
    log = (folder / f"dask-{workers}.log").open("ab")
    scheduler = subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    time.sleep(2)
    worker = subprocess.Popen(
        [
            str(DASK),
            "worker",
            address,
            "--nworkers",
            str(workers),
            "--nthreads",
            "1",
            "--no-dashboard",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return [worker, scheduler], address


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def timed(folder: Path, images: list[Path], settings: dict[str, str]) -> float:
    proc, url = start_server(folder / "data", settings)
    try:
        with httpx.Client(base_url=url, timeout=300) as c:  # warm every worker
            warm = [_submit(c, images[i % len(images)]) for i in range(4)]
            for job_id in warm:
                wait_done(c, job_id)
        return service(url, images)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _submit(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as f:
        r = client.post("/jobs", data=FIELDS, files={"IMAGE": (path.name, f)})
    return r.headers["location"].rsplit("/", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--json", type=Path, default=Path("bench-scale.json"))
    parser.add_argument("--preview", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    if not args.preview:
        FIELDS["PREVIEW"] = "false"
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = make_images(folder, args.jobs)
        walls["local"] = timed(folder / "local", images, {"workers": "2"})
        for k in (1, 2):
            procs, address = dask_cluster(folder, k)
            try:
                walls[f"dask-{k}"] = timed(
                    folder / f"dask{k}",
                    images,
                    {"executor": "dask", "dask_address": address, "workers": str(k)},
                )
            finally:
                stop(procs)
    rates = {name: args.jobs / wall for name, wall in walls.items()}
    result = {
        "jobs": args.jobs,
        "preview": args.preview,
        "wall_s": walls,
        "jobs_per_s": rates,
        "dask2_over_dask1": rates["dask-2"] / rates["dask-1"],
        "dask2_over_local": rates["dask-2"] / rates["local"],
    }
    for name, rate in rates.items():
        print(f"{name:7s} {rate:6.2f} jobs/s ({walls[name]:.1f} s)")
    print(
        f"dask-2/dask-1 = {result['dask2_over_dask1']:.2f}x; "
        f"dask-2/local = {result['dask2_over_local']:.2f} (1 = no overhead)"
    )
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
