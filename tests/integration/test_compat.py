"""CIANNA On-The-Fly clients: a multipart POST to ``/jobs/`` with the job description in
field ``xml`` (a ``uws:job`` document) and the image in field ``fits``.

The shared document ``../shared/compat/cianna_otf_parameters.xml`` is the shape those
clients send. These tests change only what they must (model, quantization, centre) and
check that the request becomes a normal job of this service, or a clear 400.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.wcs import WCS
from lxml import etree

from tests.conftest import ServerProcess

ROI = 128
JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def image(real_data: Path) -> Path:
    return real_data / "aegean" / "synthetic_test.fits"


@pytest.fixture(scope="module")
def shared_xml(shared_dir: Path) -> bytes:
    return (shared_dir / "compat" / "cianna_otf_parameters.xml").read_bytes()


@pytest.fixture(scope="module")
def geometry(image: Path) -> dict[str, float]:
    """Centre of the image on the sky and in 0-based pixels, read from its header."""
    header = fits.getheader(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header)
    nx, ny = header["NAXIS1"], header["NAXIS2"]
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    centre = wcs.pixel_to_world(cx, cy).icrs
    return {
        "ra": float(centre.ra.deg),
        "dec": float(centre.dec.deg),
        "x": cx,
        "y": cy,
        "nx": nx,
        "ny": ny,
    }


def cianna_xml(
    template: bytes,
    *,
    model: str | None = "sep",
    quantization: str | None = "FP32C_FP32A",
    ra: float | None = None,
    dec: float | None = None,
    roi: int | None = ROI,
    fits_path: str | None = None,
) -> bytes:
    """The shared document with some ``uws:parameter`` values replaced (None: left as is)."""
    root = etree.fromstring(template)
    values: dict[str, str | None] = {
        "ModelName": model,
        "ModelId": model,
        "Quantization": quantization,
        "RA": None if ra is None else f"{ra:.8f}",
        "DEC": None if dec is None else f"{dec:.8f}",
        "ROI_Width": None if roi is None else str(roi),
        "ROI_Height": None if roi is None else str(roi),
        "FITS_Path": fits_path,
    }
    for el in root.iter("{*}parameter"):
        new = values.get(el.get("id", ""))
        if new is not None:
            el.text = new
    return bytes(etree.tostring(root, xml_declaration=True, encoding="utf-8"))


def post_cianna(
    server: ServerProcess, xml: bytes, image: Path, *, xml_as_file: bool = False
) -> httpx.Response:
    """POST as a CIANNA client does: to /jobs/ (trailing slash), fields ``xml`` and ``fits``."""
    xml_part: tuple[str | None, bytes, str] | tuple[None, bytes] = (
        ("job.xml", xml, "application/xml") if xml_as_file else (None, xml)
    )
    return httpx.post(
        f"{server.url}/jobs/",
        files={
            "xml": xml_part,
            "fits": (image.name, image.read_bytes(), "application/octet-stream"),
        },
        timeout=30,
    )


def job_dirs(server: ServerProcess) -> set[str]:
    root = server.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def wait_final(url: str, timeout: float = 60) -> dict[str, object]:
    doc: dict[str, object] = {}
    for _ in range(int(timeout / 5) + 1):
        doc = httpx.get(url, params={"WAIT": "5"}, headers=JSON, timeout=30).json()
        if doc["phase"] in ("COMPLETED", "ERROR", "ABORTED"):
            break
    return doc


@pytest.mark.parametrize("xml_as_file", [False, True], ids=["xml-field", "xml-file-part"])
def test_cianna_request_runs_a_sep_job_on_the_roi(
    server: ServerProcess,
    image: Path,
    shared_xml: bytes,
    geometry: dict[str, float],
    tmp_path: Path,
    xml_as_file: bool,
) -> None:
    # FITS_Path names a FIFO: a server that opened it would block on it, and a blocked or
    # open reader is visible to a non-blocking writer (ENXIO means no reader ever waited).
    fifo = tmp_path / "client-side.fits"
    os.mkfifo(fifo)
    xml = cianna_xml(shared_xml, ra=geometry["ra"], dec=geometry["dec"], fits_path=str(fifo))

    response = post_cianna(server, xml, image, xml_as_file=xml_as_file)
    assert response.status_code == 303, response.text
    url = response.headers["location"]
    assert url.startswith(f"{server.url}/jobs/")
    assert not url.endswith("/jobs/")

    params = httpx.get(f"{url}/parameters", headers=JSON, timeout=10).json()
    assert params["model"] == "sep"
    assert params["precision"] == "fp32"
    assert float(params["ra"]) == pytest.approx(geometry["ra"], abs=1e-7)
    assert float(params["dec"]) == pytest.approx(geometry["dec"], abs=1e-7)
    assert params["width"] == str(ROI)
    assert params["height"] == str(ROI)
    assert params["image"] == f"{url}/parameters/image"
    lowered = {k.lower() for k in params}
    for cianna_only in (
        "fits_path",
        "clientversion",
        "timestamp",
        "modelname",
        "modelid",
        "quantization",
        "roi_width",
        "roi_height",
    ):
        assert cianna_only not in lowered, params

    # No PHASE=RUN was sent: a CIANNA submission is queued at once and completes.
    doc = wait_final(url)
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    assert doc["runId"] == "radio-detector"  # the document's runId is kept as the job's
    assert str(fifo) not in httpx.get(url, timeout=10).text  # the path is nowhere in the job

    # The uploaded `fits` part is the job's IMAGE, byte for byte.
    stored = httpx.get(f"{url}/parameters/image", timeout=10)
    assert stored.status_code == 200
    assert stored.content == image.read_bytes()

    # Sources only inside the 128 x 128 region around the centre.
    catalogue = tmp_path / "cat.vot"
    result = httpx.get(f"{url}/results/result", timeout=10)
    assert result.status_code == 200
    catalogue.write_bytes(result.content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = parse_single_table(str(catalogue)).to_table()
    assert len(table) >= 3
    half = ROI / 2 + 1
    x = np.asarray(table["x"], dtype=float)
    y = np.asarray(table["y"], dtype=float)
    assert np.all(np.abs(x - geometry["x"]) <= half), x
    assert np.all(np.abs(y - geometry["y"]) <= half), y
    # Far fewer sources than the whole image's ~102.
    assert len(table) < 40

    # The FITS_Path was never opened.
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        assert exc.errno == errno.ENXIO
    else:
        os.close(fd)
        pytest.fail(f"the server opened the client-side FITS_Path {fifo}")


def test_unmodified_cianna_request_runs_the_trained_detector(
    server: ServerProcess, real_data: Path, shared_xml: bytes, tmp_path: Path
) -> None:
    """The shared document as a CIANNA client sends it: ModelId radio-detector (our trained
    detector), FP32C_FP32A, a 128 px region at RA 284.5, Dec -66 of the image it names."""
    image = real_data / "aegean" / "1904-66_SIN.fits"
    response = post_cianna(server, shared_xml, image)
    assert response.status_code == 303, response.text
    url = response.headers["location"]
    params = httpx.get(f"{url}/parameters", headers=JSON, timeout=10).json()
    assert (params["model"], params["precision"]) == ("radio-detector", "fp32")
    doc = wait_final(url)
    assert doc["phase"] == "COMPLETED", doc.get("errorSummary")
    catalogue = tmp_path / "cat.xml"
    catalogue.write_bytes(httpx.get(f"{url}/results/result", timeout=10).content)
    assert 'name="model_id" value="radio-detector"' in catalogue.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = parse_single_table(str(catalogue)).to_table()
    assert len(table) >= 1
    for axis in ("x", "y"):  # all within the 128 px region
        assert np.ptp(np.asarray(table[axis], dtype=float)) <= ROI


def test_unknown_model_is_400_naming_model_and_cianna_field(
    server: ServerProcess, image: Path, shared_xml: bytes
) -> None:
    before = job_dirs(server)
    response = post_cianna(server, cianna_xml(shared_xml, model="yolo-cianna"), image)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("text/plain")
    message = response.text
    assert "MODEL" in message
    assert "yolo-cianna" in message
    assert "ModelId" in message or "ModelName" in message
    assert "sep" in message and "radio-detector" in message  # it says what is available
    assert job_dirs(server) == before


def test_unsupported_quantization_is_400_naming_precision(
    server: ServerProcess, image: Path, shared_xml: bytes, geometry: dict[str, float]
) -> None:
    before = job_dirs(server)
    xml = cianna_xml(shared_xml, quantization="FP16C_FP32A", ra=geometry["ra"], dec=geometry["dec"])
    response = post_cianna(server, xml, image)
    assert response.status_code == 400, response.text
    message = response.text
    assert "PRECISION" in message
    assert "Quantization" in message
    assert "fp16" in message
    assert "fp64" in message and "fp32" in message  # what sep offers
    assert job_dirs(server) == before


def test_unreadable_quantization_is_400(
    server: ServerProcess, image: Path, shared_xml: bytes
) -> None:
    response = post_cianna(server, cianna_xml(shared_xml, quantization="HALF"), image)
    assert response.status_code == 400, response.text
    assert "PRECISION" in response.text
    assert "HALF" in response.text


@pytest.mark.parametrize(
    "document",
    [
        b"<uws:job xmlns:uws='http://www.ivoa.net/xml/UWS/v1.0'><uws:parameters>",
        b"this is not XML at all",
        b"<?xml version='1.0'?><votable/>",
    ],
    ids=["truncated", "not-xml", "not-a-job"],
)
def test_malformed_xml_is_400(server: ServerProcess, image: Path, document: bytes) -> None:
    before = job_dirs(server)
    for as_file in (False, True):
        response = post_cianna(server, document, image, xml_as_file=as_file)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert "xml" in response.text.lower()
    assert job_dirs(server) == before


def test_xml_entities_are_not_expanded(
    server: ServerProcess,
    image: Path,
    shared_xml: bytes,
    geometry: dict[str, float],
    tmp_path: Path,
) -> None:
    """An external entity in the document must not pull a server file into the job."""
    secret = tmp_path / "secret.txt"
    marker = "S3CRET-7f1e2d"
    secret.write_text(marker)
    xml = cianna_xml(shared_xml, ra=geometry["ra"], dec=geometry["dec"]).decode()
    xml = xml.replace(
        "<?xml version='1.0' encoding='utf-8'?>",
        "<?xml version='1.0' encoding='utf-8'?>\n"
        f'<!DOCTYPE job [<!ENTITY secret SYSTEM "file://{secret}">]>',
    ).replace(">radio-detector</uws:runId>", ">&secret;</uws:runId>")
    assert "<!DOCTYPE" in xml and "&secret;" in xml
    response = post_cianna(server, xml.encode(), image)
    assert response.status_code in (303, 400), response.text
    assert marker not in response.text
    if response.status_code == 303:
        url = response.headers["location"]
        assert marker not in httpx.get(url, timeout=10).text
        httpx.delete(url, timeout=10)
