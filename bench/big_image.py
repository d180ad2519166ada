"""Big images through the ONNX path: wall time and peak memory at 4k², 8k² and 16k².

Each size is a generated float32 FITS image (Gaussian noise plus point sources, the sample
image's WCS) run through the matched-filter model by the app a worker runs, then every
result file written as a worker writes them (VOTable, CSV, JSON, DS9, PNG preview,
provenance with the input's sha256), in a fresh process per size. Memory is sampled every
10 ms from /proc/self/status: RssAnon (the process's own memory, what the limit is about)
and VmHWM (peak resident, which also counts pages of the memory-mapped file that the kernel
can drop). Targets: RssAnon flat (at most
+10 % from 4k² to 16k²) and time linear in pixels.

Usage: python bench/big_image.py [--sizes 4096 8192 16384] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from astro_otf.data import SAMPLE_IMAGE

RUN_ONE = r"""
import json, logging, os, socket, sys, tempfile, threading, time
from datetime import UTC, datetime
from pathlib import Path
from astro_otf.domain.parameters import validate
from astro_otf.models.base import AppRequest
from astro_otf.models.registry import build_registry

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024  # MiB
    return out

from astro_otf.results.products import JobContext, write_products
app = build_registry().get("matched-filter")
v = validate({}, ["image"], app.parameters, precisions=app.precisions, model_id=app.model_id)
base = status()["RssAnon"]
peak = {"anon": base}
done = threading.Event()
def sample():
    while not done.is_set():
        peak["anon"] = max(peak["anon"], status()["RssAnon"])
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
staging = Path(tempfile.mkdtemp())
out = app.run(AppRequest("big", Path(sys.argv[1]), v.values, None, staging,
                         logging.getLogger("big")))
t1 = time.perf_counter()
write_products(out.catalogue, out.image, staging, JobContext(
    "big", None, app.model_id, app.version, "big", 1, socket.gethostname(), os.getpid(),
    datetime.now(UTC), v.values, Path(sys.argv[1])))
wall = time.perf_counter() - t0
done.set()
print(json.dumps({"wall_s": wall, "detect_s": t1 - t0, "results_s": wall - (t1 - t0),
                  "rss_anon_peak_mib": peak["anon"],
                  "rss_anon_before_mib": base, "vm_hwm_mib": status()["VmHWM"],
                  "n_sources": out.info["n_sources"], "tiles": out.info["tiles"]}))
"""


def make_image(path: Path, size: int) -> None:
    """Write a size x size float32 image band by band (never whole in memory)."""
    header = fits.getheader(SAMPLE_IMAGE)
    header["NAXIS"], header["NAXIS1"], header["NAXIS2"] = 2, size, size
    header["BITPIX"] = -32
    for key in ("BSCALE", "BZERO", "BLANK"):
        header.remove(key, ignore_missing=True)
    rng = np.random.default_rng(size)
    band = 512
    yy, xx = np.mgrid[0:band, 0:size]
    with open(path, "wb") as f:
        f.write(header.tostring().encode())  # NAXIS=2, BITPIX=-32: data follows
        for _ in range(0, size, band):
            block = rng.normal(0, 1e-3, (band, size)).astype(np.float32)
            for x, y in zip(
                rng.uniform(8, size - 8, 20), rng.uniform(8, band - 8, 20), strict=True
            ):
                block += (0.02 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 8.0)).astype(np.float32)
            f.write(block.astype(">f4").tobytes())
        pad = (-f.tell()) % 2880
        f.write(b"\0" * pad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--json", type=Path, default=Path("bench-big-image.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"big{size}.fits"
            make_image(path, size)
            out = subprocess.run(
                [sys.executable, "-c", RUN_ONE, str(path)], capture_output=True, text=True
            )
            if out.returncode:
                raise SystemExit(f"{size}^2 failed:\n{out.stderr[-3000:]}")
            row = {"size": size, "mpix": size * size / 1e6, **json.loads(out.stdout)}
            row["s_per_mpix"] = row["wall_s"] / row["mpix"]
            rows.append(row)
            print(
                f"{size}^2: {row['wall_s']:.1f} s ({row['s_per_mpix'] * 1000:.0f} ms/Mpix; "
                f"detection {row['detect_s']:.1f} s, result files {row['results_s']:.1f} s), "
                f"{row['tiles']} tiles, {row['n_sources']} sources, RssAnon peak "
                f"{row['rss_anon_peak_mib']:.0f} MiB, VmHWM {row['vm_hwm_mib']:.0f} MiB"
            )
            path.unlink()
    first, last = rows[0], rows[-1]
    growth = last["rss_anon_peak_mib"] / first["rss_anon_peak_mib"] - 1
    linear = last["s_per_mpix"] / first["s_per_mpix"]
    print(
        f"RssAnon growth {first['size']}^2 -> {last['size']}^2: {growth * 100:+.1f} % "
        f"(target <= +10 %); time per Mpix ratio {linear:.2f} (1.00 = linear)"
    )
    args.json.write_text(
        json.dumps(
            {"rows": rows, "rss_anon_growth": growth, "time_per_mpix_ratio": linear}, indent=2
        )
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
