"""The command apps (PyBDSF, Aegean) through a real service on every real image.

Starts a server (SQLite, local executor, the apps' environments from ``make apps``), then for
every FITS image under ../shared/data/real/ (images, not catalogue tables) submits one sep job
and one job per app, waits, and checks that each app's VOTable has the same columns as the
sep job's: the standard columns and local_rms, with the same names, order, units and UCDs.
Prints, per image and app, the number of sources and the job's wall time (submission to
final phase) and the finder's own time, next to the counts of the baseline run of the same
finder outside the service (../shared/data/real/baseline/*.summary.json), and writes it all
as JSON.

Usage: python bench/apps.py [--json build/bench-apps.json] [--apps pybdsf,aegean]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
from astropy.io import fits
from astropy.io.votable import parse

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("OTF_SHARED_DIR", REPO.parent / "shared")) / "data" / "real"
#: The baseline's name for each app.
BASELINE_NAME = {"pybdsf": "bdsf", "aegean": "aegean", "sep": "sep"}
#: The standard columns (no class, no tile) and local_rms.
COMPARED = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def images() -> list[Path]:
    """Every FITS file under REAL whose first HDU with data is an image (not a table)."""
    found = []
    for path in sorted(REAL.rglob("*.fits")):
        with fits.open(path) as hdul:
            if any(h.is_image and h.header.get("NAXIS", 0) >= 2 for h in hdul):
                found.append(path)
    return found


def start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTF_")}
    env.update(
        OTF_DATA_DIR=str(data_dir),
        OTF_APPS_DIR=str(REPO / ".apps"),
        OTF_LOG_LEVEL="warning",
        OTF_WORKERS="2",
        OTF_DEFAULT_MODEL="sep",
        OTF_MAX_EXECUTION_DURATION="3600",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from astro_otf.app import run_server; run_server('127.0.0.1', {port})",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready")


def submit(client: httpx.Client, model: str, image: Path) -> str:
    with image.open("rb") as fh:
        r = client.post(
            "/jobs",
            data={"MODEL": model, "PHASE": "RUN", "NOCACHE": "true"},
            files={"IMAGE": (image.name, fh, "application/fits")},
        )
    if r.status_code != 303:
        raise SystemExit(f"{model} on {image.name}: {r.status_code} {r.text}")
    return r.headers["location"].rsplit("/", 1)[-1]


def wait(client: httpx.Client, job_id: str, timeout: float = 1800) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get(
            f"/jobs/{job_id}", params={"WAIT": 30}, headers={"Accept": "application/json"}
        ).json()
        if doc["phase"] in ("COMPLETED", "ERROR", "ABORTED"):
            return dict(doc)
    raise SystemExit(f"job {job_id} did not finish in {timeout} s")


def columns(client: httpx.Client, job_id: str) -> tuple[list[tuple[str, str, str]], int]:
    body = client.get(f"/jobs/{job_id}/results/result").content
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = parse(io.BytesIO(body)).get_first_table()
    fields = [(f.name, str(f.unit or ""), str(f.ucd or "")) for f in table.fields]
    return fields, len(table.array)


def baseline(image: Path) -> dict[str, dict[str, Any]]:
    summary = REAL / "baseline" / f"{image.stem}.summary.json"
    if not summary.is_file():
        return {}
    return {row["finder"]: row for row in json.loads(summary.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=REPO / "build" / "bench-apps.json")
    parser.add_argument("--apps", default="pybdsf,aegean")
    args = parser.parse_args()
    apps = [a for a in args.apps.split(",") if a]
    with tempfile.TemporaryDirectory(prefix="bench-apps-") as tmp:
        proc, url = start_server(Path(tmp) / "data")
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                models = {m["id"]: m for m in client.get("/models").json()["models"]}
                for app in apps:
                    if not models.get(app, {}).get("available"):
                        raise SystemExit(
                            f"{app} is not available: {models.get(app, {}).get('reason')}"
                        )
                rows = run_all(client, apps)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    ok = all(r["same_columns"] and r["phase"] == "COMPLETED" for r in rows if r["model"] != "sep")
    args.json.write_text(json.dumps({"ok": ok, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}; all apps' VOTables have sep's columns: {ok}")
    return 0 if ok else 1


def run_all(client: httpx.Client, apps: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    header = (
        f"{'image':<48} {'model':<7} {'phase':<9} {'n':>4} {'base n':>6} "
        f"{'job s':>7} {'finder s':>8} {'base s':>7} columns"
    )
    print(header)
    for image in images():
        rel = image.relative_to(REAL)
        base = baseline(image)
        # one image at a time: its sep job and its app jobs run side by side (2 workers)
        ids = {m: (submit(client, m, image), time.monotonic()) for m in ["sep", *apps]}
        done = {m: (wait(client, job_id), time.monotonic() - t0) for m, (job_id, t0) in ids.items()}
        sep_doc = done["sep"][0]
        sep_fields = columns(client, sep_doc["jobId"])[0] if sep_doc["phase"] == "COMPLETED" else []
        for model in ["sep", *apps]:
            doc, elapsed = done[model]
            n, fields = None, []
            if doc["phase"] == "COMPLETED":
                fields, n = columns(client, doc["jobId"])
            same = bool(fields) and fields[:COMPARED] == sep_fields[:COMPARED]
            ref = base.get(BASELINE_NAME[model], {})
            info = doc.get("jobInfo") or {}
            row = {
                "image": str(rel),
                "model": model,
                "phase": doc["phase"],
                "error": doc.get("errorSummary"),
                "n_sources": n,
                "baseline_n_sources": ref.get("n_sources"),
                "job_wall_s": round(elapsed, 2),
                "finder_s": info.get("finder_seconds") or info.get("run_seconds"),
                "baseline_finder_s": ref.get("wall_s"),
                "baseline_process_s": ref.get("process_wall_s"),
                "same_columns": same,
            }
            rows.append(row)
            print(
                f"{str(rel)[:48]:<48} {model:<7} {doc['phase']:<9} "
                f"{n if n is not None else '-':>4} "
                f"{ref.get('n_sources', '-'):>6} {elapsed:>7.1f} "
                f"{row['finder_s'] if row['finder_s'] is not None else '-':>8} "
                f"{ref.get('wall_s', '-'):>7} {'same' if same else 'DIFFERENT'}",
                flush=True,
            )
            if doc["phase"] != "COMPLETED":
                print(f"    {doc.get('errorSummary')}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
