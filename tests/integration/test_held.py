"""Jobs that wait for their data (HELD), against a real server: a dataset file copied in
(renamed into place, or written in two halves) starts its job; an upload posted to a
``pending:`` job starts it; a hold deadline ends a job in ERROR saying why; ABORT of a HELD
job; a HELD job survives a restart and runs when its file comes."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import BACKENDS, ServerProcess

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "astro_otf" / "data" / "sample.fits"


def dataset_server(tmp: Path, folder: Path, database_url: str | None = None) -> ServerProcess:
    return ServerProcess(
        tmp / "data",
        database_url,
        datasets=json.dumps([{"name": "incoming", "path": str(folder), "description": "t"}]),
    )


@pytest.fixture(scope="module", params=BACKENDS)
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp(f"otf-held-{request.param}")
    folder = tmp / "incoming"
    folder.mkdir()
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_databases").create()
    proc = dataset_server(tmp, folder, url)
    proc.start()
    yield proc, folder
    proc.stop()


@pytest.fixture
def client(setup: tuple[ServerProcess, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=setup[0].url, timeout=60) as c:
        yield c


def create(client: httpx.Client, **fields: str) -> str:
    r = client.post("/jobs", data=fields)
    assert r.status_code == 303, r.text
    return r.headers["location"].rstrip("/").rsplit("/", 1)[-1]


def job(client: httpx.Client, job_id: str, wait: int | None = None) -> dict:
    params = {"WAIT": str(wait)} if wait is not None else {}
    r = client.get(f"/jobs/{job_id}", params=params, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


def wait_final(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    doc = job(client, job_id)
    while doc["phase"] not in ("COMPLETED", "ERROR", "ABORTED") and time.monotonic() < deadline:
        doc = job(client, job_id, wait=5)
    return doc


def test_missing_file_without_hold_is_refused(client: httpx.Client) -> None:
    r = client.post("/jobs", data={"IMAGE": "dataset:incoming/typo.fits", "PHASE": "RUN"})
    assert r.status_code == 400
    assert r.text.startswith("IMAGE:") and "HOLD=" in r.text


def test_held_job_starts_when_its_file_is_renamed_in(
    client: httpx.Client, setup: tuple[ServerProcess, Path]
) -> None:
    folder = setup[1]
    job_id = create(
        client, IMAGE="dataset:incoming/renamed.fits", HOLD="600", PHASE="RUN", NOCACHE="true"
    )
    doc = job(client, job_id)
    assert doc["phase"] == "HELD"
    held = doc["jobInfo"]["held"]
    assert held["ref"] == "dataset:incoming/renamed.fits" and held["deadline"] == "HOLD"
    # WAIT blocks on a HELD job (it moves by itself)
    started = time.monotonic()
    assert job(client, job_id, wait=1)["phase"] == "HELD"
    assert time.monotonic() - started >= 0.9
    shutil.copyfile(SAMPLE, folder / ".renamed.fits.part")
    os.replace(folder / ".renamed.fits.part", folder / "renamed.fits")
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc
    assert doc["jobInfo"]["input"]["dataset_path"] == "renamed.fits"
    assert doc["jobInfo"]["waited"]["ref"] == "dataset:incoming/renamed.fits"
    votable = client.get(f"/jobs/{job_id}/results/result").text
    assert "renamed.fits" in votable
    # the job that waited computed what a job on the file now there computes: reused
    again = job(client, create(client, IMAGE="dataset:incoming/renamed.fits", PHASE="RUN"))
    assert again["phase"] == "COMPLETED" and again["jobInfo"]["cached_from"] == job_id


def test_slow_copy_is_taken_only_once_complete(
    client: httpx.Client, setup: tuple[ServerProcess, Path]
) -> None:
    folder = setup[1]
    job_id = create(client, IMAGE="dataset:incoming/slow.fits", HOLD="600", PHASE="RUN")
    data = SAMPLE.read_bytes()
    with (folder / "slow.fits").open("wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        # the first half has been seen (well past the watcher's batching): still HELD
        assert job(client, job_id, wait=2)["phase"] == "HELD"
        f.write(data[len(data) // 2 :])
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc
    assert doc["jobInfo"]["input"]["bytes"] == len(data)


def test_pending_upload_starts_its_job(client: httpx.Client) -> None:
    job_id = create(client, IMAGE="pending:field.fits", PHASE="RUN", NOCACHE="true")
    assert job(client, job_id)["phase"] == "HELD"
    # another parameter is not what it waits for
    r = client.post(f"/jobs/{job_id}/parameters", data={"thresh": "5"})
    assert r.status_code == 409
    with SAMPLE.open("rb") as f:
        r = client.post(
            f"/jobs/{job_id}/parameters", files={"IMAGE": ("field.fits", f, "application/fits")}
        )
    assert r.status_code == 303, r.text
    assert job(client, job_id)["phase"] in ("QUEUED", "EXECUTING", "COMPLETED")
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc
    assert doc["jobInfo"]["input"]["filename"] == "field.fits"


def test_hold_deadline_ends_in_error(client: httpx.Client) -> None:
    job_id = create(client, IMAGE="dataset:incoming/never.fits", HOLD="1", PHASE="RUN")
    doc = wait_final(client, job_id, timeout=30)
    assert doc["phase"] == "ERROR"
    message = client.get(f"/jobs/{job_id}/error").text
    assert "dataset:incoming/never.fits" in message
    assert "HOLD deadline" in message and "was not there" in message


def test_abort_a_held_job(client: httpx.Client, uws_schema: etree.XMLSchema) -> None:
    job_id = create(client, IMAGE="pending:x.fits", PHASE="RUN")
    assert job(client, job_id)["phase"] == "HELD"
    # the job document stays UWS 1.1 (HELD is one of its phases), saying what it waits for
    xml = etree.fromstring(client.get(f"/jobs/{job_id}").content)
    uws_schema.assertValid(xml)
    assert b"pending:x.fits" in etree.tostring(xml)
    r = client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
    assert r.status_code == 303
    assert job(client, job_id)["phase"] == "ABORTED"


def test_pending_then_run_waits_then_takes_the_file(
    client: httpx.Client, setup: tuple[ServerProcess, Path]
) -> None:
    folder = setup[1]
    job_id = create(client, IMAGE="dataset:incoming/later.fits", HOLD="600")
    assert job(client, job_id)["phase"] == "PENDING"
    assert client.post(f"/jobs/{job_id}/phase", data={"PHASE": "RUN"}).status_code == 303
    assert job(client, job_id)["phase"] == "HELD"
    shutil.copyfile(SAMPLE, folder / "later.fits.tmp")
    os.replace(folder / "later.fits.tmp", folder / "later.fits")
    assert wait_final(client, job_id)["phase"] == "COMPLETED"


def test_held_job_survives_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    proc = dataset_server(tmp_path, folder)
    proc.start()
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            before = create(c, IMAGE="dataset:incoming/r1.fits", HOLD="600", PHASE="RUN")
            during = create(c, IMAGE="dataset:incoming/r2.fits", HOLD="600", PHASE="RUN")
        proc.stop()
        # one file comes while no server runs
        shutil.copyfile(SAMPLE, folder / "r2.fits")
        proc.start()
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            assert wait_final(c, during)["phase"] == "COMPLETED"
            assert job(c, before)["phase"] == "HELD"
            shutil.copyfile(SAMPLE, folder / "r1.tmp")
            os.replace(folder / "r1.tmp", folder / "r1.fits")
            assert wait_final(c, before)["phase"] == "COMPLETED"
    finally:
        proc.stop()


def test_destruction_set_earlier_ends_the_wait_then(client: httpx.Client) -> None:
    job_id = create(client, IMAGE="dataset:incoming/far.fits", HOLD="3600", PHASE="RUN")
    assert job(client, job_id)["jobInfo"]["held"]["deadline"] == "HOLD"
    later = "2099-01-01T00:00:00Z"  # clamped to now + max_destruction_days: after the HOLD
    r = client.post(f"/jobs/{job_id}/destruction", data={"DESTRUCTION": later})
    assert r.status_code == 303
    assert job(client, job_id)["jobInfo"]["held"]["deadline"] == "HOLD"  # later: unchanged
    in_a_minute = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    r = client.post(f"/jobs/{job_id}/destruction", data={"DESTRUCTION": in_a_minute})
    assert r.status_code == 303
    doc = job(client, job_id)
    assert doc["phase"] == "HELD"
    held = doc["jobInfo"]["held"]
    assert held["deadline"] == "DESTRUCTION"
    assert held["until"].startswith(in_a_minute[:16])
    client.delete(f"/jobs/{job_id}")
