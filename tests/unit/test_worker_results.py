"""The worker's last step: a job whose result files cannot be written ends with a message a
scientist can act on, and no half-written result is left where results are listed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Column

from astro_otf.domain.errors import JobFailure
from astro_otf.execution import worker
from astro_otf.execution.task import BatchTask, JobTask
from astro_otf.models.sep_finder import SepFinder


def open_job(tmp_path: Path, real_data: Path) -> tuple[worker._Job, BatchTask]:
    job_dir = tmp_path / "jobs" / "job1"
    (job_dir / "inputs").mkdir(parents=True)
    image = job_dir / "inputs" / "image.fits"
    shutil.copyfile(real_data / "aegean" / "synthetic_test.fits", image)
    task = JobTask("job1", "sep", {}, str(image), str(job_dir), None)
    batch = BatchTask("batch1", "sep", (task,))
    return worker._open(task, batch), batch


def test_results_are_written_and_moved(tmp_path: Path, real_data: Path) -> None:
    app = SepFinder()
    job, batch = open_job(tmp_path, real_data)
    job.request = worker._request(app, job)
    outcome = worker._success(app, job, app.run(job.request), batch)
    job.close()
    assert outcome.ok
    names = [r.filename for r in outcome.results]
    assert names == [
        "catalogue.xml", "catalogue.csv", "catalogue.json", "catalogue.reg", "preview.png",
        "provenance.json",
    ]  # fmt: skip
    results = job.job_dir / "results"
    assert sorted(p.name for p in results.iterdir()) == sorted(names)
    for r in outcome.results:
        assert (results / r.filename).stat().st_size == r.size > 0
    assert not (job.job_dir / "staging").exists()


def test_a_result_that_cannot_be_written_fails_the_job_cleanly(
    tmp_path: Path, real_data: Path
) -> None:
    app = SepFinder()
    job, batch = open_job(tmp_path, real_data)
    job.request = worker._request(app, job)
    output = app.run(job.request)
    assert output.catalogue is not None
    n = len(output.catalogue.table)
    # an app bug: a column whose UCD is not in the controlled vocabulary
    output.catalogue.table["bogus"] = Column(np.zeros(n), unit="", meta={"ucd": "not.a.ucd"})
    with pytest.raises(JobFailure) as caught:
        worker._success(app, job, output, batch)
    message = caught.value.message
    assert f"{n} source(s) were found but the result files could not be written" in message
    assert "report job job1" in message
    outcome = worker._failure(job, caught.value, batch)
    job.close()
    assert not outcome.ok and outcome.error_message == message and outcome.results == []
    assert list((job.job_dir / "results").glob("*")) == []  # nothing half-written is listed
    assert not (job.job_dir / "staging").exists()
    assert "writing the results failed" in (job.job_dir / "logs" / "job.log").read_text()
