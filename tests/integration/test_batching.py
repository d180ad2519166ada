"""Batched inference through the real service: many jobs of one ONNX model share batches
(and forward passes), each gets its own catalogue, and one bad job fails alone."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from tests.conftest import ServerProcess
from tests.integration.test_uws_api import job_json, wait_final

N_JOBS = 50


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("otf-batching")
    proc = ServerProcess(data, None, workers="2", batch_max_wait="0.5", batch_max_jobs="32")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def images(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Distinct images: the synthetic field with a different number of sources blanked out
    (set to NaN) in each, so that every job has its own right answer."""
    base = real_data / "aegean" / "synthetic_test.fits"
    truth = Table.read(real_data / "aegean" / "synthetic_test_truth.csv")
    grid = truth[truth["note"] == "grid point source"]
    out = tmp_path_factory.mktemp("images")
    paths = []
    with fits.open(base) as hdul:
        data = hdul[0].data.astype(np.float32)
        header = hdul[0].header
    for n in range(N_JOBS):
        img = data.copy()
        for row in grid[: n % 10]:  # blank 0..9 of the grid sources
            x, y = round(float(row["x"])), round(float(row["y"]))
            img[max(0, y - 8) : y + 9, max(0, x - 8) : x + 9] = np.nan
        path = out / f"field{n:02d}.fits"
        fits.writeto(path, img, header)
        paths.append(path)
    return paths


def submit(client: httpx.Client, image: Path, **fields: str) -> str:
    with image.open("rb") as f:
        r = client.post(
            "/jobs",
            # NOCACHE: these jobs are here to run (the same image twice is no repeat here)
            data={"MODEL": "matched-filter", "PHASE": "RUN", "NOCACHE": "true", **fields},
            files={"IMAGE": (image.name, f)},
        )
    assert r.status_code == 303, r.text
    return r.headers["location"].rsplit("/", 1)[-1]


def test_fifty_jobs_run_in_a_few_batches_each_with_its_own_catalogue(
    batch_server: ServerProcess, images: list[Path], tmp_path: Path
) -> None:
    with httpx.Client(base_url=batch_server.url, timeout=120) as client:
        ids = [submit(client, img) for img in images]
        docs = [wait_final(client, job_id, timeout=300) for job_id in ids]
        assert all(d["phase"] == "COMPLETED" for d in docs), [d["errorSummary"] for d in docs]
        batches = Counter(d["jobInfo"]["batch_id"] for d in docs)
        assert len(batches) <= 10, batches  # a handful of batches, not 50 runs
        for doc in docs:
            assert doc["jobInfo"]["batch_jobs"] == batches[doc["jobInfo"]["batch_id"]]
        assert max(batches.values()) >= 5
        # every job got its own answer: 102 minus the sources blanked in its image
        for n, job_id in enumerate(ids):
            out = tmp_path / f"{n}.vot"
            out.write_bytes(client.get(f"/jobs/{job_id}/results/result").content)
            found = len(Table.read(out))
            assert 102 - (n % 10) - 1 <= found <= 102 - (n % 10) + 2, (n, found)
        metrics = client.get("/metrics").text
        line = next(
            x
            for x in metrics.splitlines()
            if x.startswith('otf_batch_jobs_count{model="matched-filter"}')
        )
        assert float(line.split()[-1]) == len(batches)


def test_one_bad_image_fails_alone_in_its_batch(
    batch_server: ServerProcess, images: list[Path], tmp_path: Path
) -> None:
    """Both workers are busy (sleep jobs) while a good, a bad and a good image are queued: the
    first free worker takes its share (two of the three, oldest first), the bad image fails
    and its batch neighbour completes."""
    bad = tmp_path / "bad.fits"
    bad.write_text("not a FITS file at all\n" * 100)
    with httpx.Client(base_url=batch_server.url, timeout=120) as client:
        sleepers = [
            client.post("/jobs", data={"MODEL": "sleep", "DURATION": "3", "PHASE": "RUN"})
            .headers["location"]
            .rsplit("/", 1)[-1]
            for _ in range(2)
        ]
        for job_id in sleepers:
            wait_executing(client, job_id)
        ids = [submit(client, images[0]), submit(client, bad), submit(client, images[1])]
        docs = [wait_final(client, job_id, timeout=120) for job_id in ids]
        assert [d["phase"] for d in docs] == ["COMPLETED", "ERROR", "COMPLETED"]
        assert "FITS" in docs[1]["errorSummary"]["message"]
        assert docs[0]["jobInfo"]["batch_id"] == docs[1]["jobInfo"]["batch_id"]
        assert docs[1]["jobInfo"]["batch_jobs"] == 2


def big_images(real_data: Path, folder: Path) -> list[Path]:
    """Four 1500x1500 noise images with the synthetic image's WCS."""
    with fits.open(real_data / "aegean" / "synthetic_test.fits") as hdul:
        header = hdul[0].header
    rng = np.random.default_rng(3)
    paths = []
    for n in range(4):
        path = folder / f"big{n}.fits"
        fits.writeto(path, rng.normal(0, 0.03, (1500, 1500)).astype(np.float32), header)
        paths.append(path)
    return paths


def slow_batch_server(folder: Path) -> ServerProcess:
    """One worker and one tile per forward pass: a batch of big images runs for seconds."""
    proc = ServerProcess(
        folder / "data", None, workers="1", batch_max_wait="0.3", max_batch_tiles="1"
    )
    proc.start()
    return proc


def wait_executing(client: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while job_json(client, job_id)["phase"] == "QUEUED" and time.monotonic() < deadline:
        client.get(f"/jobs/{job_id}", params={"WAIT": 1, "PHASE": "QUEUED"})
    assert job_json(client, job_id)["phase"] == "EXECUTING"


def test_abort_takes_a_job_out_of_its_batch(real_data: Path, tmp_path: Path) -> None:
    """A slow batch (big images, one tile per forward) is running; aborting one of its jobs
    stops the batch's worker, the job is ABORTED, and its neighbours run again and finish."""
    big = big_images(real_data, tmp_path)
    proc = slow_batch_server(tmp_path)
    try:
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            ids = [submit(client, img) for img in big]
            victim = ids[2]
            wait_executing(client, victim)
            r = client.post(f"/jobs/{victim}/phase", data={"PHASE": "ABORT"})
            assert r.status_code == 303, r.text
            docs = {job_id: wait_final(client, job_id, timeout=240) for job_id in ids}
            assert docs[victim]["phase"] == "ABORTED"
            others = [d for j, d in docs.items() if j != victim]
            assert all(d["phase"] == "COMPLETED" and d["results"] for d in others)
    finally:
        proc.stop()


def test_server_killed_mid_batch_finishes_every_job_once_after_restart(
    real_data: Path, tmp_path: Path
) -> None:
    big = big_images(real_data, tmp_path)
    proc = slow_batch_server(tmp_path)
    try:
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            ids = [submit(client, img) for img in big]
            wait_executing(client, ids[0])
        workers = proc.worker_pids()
        proc.stop(signal.SIGKILL)
        for pid in workers:  # the killed server's workers would finish on their own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.start()
        with httpx.Client(base_url=proc.url, timeout=120) as client:
            docs = [wait_final(client, job_id, timeout=240) for job_id in ids]
            assert [d["phase"] for d in docs] == ["COMPLETED"] * 4
            for job_id, doc in zip(ids, docs, strict=True):
                assert [r["id"] for r in doc["results"]] == [
                    "result", "csv", "json", "ds9", "preview", "provenance"
                ]  # fmt: skip
                log = (proc.data_dir / "jobs" / job_id / "logs" / "job.log").read_text()
                assert log.count("done in") == 1  # completed exactly once
    finally:
        proc.stop()
