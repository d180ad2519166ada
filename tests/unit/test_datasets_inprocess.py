"""Server-side datasets: GET /datasets and /datasets/{name} with the header facts of each
image, a job on IMAGE=dataset:<name>/<path> whose catalogue names the file and whose input is
recorded for reuse, and the references the service refuses (4xx naming IMAGE).

The service runs in the test's process (tests/inprocess.py); its sep jobs run the real worker
code in a thread, so that the catalogue is the real one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.inprocess import FakeExecutor, InProcessService, real_runs
from tests.integration.test_held import job, wait_final


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, real_data: Path
) -> Iterator[tuple[InProcessService, Path]]:
    """A service offering two datasets over a folder of real images (with a non-image, and a link
    that escapes the folder); the folder."""
    tmp = tmp_path_factory.mktemp("otf-datasets")
    folder = tmp / "real"
    (folder / "first").mkdir(parents=True)
    shutil.copyfile(
        real_data / "astroquery" / "first_J105007+304037.fits",
        folder / "first" / "first_J105007+304037.fits",
    )
    shutil.copyfile(real_data / "aegean" / "1904-66_SIN.fits", folder / "1904-66_SIN.fits")
    (folder / "readme.txt").write_text("not an image")
    outside = tmp / "outside.fits"
    shutil.copyfile(real_data / "aegean" / "1904-66_SIN.fits", outside)
    os.symlink(outside, folder / "escape.fits")
    with InProcessService(
        tmp / "data",
        executor=FakeExecutor(default=real_runs),
        datasets=[
            {"name": "real", "path": str(folder), "description": "real images"},
            {"name": "top", "path": str(folder / "*.fits")},
        ],
    ) as service:
        yield service, folder


@pytest.fixture
def client(setup: tuple[InProcessService, Path]) -> Iterator[httpx.Client]:
    """A client of the datasets service."""
    with setup[0].client() as c:
        yield c


def test_listing_with_header_facts(client: httpx.Client) -> None:
    """/datasets lists each dataset, and /datasets/{name} each image with the facts of its
    header."""
    listed = client.get("/datasets").json()["datasets"]
    assert [d["name"] for d in listed] == ["real", "top"]
    assert listed[0]["description"] == "real images"
    assert "/" not in listed[0]["pattern"].split("*")[0]  # no server folder shown
    doc = client.get("/datasets/real").json()
    by_path = {i["path"]: i for i in doc["images"]}
    assert set(by_path) == {"1904-66_SIN.fits", "first/first_J105007+304037.fits"}
    first = by_path["first/first_J105007+304037.fits"]
    assert first["ref"] == "dataset:real/first/first_J105007+304037.fits"
    assert first["complete"] is True and first["bytes"] > 0
    assert len(first["shape"]) == 2
    assert first["beam"]["major_arcsec"] > 0  # FIRST's 5.4" beam from BMAJ
    assert first["object"] == "J105007+304037" and first["telescope"] == "VLA"
    assert by_path["1904-66_SIN.fits"]["frequency_hz"] == pytest.approx(1420405750.0)
    top = client.get("/datasets/top").json()
    assert [i["path"] for i in top["images"]] == ["1904-66_SIN.fits"]
    r = client.get("/datasets/nope")
    assert r.status_code == 404 and "real" in r.text


def test_a_dataset_job_completes_and_names_its_file(client: httpx.Client) -> None:
    """A job on a dataset's image completes (a real sep run), its catalogue names the file and
    its sha256, and the same request again reuses its results."""
    ref = "dataset:real/first/first_J105007+304037.fits"
    r = client.post("/jobs", data={"IMAGE": ref, "PHASE": "RUN", "NOCACHE": "true"})
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].rsplit("/", 1)[-1]
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc
    identity = doc["jobInfo"]["input"]
    assert identity["dataset"] == "real"
    assert identity["dataset_path"] == "first/first_J105007+304037.fits"
    assert len(identity["sha256"]) == 64
    votable = client.get(f"/jobs/{job_id}/results/result").text
    assert "first_J105007+304037.fits" in votable
    assert identity["sha256"] in votable
    # the same image and parameters again: the results are reused (identity as for uploads)
    r = client.post("/jobs", data={"IMAGE": ref, "PHASE": "RUN"})
    again = job(client, r.headers["location"].rsplit("/", 1)[-1])
    assert again["phase"] == "COMPLETED" and again["jobInfo"]["cached_from"] == job_id


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("dataset:real/../outside.fits", "'..'"),
        ("dataset:real/escape.fits", "outside"),
        ("dataset:real/readme.txt", "holds only"),
        ("dataset:top/first/first_J105007+304037.fits", "holds only *.fits"),
        ("dataset:nope/x.fits", "no dataset named"),
        ("dataset:real/~/x.fits", "absolute"),
        ("dataset:real/missing.fits", "HOLD="),
    ],
)
def test_refused_references(client: httpx.Client, ref: str, words: str) -> None:
    """References outside the dataset, of another kind of file, to an unknown dataset or to a
    missing file are 400 naming IMAGE and why."""
    r = client.post("/jobs", data={"IMAGE": ref, "PHASE": "RUN"})
    assert r.status_code == 400, r.text
    assert r.text.startswith("IMAGE:") and words in r.text


def test_hold_needs_a_reference_that_can_wait(client: httpx.Client) -> None:
    """HOLD is ignored for a file that is there, and refused for a job that cannot wait."""
    r = client.post(
        "/jobs", data={"IMAGE": "dataset:real/1904-66_SIN.fits", "HOLD": "soon", "PHASE": "RUN"}
    )
    # the file is there: HOLD is not needed, and not read
    assert r.status_code == 303
    r = client.post("/jobs", data={"IMAGE": "dataset:real/later.fits", "HOLD": "soon"})
    assert r.status_code == 400 and r.text.startswith("HOLD:")
