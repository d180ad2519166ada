"""A forward pass that runs out of memory is split in halves and retried, and the job still
gets its full catalogue. The memory really runs out: the run happens in a child process whose
address space is capped (RLIMIT_AS) just above what it holds after warming up on a small
image, so ONNX Runtime's own allocator fails on the big forward pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = r"""
import json, logging, resource, sys
from pathlib import Path
import numpy as np
from astropy.io import fits
from astro_otf.data import SAMPLE_IMAGE
from astro_otf.domain.parameters import validate
from astro_otf.models.base import AppRequest
from astro_otf.models.onnx_detector import RuntimeConfig
from astro_otf.models.registry import RegistryConfig, build_registry

folder, margin_mb = Path(sys.argv[1]), int(sys.argv[2])
logging.basicConfig(level=logging.WARNING, format="%(message)s")
header = fits.getheader(SAMPLE_IMAGE)
rng = np.random.default_rng(1)
img = rng.normal(0, 1e-3, (2048, 2048)).astype(np.float32)
for x, y in rng.uniform(20, 2028, (12, 2)).astype(int):
    img[y - 1 : y + 2, x - 1 : x + 2] += 0.05
fits.writeto(folder / "big.fits", img, header, overwrite=True)
fits.writeto(folder / "small.fits", img[:256, :256], header, overwrite=True)
runtime = RuntimeConfig(intra_op_threads=1, max_batch_tiles=128)
app = build_registry(RegistryConfig(runtime=runtime)).get("matched-filter")
v = validate({}, ["image"], app.parameters, precisions=app.precisions, model_id=app.model_id)
log = logging.getLogger("oom")
app.run(AppRequest("warm", folder / "small.fits", v.values, None, folder, log))
if margin_mb > 0:
    status = Path("/proc/self/status").read_text().splitlines()
    vm = int(next(l for l in status if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + margin_mb * 2**20, resource.RLIM_INFINITY))
out = app.run(AppRequest("big", folder / "big.fits", v.values, None, folder, log))
t = out.catalogue.table
print(json.dumps({"tiles": out.info["tiles"], "x": list(t["x"]), "y": list(t["y"])}))
"""


def child(folder: Path, margin_mb: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(margin_mb)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_out_of_memory_forward_is_split_and_the_catalogue_is_complete(tmp_path: Path) -> None:
    free = child(tmp_path, 0)
    assert free.returncode == 0, free.stderr
    reference = json.loads(free.stdout)
    assert reference["tiles"] == 81 and len(reference["x"]) == 12
    assert "ran out of memory" not in free.stderr
    # The first cap that lets the run finish at all must have made it split: the full
    # 81-tile forward does not fit under it. (Tighter caps fail outside the forward.)
    tried = []
    for margin in range(60, 421, 20):
        capped = child(tmp_path, margin)
        tried.append((margin, capped.returncode))
        if capped.returncode != 0:
            continue
        assert "ran out of memory; retrying" in capped.stderr, capped.stderr
        assert json.loads(capped.stdout) == reference
        return
    pytest.fail(f"no memory cap let the run finish: {tried}")
