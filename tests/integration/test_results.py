"""Every result of a finished job, on every real image in ../shared/data/real/, through the
running service: the VOTable passes the XSD, astropy and STILTS votlint and pyvo reads it; the
CSV, JSON, DS9 and PNG results are what they say; the provenance parses back with ``prov`` and
names the sha256 of the input and of the model; a replayed job gives the same catalogue; a
failed job's error is offered as a DALI error VOTable."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from astropy.io.votable import parse, validate
from astropy.table import Table
from lxml import etree
from PIL import Image
from prov.model import ProvDocument
from pyvo.dal import AsyncTAPJob
from regions import Regions

from astro_otf.models.registry import RegistryConfig, build_registry
from astro_otf.results.preview import display_shape
from tests.conftest import ServerProcess
from tests.integration.test_uws_api import create, job_json, wait_final

# one backend is enough here: what is tested is the worker's output, not the store
pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)

REAL_IMAGES = [
    "aegean/1904-66_SIN.fits",
    "aegean/synthetic_test.fits",
    "astroquery/first_J105007+304037.fits",
    "astroquery/magpis_G10.5+0.0.fits",
    "caesar/ScorpioExtendedSourceField.fits",
    "caesar/ScorpioS17Field.fits",
    "pybdsf/tbdsf_process_image.in_fits.pybdsf.ch0_I.fits",
    "pyse/GRB201006A_final_2min_srcs-t0002-image-pb_cutout.fits",
    "pyse/SWIFT_554620-130504.fits",
]
PRODUCTS = {
    "result": "application/x-votable+xml",
    "csv": "text/csv",
    "json": "application/json",
    "ds9": "text/x-ds9-region",
    "preview": "image/png",
    "provenance": "application/json",
}
STANDARD = [
    "id",
    "ra",
    "dec",
    "ra_err",
    "dec_err",
    "peak_flux",
    "peak_flux_err",
    "int_flux",
    "int_flux_err",
    "maj",
    "min",
    "pa",
    "score",
    "x",
    "y",
]  # fmt: skip (then "class" and "tile" where they apply)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Any:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stilts() -> str:
    path = shutil.which("stilts")
    if path is None:
        pytest.fail("stilts is not installed: `make deb-test` installs the Debian package")
    return path


@pytest.fixture(scope="module")
def finished(client: httpx.Client, real_data: Path) -> dict[str, dict[str, Any]]:
    """One sep job and one trained-detector job per real image, one matched-filter job and
    one empty catalogue, all submitted at once and waited for."""
    ids = {rel: create(client, {"PHASE": "RUN"}, real_data / rel) for rel in REAL_IMAGES}
    for rel in REAL_IMAGES:
        ids[f"detector:{rel}"] = create(
            client, {"PHASE": "RUN", "MODEL": "radio-detector"}, real_data / rel
        )
    ids["matched-filter"] = create(
        client,
        {"PHASE": "RUN", "MODEL": "matched-filter"},
        real_data / "aegean/synthetic_test.fits",
    )
    ids["empty"] = create(client, {"PHASE": "RUN", "SEED": "1000"}, real_data / REAL_IMAGES[2])
    return {key: wait_final(client, job_id, timeout=180) for key, job_id in ids.items()}


def fetch(client: httpx.Client, job_id: str, result_id: str) -> bytes:
    r = client.get(f"/jobs/{job_id}/results/{result_id}")
    assert r.status_code == 200, r.text
    return r.content


def votlint(stilts: str, path: Path) -> list[str]:
    lint = subprocess.run(
        [stilts, "votlint", "validate=true", f"votable={path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert lint.returncode == 0, lint.stderr
    # votlint exits 0 even when it reports problems: any output line is a finding
    return [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prov_attributes(doc: ProvDocument) -> dict[str, dict[str, list[str]]]:
    """Each record's attributes as text, by the record's identifier."""
    out: dict[str, dict[str, list[str]]] = {}
    for record in doc.get_records():
        if record.identifier is None:
            continue
        attrs: dict[str, list[str]] = {}
        for name, value in record.attributes:
            attrs.setdefault(str(name), []).append(str(value))
        out[str(record.identifier)] = attrs
    return out


def entities_with(doc: ProvDocument, text: str) -> list[str]:
    return [rid for rid, attrs in prov_attributes(doc).items() if any(
        text in v for values in attrs.values() for v in values
    )]  # fmt: skip


@pytest.mark.parametrize(
    "image", [*REAL_IMAGES, *(f"detector:{r}" for r in REAL_IMAGES), "matched-filter", "empty"]
)
def test_every_result_is_valid_and_listed(
    image: str,
    finished: dict[str, dict[str, Any]],
    client: httpx.Client,
    server: ServerProcess,
    real_data: Path,
    tmp_path: Path,
    stilts: str,
    votable_schema: etree.XMLSchema,
) -> None:
    doc = finished[image]
    job_id = doc["jobId"]
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    listed = {r["id"]: r for r in doc["results"]}
    assert list(listed) == list(PRODUCTS)
    # the preview is listed but not drawn until it is asked for: its size is not known yet
    results_dir = server.data_dir / "jobs" / job_id / "results"
    assert not (results_dir / "preview.png").exists()
    assert listed["preview"]["size"] is None
    bodies = {}
    for result_id, mime in PRODUCTS.items():
        assert listed[result_id]["mimeType"] == mime
        bodies[result_id] = fetch(client, job_id, result_id)
        if result_id != "preview":
            assert int(listed[result_id]["size"]) == len(bodies[result_id])
    assert (results_dir / "preview.png").read_bytes() == bodies["preview"]  # kept

    # the VOTable: XSD, astropy, votlint; INFOs, PARAMs, and the standard columns
    path = tmp_path / "catalogue.xml"
    path.write_bytes(bodies["result"])
    assert votable_schema.validate(etree.parse(str(path))), votable_schema.error_log
    report = io.StringIO()
    assert validate(str(path), output=report), report.getvalue()
    assert votlint(stilts, path) == []
    votable = parse(str(path))
    resource = votable.resources[0]
    infos = {i.name: i.value for i in resource.infos}
    assert infos["QUERY_STATUS"] == "OK"
    assert infos["job_id"] == job_id
    assert infos["owner"] == "anonymous"
    model = "matched-filter" if image == "matched-filter" else "sep"
    if image.startswith("detector:"):
        model = "radio-detector"
    assert infos["model_id"] == model
    assert infos["model_version"] == doc["jobInfo"]["model_version"]
    assert infos["software_version"].startswith("astro-otf ")
    assert infos["batch_id"] == doc["jobInfo"]["batch_id"]
    assert any(name.startswith("param:") for name in infos)
    table = votable.get_first_table()
    params = {p.name: p for p in table.params}
    assert {"region_width", "region_height", "pixel_scale", "image_width"} <= set(params)
    assert [f.name for f in table.fields][: len(STANDARD)] == STANDARD
    for field in table.fields:  # a UCD on each; a unit on each but the dimensionless ones
        assert field.ucd, field.name
        unitless = ("id", "class", "tile", "score", "flag", "snr")
        assert field.unit is not None or field.name in unitless
    catalogue = table.to_table()
    rows = len(catalogue)
    assert rows == doc["jobInfo"]["n_sources"]
    if image == "empty":
        assert rows == 0
    if model != "sep":
        assert infos["model_sha256"] and "tile" in catalogue.colnames
        assert not np.ma.is_masked(catalogue["tile"][0]) if rows else True

    # pyvo, the reference client, reads the catalogue
    pyvo_table = AsyncTAPJob(f"{server.url}/jobs/{job_id}", delete=False).fetch_result()
    assert len(pyvo_table) == rows

    # CSV and JSON carry the same rows
    csv = Table.read(bodies["csv"].decode(), format="ascii.csv")
    assert len(csv) == rows and csv.colnames[: len(STANDARD)] == STANDARD
    if rows:
        np.testing.assert_allclose(csv["ra"], catalogue["ra"], rtol=0, atol=1e-9)
    data = json.loads(bodies["json"])
    assert len(data["rows"]) == rows
    assert [c["name"] for c in data["columns"]][: len(STANDARD)] == STANDARD
    assert data["infos"]["job_id"] == job_id

    # DS9 regions: one per source with a position, at that position
    reg = tmp_path / "catalogue.reg"
    reg.write_bytes(bodies["ds9"])
    regions = Regions.read(str(reg), format="ds9")
    finite = [r for r in catalogue if math.isfinite(r["ra"]) and math.isfinite(r["dec"])]
    assert len(regions) == len(finite)
    if finite:
        assert regions[0].center.icrs.ra.deg == pytest.approx(finite[0]["ra"], abs=1e-6)

    # the preview is a PNG of the searched region
    assert bodies["preview"][:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(bodies["preview"])) as picture:
        region = (int(params["region_height"].value), int(params["region_width"].value))
        assert (picture.height, picture.width) == display_shape(region)

    # provenance: parses back and names the sha256 of the input and every other result
    prov = ProvDocument.deserialize(content=bodies["provenance"].decode(), format="json")
    upload = image.removeprefix("detector:") if image != "empty" else REAL_IMAGES[2]
    if image == "matched-filter":
        upload = "aegean/synthetic_test.fits"
    assert entities_with(prov, sha256((real_data / upload).read_bytes()))
    for result_id in ("result", "csv", "json", "ds9"):
        assert entities_with(prov, sha256(bodies[result_id])), result_id
    # the preview, drawn after the job ended, is named as drawn on demand, with no hash
    (preview,) = entities_with(prov, "preview.png")
    attributes = prov_attributes(prov)[preview]
    assert attributes["otf:onDemand"] == ["true"] and "otf:sha256" not in attributes
    assert not entities_with(prov, sha256(bodies["preview"]))
    if model != "sep":
        app = build_registry(RegistryConfig()).get(model)
        assert entities_with(prov, app.model.sha256("fp32"))  # type: ignore[attr-defined]
        assert entities_with(prov, infos["model_sha256"])


def test_provenance_in_every_format(
    finished: dict[str, dict[str, Any]], client: httpx.Client
) -> None:
    job_id = finished["matched-filter"]["jobId"]
    url = f"/jobs/{job_id}/provenance"
    as_json = client.get(url)
    assert as_json.status_code == 200
    assert as_json.headers["content-type"].startswith("application/json")
    ProvDocument.deserialize(content=as_json.text, format="json")

    as_xml = client.get(url, headers={"Accept": "application/xml"})
    assert as_xml.status_code == 200 and as_xml.headers["content-type"].startswith(
        "application/xml"
    )
    etree.fromstring(as_xml.content)
    back = ProvDocument.deserialize(content=as_xml.content, format="xml")
    assert len(back.get_records()) == len(
        ProvDocument.deserialize(content=as_json.text, format="json").get_records()
    )

    provn = client.get(url, params={"FORMAT": "provn"})
    assert provn.status_code == 200
    assert provn.headers["content-type"].startswith("text/provenance-notation")
    assert "activity(" in provn.text and "wasGeneratedBy(" in provn.text

    svg = client.get(url, headers={"Accept": "image/svg+xml"})
    if shutil.which("dot"):
        assert svg.status_code == 200 and b"<svg" in svg.content
    else:
        assert svg.status_code == 406

    refused = client.get(url, headers={"Accept": "image/png"})
    assert refused.status_code == 406
    assert "application/json" in refused.text
    bad = client.get(url, params={"FORMAT": "yaml"})
    assert bad.status_code == 400 and "FORMAT" in bad.text


def test_provenance_of_an_unfinished_job_is_not_found(client: httpx.Client) -> None:
    job_id = create(client, {"MODEL": "sleep", "DURATION": "1"})
    r = client.get(f"/jobs/{job_id}/provenance")
    assert r.status_code == 404 and "PENDING" in r.text


@pytest.mark.parametrize("image", ["aegean/synthetic_test.fits", "matched-filter"])
def test_replay_gives_the_same_catalogue(
    image: str, finished: dict[str, dict[str, Any]], client: httpx.Client
) -> None:
    old = finished[image]["jobId"]
    r = client.post(f"/jobs/{old}/rerun", data={"PHASE": "RUN"})
    assert r.status_code == 303, r.text
    new = r.headers["location"].rsplit("/", 1)[-1]
    assert new != old
    doc = wait_final(client, new, timeout=120)
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    before = parse(io.BytesIO(fetch(client, old, "result")))
    after = parse(io.BytesIO(fetch(client, new, "result")))
    a, b = before.get_first_table().array, after.get_first_table().array
    assert a.dtype == b.dtype and len(a) == len(b)
    for name in a.dtype.names:
        np.testing.assert_array_equal(np.ma.getdata(a[name]), np.ma.getdata(b[name]), name)
        np.testing.assert_array_equal(np.ma.getmaskarray(a[name]), np.ma.getmaskarray(b[name]))
    infos = {i.name: i.value for i in after.resources[0].infos}
    assert infos["job_id"] == new
    old_params = {k: v for k, v in job_json(client, old)["parameters"].items() if k != "image"}
    new_params = {k: v for k, v in doc["parameters"].items() if k != "image"}
    assert new_params == old_params
    # the same input bytes, by their recorded sha256
    assert (
        fetch(client, new, "provenance").count(
            sha256(client.get(f"/jobs/{old}/parameters/image").content).encode()
        )
        >= 1
    )


def test_rerun_refusals(finished: dict[str, dict[str, Any]], client: httpx.Client) -> None:
    pending = create(client, {"MODEL": "sleep", "DURATION": "1"})
    r = client.post(f"/jobs/{pending}/rerun")
    assert r.status_code == 409 and "PENDING" in r.text
    assert client.post("/jobs/0000000000000000/rerun").status_code == 404
    done = finished["aegean/synthetic_test.fits"]["jobId"]
    r = client.post(f"/jobs/{done}/rerun", data={"THRESH": "abc"})  # overrides are checked
    assert r.status_code == 400 and "thresh" in r.text.lower()
    r = client.post(f"/jobs/{done}/rerun", data={"MODEL": "sleep"})  # the model is not changed
    assert r.status_code == 400 and "model" in r.text.lower()
    r = client.post(f"/jobs/{done}/rerun", data={"PHASE": "ABORT"})
    assert r.status_code == 400 and "PHASE" in r.text.upper()
    before = len(client.get("/jobs", headers={"Accept": "application/json"}).json()["jobs"])
    assert before >= 1  # refused reruns created nothing
    r = client.post(f"/jobs/{done}/rerun")  # without PHASE=RUN it waits, PENDING
    assert r.status_code == 303
    assert job_json(client, r.headers["location"].rsplit("/", 1)[-1])["phase"] == "PENDING"


def test_error_document_as_text_and_as_votable(
    client: httpx.Client, tmp_path: Path, votable_schema: etree.XMLSchema
) -> None:
    bogus = tmp_path / "notes.fits"
    bogus.write_bytes(b"these are not the pixels you are looking for\n")
    job_id = create(client, {"PHASE": "RUN"}, bogus)
    doc = wait_final(client, job_id)
    assert doc["phase"] == "ERROR"
    message = doc["errorSummary"]["message"]
    text = client.get(f"/jobs/{job_id}/error")
    assert text.status_code == 200 and text.text == message
    for kwargs in (
        {"headers": {"Accept": "application/x-votable+xml"}},
        {"params": {"FORMAT": "votable"}},
    ):
        r = client.get(f"/jobs/{job_id}/error", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-votable+xml")
        tree = etree.fromstring(r.content)
        assert votable_schema.validate(tree), votable_schema.error_log
        status = parse(io.BytesIO(r.content)).resources[0].infos[0]
        assert (status.name, status.value, status.content) == ("QUERY_STATUS", "ERROR", message)
    bad = client.get(f"/jobs/{job_id}/error", params={"FORMAT": "pdf"})
    assert bad.status_code == 400 and "FORMAT" in bad.text
    # a failed job lists no result and has no provenance
    assert doc["results"] == []
    assert client.get(f"/jobs/{job_id}/provenance").status_code == 404


def test_preview_is_drawn_on_the_first_request_once(
    client: httpx.Client, server: ServerProcess, real_data: Path
) -> None:
    job_id = create(client, {"PHASE": "RUN", "NOCACHE": "true"}, real_data / REAL_IMAGES[0])
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    results_dir = server.data_dir / "jobs" / job_id / "results"
    png = results_dir / "preview.png"
    assert not png.exists()
    xml = client.get(f"/jobs/{job_id}/results").text  # UWS: size is optional; none yet
    assert 'id="preview"' in xml and "preview.plan" not in xml
    with ThreadPoolExecutor(4) as pool:  # four clients at once
        answers = list(pool.map(lambda _: client.get(f"/jobs/{job_id}/results/preview"), range(4)))
    assert [r.status_code for r in answers] == [200] * 4
    assert all(r.headers["content-type"] == "image/png" for r in answers)
    assert len({r.content for r in answers}) == 1
    assert answers[0].content[:8] == b"\x89PNG\r\n\x1a\n"
    inode = png.stat().st_ino
    assert [p.name for p in results_dir.iterdir() if p.name.startswith(".")] == []  # no tmp
    again = client.get(f"/jobs/{job_id}/results/preview")
    assert again.content == answers[0].content and png.stat().st_ino == inode  # kept
    # a preview whose input is gone is a 404 saying why, and the job is unharmed
    job_id = create(client, {"PHASE": "RUN", "NOCACHE": "true"}, real_data / REAL_IMAGES[0])
    assert wait_final(client, job_id)["phase"] == "COMPLETED"
    (server.data_dir / "jobs" / job_id / "inputs" / "image.fits").unlink()
    r = client.get(f"/jobs/{job_id}/results/preview")
    assert r.status_code == 404 and "cannot be drawn" in r.text and "input image" in r.text
    assert client.get(f"/jobs/{job_id}/results/result").status_code == 200
    assert job_json(client, job_id)["phase"] == "COMPLETED"
    # a deleted job's preview is a 404
    assert client.delete(f"/jobs/{job_id}").status_code in (200, 204, 303)
    assert client.get(f"/jobs/{job_id}/results/preview").status_code == 404
    assert client.get("/jobs/0000000000000000/results/preview").status_code == 404


def test_preview_can_be_turned_off(client: httpx.Client, real_data: Path) -> None:
    job_id = create(client, {"PHASE": "RUN", "PREVIEW": "false"}, real_data / REAL_IMAGES[1])
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    assert [r["id"] for r in doc["results"]] == [p for p in PRODUCTS if p != "preview"]
    assert client.get(f"/jobs/{job_id}/results/preview").status_code == 404
    prov = ProvDocument.deserialize(content=fetch(client, job_id, "provenance").decode())
    assert not entities_with(prov, "preview.png")
    r = client.post("/jobs", data={"PREVIEW": "sometimes"})
    assert r.status_code == 400 and "preview" in r.text.lower()
