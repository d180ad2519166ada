"""Command apps through a real server: PyBDSF and Aegean in their own environments (built by
``make apps``), on small real images (2-D, 4-D cubes, a Galactic WCS), give VOTables with the
same standard columns, units and UCDs as a sep job's; ABORT kills the finder's process; an
operator's manifest runs a finder with no code; an app whose environment is missing is
listed as unavailable and refused with a 400 naming MODEL."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse
from astropy.wcs import WCS

from astro_otf.results.catalogue import CATALOGUE_COLUMNS
from tests.conftest import REAL_DATA, REPO_ROOT, ServerProcess
from tests.integration.test_uws_api import create, wait_final, wait_phase

APPS_DIR = REPO_ROOT / ".apps"

pytestmark = [
    pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning"),
    pytest.mark.skipif(
        not (APPS_DIR / "pybdsf" / "bin" / "python").exists()
        or not (APPS_DIR / "aegean" / "bin" / "aegean").exists(),
        reason="the command apps' environments are missing: run `make apps` (make test does)",
    ),
]

#: (model, image, the sources the finder is expected to find: a range)
CASES = [
    ("aegean", "aegean/synthetic_test.fits", (102, 102)),
    ("pybdsf", "pyse/GRB201006A_final_2min_srcs-t0002-image-pb_cutout.fits", (3, 6)),
    ("aegean", "pybdsf/tbdsf_process_image.in_fits.pybdsf.ch0_I.fits", (35, 55)),  # 4-D
    ("pybdsf", "pyse/SWIFT_554620-130504.fits", (1, 2)),  # 4-D, AMI
    ("aegean", "astroquery/magpis_G10.5+0.0.fits", (10, 25)),  # GLON/GLAT
    ("pybdsf", "astroquery/magpis_G10.5+0.0.fits", (8, 16)),
]

#: An operator's finder: a script that writes a CSV of the brightest pixel (FITS pixels).
TINY_SCRIPT = """
import csv, sys
import numpy as np
from astropy.io import fits

image, out, level = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = fits.getdata(image)
y, x = np.unravel_index(np.nanargmax(data), data.shape)
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["X", "Y", "PEAK", "LEVEL"])
    w.writerow([x + 1, y + 1, data[y, x], level])
print("brightest pixel", x, y)
"""

TINY_MANIFEST = """
kind = "command"
id = "brightest"
version = "0.1"
description = "Operator test finder: the brightest pixel."
environment = "{env}"
command = ["{{python}}", "{{app_dir}}/find.py", "{{image}}", "{{workdir}}/out.csv", "{{level}}"]
needs_beam = false

[output]
path = "out.csv"
format = "csv"

[[parameters]]
name = "level"
type = "float"
default = 4.0
description = "Echoed back."

[columns]
x = {{ from = "X", unit = "pix", origin = 1 }}
y = {{ from = "Y", unit = "pix", origin = 1 }}
peak_flux = {{ from = "PEAK", unit = "image" }}
score = {{ from = "LEVEL" }}
"""

GHOST_MANIFEST = TINY_MANIFEST.replace('id = "brightest"', 'id = "ghost"')


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("operator-models")
    tiny = root / "brightest" / "0.1"
    tiny.mkdir(parents=True)
    (tiny / "find.py").write_text(TINY_SCRIPT)
    (tiny / "manifest.toml").write_text(TINY_MANIFEST.format(env=sys.prefix))
    ghost = root / "ghost" / "0.1"
    ghost.mkdir(parents=True)
    (ghost / "find.py").write_text(TINY_SCRIPT)
    (ghost / "manifest.toml").write_text(GHOST_MANIFEST.format(env="ghost-env"))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-apps") / "data",
        None,
        apps_dir=str(APPS_DIR),
        models_dirs=json.dumps([str(models_dir)]),
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def fields_of(client: httpx.Client, job_id: str) -> list[tuple[str, str, str]]:
    """(name, unit, ucd) of each FIELD of the job's VOTable."""
    body = client.get(f"/jobs/{job_id}/results/result").content
    table = parse(_bytes(body)).get_first_table()
    return [(f.name, str(f.unit or ""), str(f.ucd or "")) for f in table.fields]


def _bytes(body: bytes) -> Any:
    import io

    return io.BytesIO(body)


def votable(client: httpx.Client, job_id: str) -> Any:
    body = client.get(f"/jobs/{job_id}/results/result").content
    return parse(_bytes(body))


@pytest.fixture(scope="module")
def finished(client: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every case, and a sep job per image, all submitted at once and waited for."""
    ids = {}
    for model, rel, _ in CASES:
        ids[(model, rel)] = create(client, {"PHASE": "RUN", "MODEL": model}, REAL_DATA / rel)
        ids[("sep", rel)] = create(client, {"PHASE": "RUN", "MODEL": "sep"}, REAL_DATA / rel)
    return {key: wait_final(client, job_id, timeout=240) for key, job_id in ids.items()}


@pytest.mark.parametrize(("model", "rel", "expected"), CASES, ids=[f"{m}:{r}" for m, r, _ in CASES])
def test_apps_give_the_standard_votable(
    client: httpx.Client,
    finished: dict[Any, dict[str, Any]],
    model: str,
    rel: str,
    expected: tuple[int, int],
) -> None:
    job, sep_job = finished[(model, rel)], finished[("sep", rel)]
    assert job["phase"] == "COMPLETED", job.get("errorSummary")
    assert sep_job["phase"] == "COMPLETED", sep_job.get("errorSummary")
    ours, theirs = fields_of(client, job["jobId"]), fields_of(client, sep_job["jobId"])
    n_standard = 15  # the standard columns without class and tile
    assert [f[0] for f in ours[:n_standard]] == [
        c.name for c in CATALOGUE_COLUMNS if c.name not in ("class", "tile")
    ]
    # the same standard columns (names, order, units, UCDs), then local_rms like sep's
    assert ours[: n_standard + 1] == theirs[: n_standard + 1]
    assert ours[n_standard][0] == "local_rms"
    doc = votable(client, job["jobId"])
    table = doc.get_first_table().to_table()
    low, high = expected
    assert low <= len(table) <= high, (model, rel, len(table))
    # every source lies on the image and in ICRS: its pixel agrees with its RA/Dec
    image = fits.open(REAL_DATA / rel)[0]
    wcs = WCS(image.header).celestial
    ny, nx = image.data.shape[-2:]
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    assert np.all((x > -3) & (x < nx + 2) & (y > -3) & (y < ny + 2))
    from astropy.coordinates import SkyCoord

    sky = SkyCoord(table["ra"], table["dec"], unit="deg", frame="icrs")
    px, py = wcs.world_to_pixel(sky)
    np.testing.assert_allclose(px, x, atol=1e-3)
    np.testing.assert_allclose(py, y, atol=1e-3)
    assert np.all(np.isfinite(table["peak_flux"])) and np.all(table["maj"] > 0)
    assert np.all((table["pa"] >= 0) & (table["pa"] <= 180))
    # the same PARAMs (image facts) as sep's, and the app's environment in the INFOs
    params = {p.name for p in doc.get_first_table().params}
    sep_params = {p.name for p in votable(client, sep_job["jobId"]).get_first_table().params}
    facts = {"region_width", "region_height", "pixel_scale", "frame", "beam_major", "rms"}
    assert facts <= params and facts <= sep_params
    infos = {i.name: i.value for i in doc.resources[0].infos} | {i.name: i.value for i in doc.infos}
    package = "bdsf" if model == "pybdsf" else "aegeantools"
    assert package in infos.get("app_packages", ""), infos
    assert "numpy 2.3.5" in infos["app_packages"]
    assert infos["model_id"] == model


def test_synthetic_sources_match_the_truth(
    client: httpx.Client, finished: dict[Any, dict[str, Any]]
) -> None:
    job = finished[("aegean", "aegean/synthetic_test.fits")]
    table = votable(client, job["jobId"]).get_first_table().to_table()
    truth = np.genfromtxt(
        REAL_DATA / "aegean" / "synthetic_test_truth.csv", delimiter=",", names=True
    )
    from astropy.coordinates import SkyCoord

    ours = SkyCoord(table["ra"], table["dec"], unit="deg")
    names = truth.dtype.names
    assert names is not None
    ra_name = next(n for n in names if n.lower().startswith("ra"))
    dec_name = next(n for n in names if n.lower().startswith("dec"))
    ref = SkyCoord(truth[ra_name], truth[dec_name], unit="deg")
    _, sep, _ = ref.match_to_catalog_sky(ours)
    assert np.sum(sep.arcsec < 10) >= 100


def test_provenance_names_the_environment(
    client: httpx.Client, finished: dict[Any, dict[str, Any]]
) -> None:
    job = finished[("pybdsf", "pyse/GRB201006A_final_2min_srcs-t0002-image-pb_cutout.fits")]
    text = client.get(f"/jobs/{job['jobId']}/results/provenance").text
    assert "bdsf" in text and "1.14.1" in text
    assert "run_bdsf.py" in text  # the command line and the driver script
    assert "requirements.txt" in text
    log = client.get(f"/jobs/{job['jobId']}/results/finder_log")  # PyBDSF's own log
    assert log.status_code == 200, log.text
    assert "PyBDSF version 1.14.1" in log.text


def test_region_of_interest_keeps_only_its_sources(client: httpx.Client) -> None:
    image = REAL_DATA / "aegean" / "synthetic_test.fits"
    wcs = WCS(fits.getheader(image)).celestial
    centre = wcs.pixel_to_world(128, 128).icrs
    job_id = create(
        client,
        {
            "PHASE": "RUN",
            "MODEL": "aegean",
            "RA": f"{centre.ra.deg:.6f}",
            "DEC": f"{centre.dec.deg:.6f}",
            "WIDTH": "100",
            "HEIGHT": "100",
        },
        image,
    )
    job = wait_final(client, job_id, timeout=120)
    assert job["phase"] == "COMPLETED", job.get("errorSummary")
    table = votable(client, job_id).get_first_table().to_table()
    assert 5 <= len(table) < 102
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    assert np.all((x >= 77.5) & (x < 178.5) & (y >= 77.5) & (y < 178.5))


def test_abort_kills_the_finder(client: httpx.Client, server: ServerProcess) -> None:
    """PyBDSF takes minutes on the 1000 x 1000 Scorpio image: ABORT must end its process."""
    image = REAL_DATA / "caesar" / "ScorpioS17Field.fits"
    job_id = create(client, {"PHASE": "RUN", "MODEL": "pybdsf", "NOCACHE": "true"}, image)
    wait_phase(client, job_id, "EXECUTING", timeout=60)
    deadline = time.monotonic() + 60
    pid = None
    while pid is None and time.monotonic() < deadline:
        for path in (server.data_dir / "jobs").glob(f"**/{job_id}/**/child.pid"):
            pid = int(path.read_text())
        if pid is None:
            for path in server.data_dir.glob("**/child.pid"):
                if job_id in str(path):
                    pid = int(path.read_text())
        time.sleep(0.2)
    assert pid is not None, "the finder never started"
    assert Path(f"/proc/{pid}").exists()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"run_bdsf.py" in cmdline
    r = client.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
    assert r.status_code == 303, r.text
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), "the finder outlived its aborted job"
    assert client.get(f"/jobs/{job_id}/phase").text == "ABORTED"


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # a zombie is dead, only not yet reaped


def test_an_operator_manifest_runs_with_no_code(client: httpx.Client) -> None:
    image = REAL_DATA / "astroquery" / "first_J105007+304037.fits"
    job_id = create(client, {"PHASE": "RUN", "MODEL": "brightest", "LEVEL": "7.5"}, image)
    job = wait_final(client, job_id, timeout=60)
    assert job["phase"] == "COMPLETED", job.get("errorSummary")
    table = votable(client, job_id).get_first_table().to_table()
    assert len(table) == 1
    data = np.squeeze(fits.getdata(image))
    y, x = np.unravel_index(np.nanargmax(data), data.shape)
    assert (table["x"][0], table["y"][0]) == (x, y)
    assert table["score"][0] == pytest.approx(7.5)
    assert table["peak_flux"][0] == pytest.approx(float(data[y, x]), rel=1e-6)
    described = client.get("/models/brightest").json()
    assert described["available"] is True and described["kind"] == "command"


def test_unavailable_app_is_listed_with_its_reason_and_refused(client: httpx.Client) -> None:
    models = {m["id"]: m for m in client.get("/models").json()["models"]}
    assert models["pybdsf"]["available"] is True and models["aegean"]["available"] is True
    assert models["sep"]["available"] is True
    ghost = models["ghost"]
    assert ghost["available"] is False
    assert "ghost-env is missing" in ghost["reason"] and "make apps" in ghost["reason"]
    assert client.get("/models/ghost").json()["reason"] == ghost["reason"]
    pages = {}
    for page in ("/ui/models", "/ui/models/pybdsf", "/ui/models/ghost", "/ui/submit"):
        # the web pages too (without the API client: a page sets a browser cookie, which
        # then needs CSRF)
        answer = httpx.get(f"{client.base_url}{page}", timeout=30)
        assert answer.status_code == 200, page
        pages[page] = answer.text
    assert "ghost-env is missing" in pages["/ui/models"]  # the page says why, not just "no"
    assert "ghost-env is missing" in pages["/ui/models/ghost"]
    assert "ghost-env" not in pages["/ui/models/pybdsf"]
    # the submit form offers it, greyed out, saying so
    assert re.search(
        r'<option value="ghost"[^>]*\bdisabled\b[^>]*>[^<]*\(unavailable\)', pages["/ui/submit"]
    )
    image = REAL_DATA / "astroquery" / "first_J105007+304037.fits"
    r = client.post(
        "/jobs",
        data={"MODEL": "ghost"},
        files={"IMAGE": ("img.fits", image.open("rb"), "application/fits")},
    )
    assert r.status_code == 400, r.text
    assert "MODEL" in r.text and "ghost-env is missing" in r.text


def test_a_finder_failure_is_a_clear_error(client: httpx.Client) -> None:
    """An image without a beam: the app says what to add instead of the finder crashing."""
    image = REAL_DATA / "aegean" / "synthetic_test.fits"
    with fits.open(image) as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data
    for key in ("BMAJ", "BMIN", "BPA"):
        header.remove(key, ignore_missing=True)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nobeam-{os.getpid()}.fits"
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
    try:
        job_id = create(client, {"PHASE": "RUN", "MODEL": "aegean"}, path)
        job = wait_final(client, job_id, timeout=60)
    finally:
        path.unlink()
    assert job["phase"] == "ERROR"
    assert "BMAJ" in str(job.get("errorSummary"))


def _child_pid(data_dir: Path, job_id: str, timeout: float = 60) -> int:
    """The pid of the finder the job started (its work folder's child.pid)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in (data_dir / "jobs" / job_id).glob("**/child.pid"):
            text = path.read_text().strip()
            if text:
                return int(text)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never started its finder")


def test_abort_on_dask_kills_the_finder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Dask task cannot be interrupted, but the finder it waits on is killed when the
    task is cancelled (ABORT)."""
    from tests.conftest import free_port
    from tests.integration.test_dask import DaskCluster, wait_ready

    cluster = DaskCluster(tmp_path_factory.mktemp("dask-apps"), free_port(), workers=1)
    cluster.start()
    proc = ServerProcess(
        tmp_path_factory.mktemp("otf-dask-apps") / "data",
        None,
        executor="dask",
        dask_address=cluster.address,
        apps_dir=str(APPS_DIR),
    )
    try:
        proc.start(ready=False)
        wait_ready(proc)
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            image = REAL_DATA / "caesar" / "ScorpioS17Field.fits"
            job_id = create(c, {"PHASE": "RUN", "MODEL": "pybdsf", "NOCACHE": "true"}, image)
            pid = _child_pid(proc.data_dir, job_id)
            assert b"run_bdsf.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
            r = c.post(f"/jobs/{job_id}/phase", data={"PHASE": "ABORT"})
            assert r.status_code == 303, r.text
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            assert not _alive(pid), "the finder outlived its cancelled Dask task"
            assert c.get(f"/jobs/{job_id}/phase").text == "ABORTED"
    finally:
        proc.stop()
        cluster.stop()
