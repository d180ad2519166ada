"""``otf datasets`` and ``otf submit --dataset`` (the installed console script) against a
real server with a dataset of real images: one job per image, one run id, catalogues
written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.e2e.test_cli_e2e import otf

IMAGES = ("astroquery/first_J105007+304037.fits", "aegean/1904-66_SIN.fits")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, real_data: Path) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("otf-datasets-cli")
    folder = tmp / "survey"
    folder.mkdir()
    for name in IMAGES:
        shutil.copyfile(real_data / name, folder / Path(name).name)
    (folder / "skip_me.fit").write_bytes((real_data / IMAGES[0]).read_bytes())
    proc = ServerProcess(
        tmp / "data",
        None,
        datasets=json.dumps([{"name": "survey", "path": str(folder), "description": "two"}]),
    )
    proc.start()
    yield proc
    proc.stop()


def test_datasets_lists_names_and_images(server: ServerProcess) -> None:
    done = otf(server.url, "datasets")
    assert done.returncode == 0, done.stderr
    assert "survey" in done.stdout and "two" in done.stdout
    done = otf(server.url, "datasets", "survey", "--json")
    assert done.returncode == 0, done.stderr
    images = json.loads(done.stdout)["images"]
    assert sorted(i["path"] for i in images) == [
        "1904-66_SIN.fits",
        "first_J105007+304037.fits",
        "skip_me.fit",
    ]
    table = otf(server.url, "datasets", "survey")
    assert "192 x 192" in table.stdout and "1420.406" in table.stdout
    missing = otf(server.url, "datasets", "nope")
    assert missing.returncode == 4 and "no dataset named" in missing.stderr


def test_submit_a_dataset_as_one_run(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "cats"
    done = otf(
        server.url,
        "submit",
        "--dataset",
        "survey",
        "--glob",
        "*.fits",
        "--no-cache",
        "--out",
        str(out),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["1904-66_SIN.xml", "first_J105007+304037.xml"]
    jobs = httpx.get(
        f"{server.url}/jobs", params={"RUNID": "survey"}, headers={"Accept": "application/json"}
    ).json()
    listed = jobs["jobs"] if isinstance(jobs, dict) else jobs
    assert len(listed) == 2
    assert "first_J105007+304037.fits" in (out / "first_J105007+304037.xml").read_text()


def test_glob_without_dataset_and_no_match(server: ServerProcess) -> None:
    assert otf(server.url, "submit", "--glob", "*.fits").returncode == 2
    done = otf(server.url, "submit", "--dataset", "survey", "--glob", "*.nothing")
    assert done.returncode == 2 and "no complete image" in done.stderr
