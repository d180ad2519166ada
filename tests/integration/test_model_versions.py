"""Two installed versions of one model, through the running service: a job keeps the version
it was created with (MODEL_VERSION, or the newest when none is given), runs it, and its rerun
runs it again; /models lists one entry per model with its versions."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from astropy.io.votable import parse

from astro_otf.domain.job import Job, JobParameter
from astro_otf.domain.phases import Phase
from astro_otf.store.database import make_engine
from astro_otf.store.files import JobFolders
from astro_otf.store.repository import JobStore
from tests.conftest import ServerProcess, install_model_version
from tests.integration.test_uws_api import create, job_json, wait_final

DETECTOR = "radio-detector"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The service with the shipped radio-detector 1.0 and a copy of it installed as 2.0."""
    models = tmp_path_factory.mktemp("models")
    install_model_version(models, "2.0")
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-versions"), None, models_dirs=json.dumps([str(models)])
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def image(real_data: Path) -> Path:
    return real_data / "aegean" / "synthetic_test.fits"


@pytest.fixture(scope="module")
def finished(client: httpx.Client, image: Path) -> dict[str, dict[str, Any]]:
    """A job asking for 1.0 and one naming no version, submitted together."""
    ids = {
        "1.0": create(client, {"PHASE": "RUN", "MODEL": DETECTOR, "Model_Version": "1.0"}, image),
        "default": create(client, {"PHASE": "RUN", "MODEL": DETECTOR}, image),
    }
    return {key: wait_final(client, job_id, timeout=180) for key, job_id in ids.items()}


def catalogue_infos(client: httpx.Client, job_id: str) -> dict[str, str]:
    r = client.get(f"/jobs/{job_id}/results/result")
    assert r.status_code == 200, r.text
    return {i.name: i.value for i in parse(io.BytesIO(r.content)).resources[0].infos}


def test_models_list_one_entry_per_id_with_its_versions(client: httpx.Client) -> None:
    listed = client.get("/models").json()["models"]
    detectors = [m for m in listed if m["id"] == DETECTOR]
    assert len(detectors) == 1
    assert detectors[0]["version"] == "2.0" and detectors[0]["versions"] == ["2.0", "1.0"]
    assert len({m["id"] for m in listed}) == len(listed)
    assert client.get(f"/models/{DETECTOR}").json()["version"] == "2.0"
    old = client.get(f"/models/{DETECTOR}", params={"version": "1.0"}).json()
    assert old["version"] == "1.0" and old["versions"] == ["2.0", "1.0"]
    r = client.get(f"/models/{DETECTOR}", params={"version": "3.0"})
    assert r.status_code == 400 and r.text.startswith("VERSION: '3.0'"), r.text
    assert "2.0, 1.0" in r.text
    assert client.get("/models/nope", params={"version": "1.0"}).status_code == 404


def test_a_job_runs_the_version_it_asked_for(
    finished: dict[str, dict[str, Any]], client: httpx.Client
) -> None:
    doc = finished["1.0"]
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    assert doc["parameters"]["model_version"] == "1.0"
    assert doc["jobInfo"]["model_version"] == "1.0"
    assert catalogue_infos(client, doc["jobId"])["model_version"] == "1.0"


def test_a_job_naming_no_version_stores_and_runs_the_newest(
    finished: dict[str, dict[str, Any]], client: httpx.Client
) -> None:
    doc = finished["default"]
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    assert doc["parameters"]["model_version"] == "2.0"
    assert doc["jobInfo"]["model_version"] == "2.0"
    assert catalogue_infos(client, doc["jobId"])["model_version"] == "2.0"
    # two versions never share a batch
    assert doc["jobInfo"]["batch_id"] != finished["1.0"]["jobInfo"]["batch_id"]


def test_rerun_of_a_1_0_job_runs_1_0(
    finished: dict[str, dict[str, Any]], client: httpx.Client
) -> None:
    old = finished["1.0"]["jobId"]
    r = client.post(f"/jobs/{old}/rerun", data={"PHASE": "RUN"})
    assert r.status_code == 303, r.text
    doc = wait_final(client, r.headers["location"].rsplit("/", 1)[-1], timeout=120)
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    assert doc["parameters"]["model_version"] == "1.0"
    assert doc["jobInfo"]["model_version"] == "1.0"


def test_unknown_version_is_400_naming_model_version(
    client: httpx.Client, image: Path, server: ServerProcess
) -> None:
    before = set((server.data_dir / "jobs").iterdir())
    files = {"IMAGE": ("i.fits", image.open("rb"))}
    r = client.post("/jobs", data={"MODEL": DETECTOR, "MODEL_VERSION": "9.9"}, files=files)
    assert r.status_code == 400, r.text
    assert r.text.startswith("MODEL_VERSION: '9.9'") and "installed: 2.0, 1.0" in r.text
    assert set((server.data_dir / "jobs").iterdir()) == before  # nothing stored


def test_a_pending_job_keeps_its_version_until_its_model_changes(
    client: httpx.Client, image: Path
) -> None:
    job_id = create(client, {"MODEL": DETECTOR, "MODEL_VERSION": "1.0"}, image)
    r = client.post(f"/jobs/{job_id}/parameters", data={"THRESHOLD": "0.5"})
    assert r.status_code == 303, r.text
    assert job_json(client, job_id)["parameters"]["model_version"] == "1.0"  # kept
    sep_version = client.get("/models/sep").json()["version"]
    job_id = create(client, {"MODEL": DETECTOR, "MODEL_VERSION": "1.0"}, image)
    r = client.post(f"/jobs/{job_id}/parameters", data={"MODEL": "sep"})
    assert r.status_code == 303, r.text
    params = job_json(client, job_id)["parameters"]
    assert (params["model"], params["model_version"]) == ("sep", sep_version)


# -- jobs stored before versions were: no model_version parameter ------------------------------


def legacy_job(server: ServerProcess, image: Path, job_id: str, info: dict[str, Any]) -> None:
    """A finished detector job as this service stored it before MODEL_VERSION existed."""
    now = datetime.now(UTC)
    folders = JobFolders(server.data_dir)
    folders.create(job_id)
    folders.input_file(job_id, "image.fits").write_bytes(image.read_bytes())
    store = JobStore(make_engine(f"sqlite:///{server.data_dir / 'otf.sqlite3'}"))
    store.create(
        Job(
            job_id=job_id,
            owner=None,
            run_id=None,
            phase=Phase.COMPLETED,
            model_id=DETECTOR,
            priority=0,
            creation_time=now,
            start_time=now,
            end_time=now,
            execution_duration=600,
            destruction_time=now + timedelta(days=1),
            parameters=[
                JobParameter("model", DETECTOR),
                JobParameter("image", "image.fits", is_file=True),
            ],
            info=info,
        )
    )


@pytest.mark.parametrize(
    ("job_id", "info", "version"),
    [
        ("eeee000000000001", {"model_version": "1.0"}, "1.0"),  # the version its worker ran
        ("eeee000000000002", {}, "2.0"),  # never ran a model: the default
    ],
)
def test_rerun_of_a_job_without_a_stored_version(
    client: httpx.Client,
    server: ServerProcess,
    image: Path,
    job_id: str,
    info: dict[str, Any],
    version: str,
) -> None:
    legacy_job(server, image, job_id, info)
    assert "model_version" not in job_json(client, job_id)["parameters"]
    r = client.post(f"/jobs/{job_id}/rerun")
    assert r.status_code == 303, r.text
    new = job_json(client, r.headers["location"].rsplit("/", 1)[-1])
    assert new["phase"] == "PENDING"
    assert new["parameters"]["model_version"] == version


def test_rerun_of_a_version_no_longer_installed_is_409(
    client: httpx.Client, server: ServerProcess, image: Path
) -> None:
    legacy_job(server, image, "eeee000000000003", {"model_version": "0.9"})
    before = len(client.get("/jobs", headers={"Accept": "application/json"}).json()["jobs"])
    r = client.post("/jobs/eeee000000000003/rerun")
    assert r.status_code == 409, r.text
    assert "version 0.9" in r.text and "2.0, 1.0" in r.text
    assert "not be the same computation" in r.text
    after = len(client.get("/jobs", headers={"Accept": "application/json"}).json()["jobs"])
    assert after == before
