"""Write an app's output the way a worker does, for tests that run an app in-process."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
