"""Write an app's output the way a worker does, for tests that run an app in-process; and
make the synthetic radio fields such tests run on."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from astro_otf.models.base import App, AppOutput
from astro_otf.results.products import JobContext, write_products


def write_results(
    app: App,
    output: AppOutput,
    staging: Path,
    *,
    image_path: Path | None,
    values: Mapping[str, Any],
    job_id: str = "job-test",
) -> dict[str, Path]:
    """Every result file of ``output``, by result id."""
    assert output.catalogue is not None, "the app returned no catalogue"
    context = JobContext(
        job_id=job_id,
        owner=None,
        model_id=app.model_id,
        model_version=app.version,
        batch_id="test-batch",
        batch_jobs=1,
        host="localhost",
        pid=0,
        started=datetime.now(UTC),
        parameters=values,
        image_path=image_path,
    )
    written = write_products(output.catalogue, output.image, staging, context)
    return {p.result_id: staging / p.filename for p in written}


def point_source_field(path: Path, n: int, sources: int, seed: int) -> Path:
    """An n x n Jy/beam noise field (rms 0.1 mJy) with ``sources`` 2 mJy point sources,
    a SIN projection at RA 30, Dec -15 and a 6.3 arcsec beam, written to ``path``."""
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 1e-4, (n, n)).astype(np.float32)
    yy, xx = np.mgrid[-8:9, -8:9]
    for x, y in rng.integers(20, n - 20, (sources, 2)):
        data[y - 8 : y + 9, x - 8 : x + 9] += 2e-3 * np.exp(-(xx**2 + yy**2) / 4.5)
    header = fits.Header()
    for key, value in {
        "CTYPE1": "RA---SIN", "CTYPE2": "DEC--SIN", "CRPIX1": n / 2, "CRPIX2": n / 2,
        "CRVAL1": 30.0, "CRVAL2": -15.0, "CDELT1": -5e-4, "CDELT2": 5e-4,
        "CUNIT1": "deg", "CUNIT2": "deg", "BMAJ": 1.75e-3, "BMIN": 1.75e-3, "BPA": 0.0,
        "BUNIT": "Jy/beam",
    }.items():  # fmt: skip
        header[key] = value
    fits.writeto(path, data, header)
    return path
