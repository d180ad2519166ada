"""Hostile and careless input, on SQLite and on PostgreSQL: every client mistake is a 4xx
whose text names the parameter and says what is wrong, and none of them harms the service or
another user's jobs.

The cases come from a test campaign against the running service: a tiny FITS whose header
declares a huge image, a gzip bomb, control characters and over-long values in RUNID,
out-of-range list filters, impossible job ids and oversized multipart text fields. They are
all answered by the HTTP layer and JobService (and, for the database's limits, the store), so
the service runs in the test's process (tests/inprocess.py), its jobs on a fake executor.
"""

from __future__ import annotations

import gzip
import io
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from astropy.io import fits
from lxml import etree

from tests.inprocess import InProcessService

UWS = "{http://www.ivoa.net/xml/UWS/v1.0}"
JSON = {"Accept": "application/json"}
#: The pixel cap of the capped server: image2d.fits (64 x 64) fits, a 128 x 128 image not.
SMALL_PIXEL_CAP = 10_000
SMALL_FORM_CAP = 64 * 1024
SMALL_UPLOAD_LIMIT = 4 * 1024 * 1024


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessService]:
    """The service with its default limits, once on SQLite and once on PostgreSQL (the
    database's own limits are part of what is tested: RUNID's length, LAST, AFTER)."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_databases").create()
    data_dir = tmp_path_factory.mktemp(f"otf-{request.param}") / "data"
    with InProcessService(data_dir, database_url=url) as service:
        yield service


@pytest.fixture(scope="module")
def client(server: InProcessService) -> httpx.Client:
    """A client of ``server``, shared by the module's tests."""
    return server.client()


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessService]:
    """A service with small caps on pixels, text fields and uploads (SQLite)."""
    with InProcessService(
        tmp_path_factory.mktemp("otf-capped") / "data",
        max_image_pixels=SMALL_PIXEL_CAP,
        max_form_bytes=SMALL_FORM_CAP,
        max_upload_bytes=SMALL_UPLOAD_LIMIT,
    ) as service:
        yield service


# -- FITS files made for the occasion ----------------------------------------------------------


def image_header(nx: int, ny: int, bitpix: int = -32) -> fits.Header:
    """A 2-D image header with a sky WCS and a beam, declaring ``nx x ny`` pixels."""
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = bitpix
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    for key, value in {
        "CTYPE1": "RA---SIN",
        "CTYPE2": "DEC--SIN",
        "CRVAL1": 150.0,
        "CRVAL2": 2.0,
        "CRPIX1": nx / 2,
        "CRPIX2": ny / 2,
        "CDELT1": -0.0005,
        "CDELT2": 0.0005,
        "BMAJ": 0.0015,
        "BMIN": 0.0015,
    }.items():
        header[key] = value
    return header


def lying_fits(nx: int, ny: int, data_bytes: int = 2880) -> bytes:
    """A header declaring ``nx x ny`` float32 pixels, followed by far fewer bytes."""
    header: str = image_header(nx, ny).tostring()
    return header.encode("ascii") + b"\0" * data_bytes


def real_fits(n: int) -> bytes:
    """A complete ``n x n`` float32 FITS of noise."""
    rng = np.random.default_rng(1)
    data = rng.normal(0, 1e-3, (n, n)).astype(np.float32)
    out = io.BytesIO()
    fits.PrimaryHDU(data, image_header(n, n)).writeto(out)
    return out.getvalue()


def post_image(
    client: httpx.Client, body: bytes, fields: dict[str, str] | None = None, name: str = "i.fits"
) -> httpx.Response:
    """POST /jobs with ``body`` as the IMAGE part (and ``fields``)."""
    return client.post(
        "/jobs", data=fields or {}, files={"IMAGE": (name, body, "application/fits")}
    )


def job_dirs(server: InProcessService) -> set[str]:
    """The names of the job folders on disk (a refused creation must leave none)."""
    root = server.data_dir / "jobs"
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def new_job(client: httpx.Client, **fields: str) -> str:
    """A new sleep job (0.1 s); its id."""
    r = client.post("/jobs", data={"MODEL": "sleep", "DURATION": "0.1", **fields})
    assert r.status_code == 303, r.text
    return r.headers["location"].rsplit("/", 1)[-1]


def list_ok(client: httpx.Client) -> None:
    """The job list and a job document still answer, in XML and JSON."""
    xml = client.get("/jobs")
    assert xml.status_code == 200, xml.text
    etree.fromstring(xml.content)
    js = client.get("/jobs", headers=JSON)
    assert js.status_code == 200, js.text
    js.json()


# -- 1: an image header that declares more than the file holds, or more than the cap ----------


def test_header_declaring_a_huge_image_is_refused_at_upload(
    client: httpx.Client, server: InProcessService
) -> None:
    """The campaign's 5.7 kB FITS declaring 1 000 000 x 1 000 000 pixels: refused before a job
    exists (the scheduler never sees it), naming IMAGE and the pixel cap."""
    body = lying_fits(1_000_000, 1_000_000)
    assert len(body) < 8000
    before = job_dirs(server)
    r = post_image(client, body, {"PHASE": "RUN"})
    assert r.status_code == 413, r.text
    assert "IMAGE" in r.text and "max_image_pixels" in r.text
    assert str(2**30) in r.text  # the default cap, named
    assert job_dirs(server) == before
    # and the service goes on: another user's job runs
    job_id = new_job(client, PHASE="RUN")
    assert wait_final(client, job_id)["phase"] == "COMPLETED"


def test_header_declaring_more_data_than_the_file_holds_is_400(
    client: httpx.Client, server: InProcessService
) -> None:
    """A header that declares more pixels than the file holds is 400 naming IMAGE and the
    truncation; no job folder stays."""
    before = job_dirs(server)
    r = post_image(client, lying_fits(3000, 3000))
    assert r.status_code == 400, r.text
    assert "IMAGE" in r.text and "36000000" in r.text and "truncated" in r.text
    assert job_dirs(server) == before


def test_replacing_the_image_with_a_lying_one_is_refused_and_keeps_the_old(
    client: httpx.Client, test_data: Path
) -> None:
    """A lying image sent to a PENDING job's parameters is refused and the job keeps its image."""
    good = (test_data / "image2d.fits").read_bytes()
    r = post_image(client, good)
    assert r.status_code == 303, r.text
    url = r.headers["location"]
    bad = client.post(
        f"{url}/parameters", files={"IMAGE": ("x.fits", lying_fits(5000, 5000), "image/fits")}
    )
    assert bad.status_code == 400 and "IMAGE" in bad.text, bad.text
    assert client.get(f"{url}/parameters/image").content == good
    client.delete(url)


def test_pixel_cap_is_configurable(capped_server: InProcessService, test_data: Path) -> None:
    """max_image_pixels moves the cap: a 64 x 64 image passes, a 128 x 128 one is 413 saying so."""
    with capped_server.client() as c:
        small = post_image(c, (test_data / "image2d.fits").read_bytes())
        assert small.status_code == 303, small.text
        big = post_image(c, real_fits(128))
        assert big.status_code == 413, big.text
        assert "IMAGE" in big.text and str(SMALL_PIXEL_CAP) in big.text
        assert "128 x 128" in big.text


def test_tile_compressed_fits_is_accepted(client: httpx.Client, test_data: Path) -> None:
    """FITS tile compression is not a byte-stream compression: it is accepted, under the
    pixel cap (its ZNAXISn)."""
    r = post_image(client, (test_data / "compressed_image.fits").read_bytes())
    assert r.status_code == 303, r.text
    client.delete(r.headers["location"])


def test_tile_compressed_fits_over_the_cap_is_413(
    capped_server: InProcessService, tmp_path: Path
) -> None:
    """A tile-compressed image is held to the pixel cap by its ZNAXISn."""
    path = tmp_path / "big_compressed.fits"
    data = np.zeros((200, 200), dtype=np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, image_header(200, 200))]).writeto(path)
    with capped_server.client() as c:
        r = post_image(c, path.read_bytes())
    assert r.status_code == 413, r.text
    assert "IMAGE" in r.text and "200 x 200" in r.text


# -- 2: byte-stream compression would bypass the upload limit ---------------------------------


@pytest.mark.parametrize("kind", ["gzip", "bzip2", "xz"])
def test_compressed_upload_is_inflated_and_stored_uncompressed(
    client: httpx.Client, kind: str
) -> None:
    """The CLI and GUI send .fits.gz as it is: the server inflates it at upload, under the
    upload limit, and the job holds the plain FITS (astropy never inflates it later)."""
    import bz2
    import lzma

    raw = real_fits(64)
    compressors: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.compress,
        "bzip2": bz2.compress,
        "xz": lzma.compress,
    }
    body = compressors[kind](raw)
    r = post_image(client, body, name="i.fits.gz")
    assert r.status_code == 303, r.text
    url = r.headers["location"]
    assert client.get(f"{url}/parameters/image").content == raw
    client.delete(url)


def test_gzip_bomb_is_held_to_the_upload_limit(
    capped_server: InProcessService, test_data: Path
) -> None:
    """A few kB of gzip inflating past max_upload_bytes: 413 naming IMAGE and the limit,
    nothing stored."""
    raw = image_header(2000, 2000).tostring().encode() + bytes(2000 * 2000 * 4)
    body = gzip.compress(raw)
    assert len(body) < SMALL_UPLOAD_LIMIT < len(raw)
    before = job_dirs(capped_server)
    with capped_server.client() as c:
        r = post_image(c, body, {"PHASE": "RUN"}, name="bomb.fits.gz")
        assert r.status_code == 413, r.text
        assert "IMAGE" in r.text and "gzip" in r.text and str(SMALL_UPLOAD_LIMIT) in r.text
        assert job_dirs(capped_server) == before
        # and the same through a parameter update: the old image stays
        good = (test_data / "image2d.fits").read_bytes()
        made = post_image(c, good)
        assert made.status_code == 303, made.text
        url = made.headers["location"]
        bad = c.post(f"{url}/parameters", files={"IMAGE": ("b.fits.gz", body)})
        assert bad.status_code == 413 and "IMAGE" in bad.text, bad.text
        assert c.get(f"{url}/parameters/image").content == good
        c.delete(url)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"\x1f\x8b\x08\x00" + b"\x00" * 100, "cannot be inflated"),
        (b"PK\x03\x04" + b"\x00" * 100, "zip"),
        (b"\x1f\x9d" + b"\x00" * 100, "compress"),
    ],
)
def test_damaged_or_unsupported_compression_is_400(
    client: httpx.Client, server: InProcessService, body: bytes, words: str
) -> None:
    """Broken gzip, zip and Unix compress are 400 naming IMAGE and asking for an uncompressed file;
    nothing is stored."""
    before = job_dirs(server)
    r = post_image(client, body, {"PHASE": "RUN"})
    assert r.status_code == 400, r.text
    assert "IMAGE" in r.text and words in r.text and "uncompressed" in r.text
    assert job_dirs(server) == before


# -- 3 and 4: RUNID and text parameters -------------------------------------------------------


@pytest.mark.parametrize("run_id", ["x\x01y", "a\x00b", "tab\there", "line\nbreak", "c1\x85"])
def test_control_characters_in_runid_are_refused(client: httpx.Client, run_id: str) -> None:
    """A RUNID with a control character is 400 naming RUNID; the listings still answer."""
    r = client.post("/jobs", data={"MODEL": "sleep", "DURATION": "0.1", "RUNID": run_id})
    assert r.status_code == 400, r.text
    assert "RUNID" in r.text and "character" in r.text
    list_ok(client)


def test_percent_encoded_control_character_in_runid_is_refused(client: httpx.Client) -> None:
    """A control character percent-encoded in a form body is refused the same way."""
    r = client.post(
        "/jobs",
        content=b"MODEL=sleep&DURATION=0.1&RUNID=x%01y",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and "RUNID" in r.text, r.text
    list_ok(client)


def test_runid_length_is_limited_identically_on_both_stores(client: httpx.Client) -> None:
    """RUNID takes 255 characters on both databases, and 256 or more is 400 naming the limit."""
    ok = new_job(client, RUNID="r" * 255)
    assert client.get(f"/jobs/{ok}", headers=JSON).json()["runId"] == "r" * 255
    for length in (256, 100_000):
        r = client.post("/jobs", data={"MODEL": "sleep", "DURATION": "0.1", "RUNID": "r" * length})
        assert r.status_code == 400, r.text[:300]
        assert "RUNID" in r.text and "255" in r.text
    list_ok(client)


def wait_final(client: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """The job's JSON document once it has ended, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = client.get(f"/jobs/{job_id}", params={"WAIT": 5}, headers=JSON).json()
        if doc["phase"] in ("COMPLETED", "ERROR", "ABORTED") or time.monotonic() > deadline:
            return doc


def test_runid_of_a_rerun_is_checked(client: httpx.Client) -> None:
    """A rerun's RUNID is checked like a creation's."""
    job_id = new_job(client, PHASE="RUN")
    assert wait_final(client, job_id)["phase"] == "COMPLETED"
    r = client.post(f"/jobs/{job_id}/rerun", data={"RUNID": "bad\x07bell"})
    assert r.status_code == 400 and "RUNID" in r.text, r.text
    again = client.post(f"/jobs/{job_id}/rerun", data={"RUNID": "good"})
    assert again.status_code == 303, again.text
    list_ok(client)


def test_control_characters_in_parameters_are_refused(client: httpx.Client) -> None:
    """Control characters and over-long values in parameters are 400 naming them; the job keeps its
    values."""
    r = client.post("/jobs", data={"MODEL": "sleep\x00", "DURATION": "0.1"})
    assert r.status_code == 400 and "MODEL" in r.text, r.text
    job_id = new_job(client)
    r = client.post(f"/jobs/{job_id}/parameters", data={"DURATION": "1\x1b"})
    assert r.status_code == 400 and "DURATION" in r.text, r.text
    r = client.post(f"/jobs/{job_id}/parameters", data={"DURATION": "1" * 2000})
    assert r.status_code == 400 and "DURATION" in r.text and "1024" in r.text, r.text[:300]
    list_ok(client)
    assert client.get(f"/jobs/{job_id}", headers=JSON).json()["parameters"]["duration"] == "0.1"


# -- 5: list filters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LAST", "99999999999999999999"),
        ("LAST", "9" * 5000),
        ("LAST", "²"),
        ("LAST", "-3"),
        ("AFTER", "0001-01-01T00:00:00+01:00"),
        ("AFTER", "9999-12-31T23:59:59-01:00"),
        ("AFTER", "2026-13-01"),
        ("PHASE", "EXPLODING"),
    ],
)
def test_list_filters_out_of_range_are_400(client: httpx.Client, name: str, value: str) -> None:
    """LAST, AFTER and PHASE out of range are 400 naming the filter, in XML and JSON, on both
    databases."""
    for headers in ({}, JSON):
        r = client.get("/jobs", params={name: value}, headers=headers)
        assert r.status_code == 400, r.text[:300]
        assert name in r.text


def test_large_but_sane_last_is_accepted(client: httpx.Client) -> None:
    """A big LAST within the limit is served."""
    assert client.get("/jobs", params={"LAST": "1000000"}).status_code == 200


# -- 6: job ids that cannot be ids ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["a%00b", "%00", "x" * 300, "%C3%A9t%C3%A9", "..%2F..", "0123456789abcdeg"]
)
def test_impossible_job_ids_are_404(client: httpx.Client, path: str) -> None:
    """Ids that cannot be job ids are 404 on every job resource, never a database error."""
    for method, suffix in (
        ("GET", ""),
        ("GET", "/phase"),
        ("GET", "/parameters"),
        ("GET", "/results/result"),
        ("GET", "/error"),
        ("GET", "/provenance"),
        ("DELETE", ""),
        ("POST", "/phase"),
    ):
        r = client.request(
            method,
            f"/jobs/{path}{suffix}",
            data={"PHASE": "RUN"} if method == "POST" else None,
            params={"WAIT": "1"} if suffix == "" and method == "GET" else None,
        )
        assert r.status_code == 404, (method, suffix, r.status_code, r.text[:300])


# -- 7: multipart text fields -------------------------------------------------------------------


def test_text_fields_over_the_form_cap_are_413(client: httpx.Client) -> None:
    """Each field under the 1 MiB a single field may take, all together over the cap."""
    fields = {f"F{i}": "x" * 600_000 for i in range(3)}
    r = client.post("/jobs", data={"MODEL": "sleep", **fields}, files={"other": ("a", b"b")})
    assert r.status_code == 413, r.text[:300]
    assert "max_form_bytes" in r.text and str(1024 * 1024) in r.text


def test_form_cap_holds_while_streaming(capped_server: InProcessService) -> None:
    """No Content-Length: the cap must hold while the text parts arrive."""
    boundary = secrets.token_hex(8)
    sent: list[int] = []

    def body() -> Iterator[bytes]:
        for i in range(60):
            part = (
                (f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n').encode()
                + b"x" * (16 * 1024)
                + b"\r\n"
            )
            sent.append(len(part))
            yield part
        yield f"--{boundary}--\r\n".encode()

    with capped_server.client() as c:
        r = c.post(
            "/jobs",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert r.status_code == 413, r.text[:300]
    assert str(SMALL_FORM_CAP) in r.text


def test_form_encoded_body_over_the_form_cap_is_413(capped_server: InProcessService) -> None:
    """A form-encoded body over max_form_bytes is 413 naming the cap."""
    r = capped_server.client().post(
        "/jobs", data={"MODEL": "sleep", "PADDING": "x" * (SMALL_FORM_CAP + 10)}
    )
    assert r.status_code == 413, r.text[:300]
    assert str(SMALL_FORM_CAP) in r.text
