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
from astro_otf.results.preview import draw_from_plan


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
        "catalogue.xml", "catalogue.csv", "catalogue.json", "catalogue.reg",
        "preview.plan.json", "provenance.json",
    ]  # fmt: skip
    results = job.job_dir / "results"
    assert sorted(p.name for p in results.iterdir()) == sorted(names)
    for r in outcome.results:
        assert (results / r.filename).stat().st_size == r.size > 0
    assert not (job.job_dir / "staging").exists()
    # the preview is listed (as a PNG) but drawn only when asked for, from its plan
    (preview,) = [r for r in outcome.results if r.result_id == "preview"]
    assert preview.mime_type == "image/png"
    assert not (results / "preview.png").exists()
    png = draw_from_plan(results / preview.filename, job.job_dir / "inputs" / "image.fits",
                         results / "preview.png")  # fmt: skip
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_each_job_of_a_batch_is_reported_when_its_own_work_ends(tmp_path: Path) -> None:
    """A batch of three jobs, the second with a bad parameter: each is reported as soon as
    its outcome is known, with its results staged, its run ended in its log and its run
    lock free, before the next job of the batch has run."""
    import fcntl
    import os

    from astro_otf.execution.task import TaskOutcome
    from astro_otf.models.registry import RegistryConfig

    config = RegistryConfig(diagnostic_apps=True)
    durations = {"job1": "0", "job2": "not-a-number", "job3": "0"}
    tasks = tuple(
        JobTask(
            job_id,
            "sleep",
            {"duration": seconds},
            None,
            str(tmp_path / job_id),
            None,
            config,
            f"tok{job_id}",
        )
        for job_id, seconds in durations.items()
    )
    seen: list[tuple[str, bool, bool, bool]] = []

    def report(outcome: TaskOutcome) -> None:
        job_dir = tmp_path / outcome.job_id
        staged = (job_dir / "staging" / f"tok{outcome.job_id}" / "report.txt").is_file()
        ended = f"run tok{outcome.job_id} ended" in (job_dir / "logs" / "job.log").read_text()
        fd = os.open(job_dir / "logs" / "run.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: the run let go of it
        finally:
            os.close(fd)
        later = tmp_path / "job3" / "logs" / "job.log"
        job3_ran = "done in" in later.read_text()
        seen.append((outcome.job_id, outcome.ok and staged, ended, job3_ran))

    outcomes = worker.run_batch(BatchTask("b1", "sleep", tasks, config), report=report)
    # the bad job is known first (its parameters fail before anything runs)
    assert seen == [
        ("job2", False, True, False),
        ("job1", True, True, False),
        ("job3", True, True, True),
    ]
    assert [o.job_id for o in outcomes] == ["job1", "job2", "job3"]
    assert [o.ok for o in outcomes] == [True, False, True]
