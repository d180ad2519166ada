"""pyvo, the reference IVOA client, drives astro-otf jobs end to end.

pyvo's ``AsyncTAPJob`` speaks plain UWS 1.1 to any job URL (phase, RUN, blocking WAIT,
results, executionduration, destruction, DELETE), so a job of this service must work with
it unchanged. Each test runs against a real server subprocess, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import io
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import astropy.units as u
import httpx
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS
from lxml import etree
from pyvo.dal.exceptions import DALQueryError
from pyvo.dal.tap import AsyncTAPJob
from pyvo.io.uws import parse_job

from tests.conftest import ServerProcess

FINAL = {"COMPLETED", "ERROR", "ABORTED"}
#: Sources in synthetic_test_truth.csv; sep finds nearly all of them with default settings.
TRUTH_ROWS = 102


@pytest.fixture(scope="module")
def image(real_data: Path) -> Path:
    return real_data / "aegean" / "synthetic_test.fits"


def create_pending(server: ServerProcess, content: bytes, filename: str, **fields: str) -> str:
    """POST a new job (multipart, IMAGE part) without PHASE=RUN; return its absolute URL."""
    response = httpx.post(
        f"{server.url}/jobs",
        files={"IMAGE": (filename, content, "application/octet-stream")},
        data=fields,
        timeout=30,
    )
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(f"{server.url}/jobs/"), location
    return location


def image_footprint(path: Path) -> tuple[float, float, float, float]:
    """(ra_min, ra_max, dec_min, dec_max) of the image's pixel grid, in degrees."""
    header = fits.getheader(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(header)
    nx, ny = header["NAXIS1"], header["NAXIS2"]
    xs, ys = np.meshgrid(np.linspace(-0.5, nx - 0.5, 20), np.linspace(-0.5, ny - 0.5, 20))
    sky = wcs.pixel_to_world(xs.ravel(), ys.ravel())
    return (
        float(sky.ra.deg.min()),
        float(sky.ra.deg.max()),
        float(sky.dec.deg.min()),
        float(sky.dec.deg.max()),
    )


def test_pyvo_drives_a_sep_job_end_to_end(
    server: ServerProcess, image: Path, real_data: Path
) -> None:
    url = create_pending(server, image.read_bytes(), "synthetic_test.fits", MODEL="sep")
    job = AsyncTAPJob(url, delete=False)

    assert job.job_id == url.rsplit("/", 1)[1]
    assert job.phase == "PENDING"
    assert job.uws_version == "1.1"
    assert job.result_uris == []

    # EXECUTIONDURATION can be set while PENDING and reads back in seconds.
    assert job.execution_duration.to_value(u.s) == pytest.approx(3600)
    job.execution_duration = 600
    assert job.execution_duration.to_value(u.s) == pytest.approx(600)

    job.run()
    job.wait(phases=FINAL, timeout=60)
    assert job.phase == "COMPLETED", job.job.errorsummary

    # The catalogue is result "result", first, at the absolute URL TAP clients expect; the
    # other formats and the provenance follow.
    assert job.result_uris == [
        f"{url}/results/{name}"
        for name in ("result", "csv", "json", "ds9", "preview", "provenance")
    ]
    assert job.result_uri == f"{url}/results/result"
    job.raise_if_error()  # a COMPLETED job raises nothing

    table = job.fetch_result().to_table()
    assert TRUTH_ROWS - 2 <= len(table) <= TRUTH_ROWS + 2
    assert {"ra", "dec"} <= set(table.colnames)
    assert table["ra"].unit == u.deg
    assert table["dec"].unit == u.deg
    ra_min, ra_max, dec_min, dec_max = image_footprint(image)
    assert np.all((table["ra"] >= ra_min) & (table["ra"] <= ra_max))
    assert np.all((table["dec"] >= dec_min) & (table["dec"] <= dec_max))

    # Most found sources lie on a true source (the grid is 160 arcsec apart; beam 30 arcsec).
    truth = Table.read(real_data / "aegean" / "synthetic_test_truth.csv", format="ascii.csv")
    found_ra = np.asarray(table["ra"], dtype=float)[:, None]
    found_dec = np.asarray(table["dec"], dtype=float)[:, None]
    d_ra = (found_ra - np.asarray(truth["ra"])[None, :]) * np.cos(np.radians(found_dec))
    d_dec = found_dec - np.asarray(truth["dec"])[None, :]
    nearest_arcsec = np.sqrt(d_ra**2 + d_dec**2).min(axis=1) * 3600
    assert np.mean(nearest_arcsec < 10) > 0.9, np.sort(nearest_arcsec)[-10:]

    # The limit set while PENDING is the one the job ran under.
    assert job.execution_duration.to_value(u.s) == pytest.approx(600)


def test_pyvo_destruction_is_settable_and_clamped(server: ServerProcess, image: Path) -> None:
    url = create_pending(server, image.read_bytes(), "synthetic_test.fits")
    job = AsyncTAPJob(url, delete=False)

    default = job.destruction
    assert isinstance(default, Time)
    now = datetime.now(UTC)
    # Default lifetime: 7 days (Settings.default_destruction_days).
    assert abs((default.to_datetime(timezone=UTC) - (now + timedelta(days=7))).total_seconds()) < 60

    wanted = (now + timedelta(days=2)).replace(microsecond=0, tzinfo=None)
    job.destruction = wanted
    got = job.destruction.to_datetime(timezone=UTC)
    assert abs((got - wanted.replace(tzinfo=UTC)).total_seconds()) < 1
    # The resource and the job document agree.
    text = httpx.get(f"{url}/destruction", timeout=10).text
    assert text.endswith("Z")
    assert (
        abs((Time(text.rstrip("Z"), format="isot").to_datetime(timezone=UTC) - got).total_seconds())
        < 0.01
    )

    # Far future: the server clamps to its maximum (30 days), never past it.
    job.destruction = (now + timedelta(days=365)).replace(tzinfo=None)
    clamped = job.destruction.to_datetime(timezone=UTC)
    assert clamped <= datetime.now(UTC) + timedelta(days=30, seconds=5)
    assert clamped >= now + timedelta(days=29)


def test_pyvo_delete_makes_the_job_gone(server: ServerProcess, image: Path) -> None:
    url = create_pending(server, image.read_bytes(), "synthetic_test.fits")
    job_id = url.rsplit("/", 1)[1]
    job = AsyncTAPJob(url, delete=False)
    job.run()
    job.wait(phases=FINAL, timeout=60)
    assert job.phase == "COMPLETED"

    job.delete()
    assert job.url is None
    gone = httpx.get(url, timeout=10)
    assert gone.status_code == 404
    assert job_id in gone.text
    assert httpx.get(f"{url}/results/result", timeout=10).status_code == 404
    listing = httpx.get(f"{server.url}/jobs", timeout=10)
    assert listing.status_code == 200
    assert job_id not in listing.text
    assert not (server.data_dir / "jobs" / job_id).exists()


def test_pyvo_context_manager_deletes_the_job(server: ServerProcess, image: Path) -> None:
    url = create_pending(server, image.read_bytes(), "synthetic_test.fits")
    with AsyncTAPJob(url) as job:
        assert job.phase == "PENDING"
    assert httpx.get(url, timeout=10).status_code == 404


def test_job_document_parses_with_pyvo(
    server: ServerProcess, image: Path, uws_schema: etree.XMLSchema
) -> None:
    url = create_pending(
        server, image.read_bytes(), "synthetic_test.fits", MODEL="sep", THRESH="4", RUNID="pyvo-1"
    )
    job_id = url.rsplit("/", 1)[1]
    AsyncTAPJob(url, delete=False).run().wait(phases=FINAL, timeout=60)

    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml")
    uws_schema.assertValid(etree.fromstring(response.content))

    doc = parse_job(io.BytesIO(response.content))
    assert doc.version == "1.1"
    assert doc.jobid == job_id
    assert doc.runid == "pyvo-1"
    assert doc.phase == "COMPLETED"
    assert doc.ownerid is None  # anonymous service: xsi:nil
    assert doc.errorsummary is None

    # Times: astropy Times, in order, none in the future; executionDuration a TimeDelta.
    assert isinstance(doc.creationtime, Time)
    assert doc.creationtime <= doc.starttime <= doc.endtime <= Time.now()
    assert (Time.now() - doc.creationtime).to_value(u.s) < 120
    assert doc.executionduration.to_value(u.s) == pytest.approx(3600)
    assert doc.destruction > doc.endtime

    params = {p.id_: p for p in doc.parameters}
    assert params["model"].content == "sep"
    assert params["thresh"].content == "4"
    assert "runid" not in params  # RUNID is a job property, not a parameter
    assert params["image"].byreference is True
    assert params["image"].content == f"{url}/parameters/image"
    stored = httpx.get(params["image"].content, timeout=10)
    assert stored.status_code == 200
    assert stored.content == image.read_bytes()

    assert [r.id_ for r in doc.results] == ["result", "csv", "json", "ds9", "preview", "provenance"]
    result = doc.results[0]
    assert result.href == f"{url}/results/result"
    assert result.mimetype == "application/x-votable+xml"
    for each in doc.results:  # every result is listed with its real size and type
        fetched = httpx.get(each.href, timeout=10)
        assert fetched.status_code == 200
        if each.id_ == "preview":  # drawn on its first request: no size is listed before
            assert fetched.content[:8] == b"\x89PNG\r\n\x1a\n"
            continue
        assert int(each.size) == len(fetched.content)
        assert fetched.headers["content-type"].startswith(each.mimetype)


def test_pyvo_job_that_fails_raises_the_server_error(server: ServerProcess) -> None:
    url = create_pending(server, b"these are not the pixels you are looking for\n", "notes.txt")
    job = AsyncTAPJob(url, delete=False)
    assert job.phase == "PENDING"
    job.raise_if_error()  # nothing wrong yet

    job.run()
    job.wait(phases=FINAL, timeout=60)
    assert job.phase == "ERROR"

    summary = httpx.get(f"{url}/error", timeout=10)
    assert summary.status_code == 200
    message = summary.text.strip()
    assert "FITS" in message  # it says what is wrong with the upload
    assert job.job.errorsummary.type_ == "fatal"
    assert job.job.errorsummary.message.content == message

    with pytest.raises(DALQueryError) as caught:
        job.raise_if_error()
    assert message in str(caught.value)
    assert job.result_uris == []
