"""Stored uploads (POST /uploads) over real HTTP, on SQLite and on PostgreSQL, in token mode:
content addressing, the FITS checks at upload, the size limit and the quota, owners, deletion;
and the UploadService on the same database and data folder for what jobs and the reaper use
(resolve, expire)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from astro_otf.config import Settings
from astro_otf.data import __file__ as data_init
from astro_otf.domain.errors import ParameterError
from astro_otf.domain.forms import Form, Sink
from astro_otf.service.uploads import UnknownUpload, UploadService
from astro_otf.store.database import make_engine, migrate
from tests.conftest import BACKENDS, ServerProcess
from tests.unit.test_auth_inprocess import ALICE, BOB, TOKENS

SAMPLE = Path(data_init).parent / "sample.fits"
MAX_UPLOAD = 600_000
QUOTA = 1_000_000


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    database_url = None
    if request.param == "postgres":
        database_url = request.getfixturevalue("pg_databases").create()
    proc = ServerProcess(
        tmp_path_factory.mktemp(f"otf-uploads-{request.param}") / "data",
        database_url,
        auth_mode="token",
        tokens=json.dumps(TOKENS),
        max_upload_bytes=str(MAX_UPLOAD),
        upload_quota_bytes=str(QUOTA),
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
    # each test starts with no uploads
    for headers in (ALICE, BOB):
        with httpx.Client(base_url=server.url, timeout=60, headers=headers) as c:
            for upload in c.get("/uploads").json()["uploads"]:
                assert c.delete(f"/uploads/{upload['upload_id']}").status_code == 204


def service_for(server: ServerProcess) -> UploadService:
    """An UploadService on the server's own database and data folder."""
    settings = Settings(
        data_dir=server.data_dir,
        database_url=server.database_url,
        auth_mode="token",
        tokens=TOKENS,
        upload_quota_bytes=QUOTA,
        max_upload_bytes=MAX_UPLOAD,
    )
    return UploadService(settings, make_engine(settings.effective_database_url))


def fits_image(path: Path, shape: tuple[int, int], seed: int = 0) -> Path:
    """A float64 image with a celestial WCS and a radio header."""
    data = np.random.default_rng(seed).normal(size=shape)
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"
    header["CRVAL1"], header["CRVAL2"] = 150.0, 2.0
    header["CRPIX1"], header["CRPIX2"] = shape[1] / 2, shape[0] / 2
    header["CDELT1"], header["CDELT2"] = -0.001, 0.001
    header["OBJECT"] = "COSMOS"
    header["TELESCOP"] = "MeerKAT"
    header["RESTFRQ"] = 1.28e9
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def post(
    client: httpx.Client,
    headers: dict[str, str],
    content: bytes,
    filename: str = "x.fits",
    field: str = "file",
) -> httpx.Response:
    files = {field: (filename, io.BytesIO(content), "application/fits")}
    return client.post("/uploads", files=files, headers=headers)


def stored_file(server: ServerProcess, sha256: str) -> Path:
    return server.data_dir / "uploads" / sha256[:2] / sha256


def test_upload_is_stored_once_and_found_again(client: httpx.Client, server: ServerProcess) -> None:
    content = SAMPLE.read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    first = post(client, ALICE, content, filename="../../etc/ngc 1234.fits")
    assert first.status_code == 201, first.text
    doc = first.json()
    assert first.headers["location"] == doc["href"] == f"{server.url}/uploads/{doc['upload_id']}"
    assert doc["sha256"] == sha256
    assert doc["bytes"] == len(content)
    assert doc["filename"] == "ngc 1234.fits"
    assert doc["owner"] == "alice"
    assert doc["header"] == {
        "object": None,
        "telescope": None,
        "frequency_hz": None,
        "shape": [256, 512],
    }
    created = datetime.fromisoformat(doc["created"].replace("Z", "+00:00"))
    expires = datetime.fromisoformat(doc["expires"].replace("Z", "+00:00"))
    assert timedelta(days=6.99) < expires - created < timedelta(days=7.01)
    assert stored_file(server, sha256).read_bytes() == content
    assert not any((server.data_dir / "uploads" / ".incoming").iterdir())

    again = post(client, ALICE, content, filename="other-name.fits", field="image")
    assert again.status_code == 200, again.text
    assert again.json()["upload_id"] == doc["upload_id"]
    assert again.json()["filename"] == "ngc 1234.fits"

    # gzip is undone at upload, and the content is that of the FITS file: the same upload
    gzipped = post(client, ALICE, gzip.compress(content), filename="x.fits.gz")
    assert gzipped.status_code == 200, gzipped.text
    assert gzipped.json()["upload_id"] == doc["upload_id"]

    got = client.get(f"/uploads/{doc['upload_id']}", headers=ALICE)
    assert got.status_code == 200
    assert got.json()["sha256"] == sha256
    listed = client.get("/uploads", headers=ALICE).json()["uploads"]
    assert [u["upload_id"] for u in listed] == [doc["upload_id"]]


def test_header_of_a_radio_image(
    client: httpx.Client, server: ServerProcess, tmp_path: Path
) -> None:
    path = fits_image(tmp_path / "cosmos.fits", (40, 60))
    r = post(client, BOB, path.read_bytes(), filename="cosmos.fits")
    assert r.status_code == 201, r.text
    assert r.json()["header"] == {
        "object": "COSMOS",
        "telescope": "MeerKAT",
        "frequency_hz": 1.28e9,
        "shape": [40, 60],
    }
    assert r.json()["owner"] == "bob"


def test_not_a_fits_image_is_refused(
    client: httpx.Client, server: ServerProcess, tmp_path: Path
) -> None:
    png = io.BytesIO()
    Image.new("L", (32, 32)).save(png, format="PNG")
    r = post(client, ALICE, png.getvalue(), filename="picture.png")
    assert r.status_code == 400, r.text
    assert r.text.startswith("FILE:")
    assert "PNG" in r.text and "not a FITS file" in r.text

    table = tmp_path / "table.fits"
    columns = [fits.Column(name="flux", format="D", array=np.arange(100.0))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(columns)]).writeto(table)
    r = post(client, ALICE, table.read_bytes(), filename="table.fits")
    assert r.status_code == 400, r.text
    assert r.text.startswith("FILE:")
    assert "no image" in r.text and "BinTableHDU" in r.text

    r = post(client, ALICE, b"", filename="empty.fits")
    assert r.status_code == 400 and r.text.startswith("FILE:"), r.text
    r = client.post("/uploads", data={"file": "not a file"}, headers=ALICE)
    assert r.status_code == 400 and r.text.startswith("FILE:"), r.text
    r = client.post("/uploads", data={"csrf_token": "x"}, headers=ALICE)
    assert r.status_code == 400 and r.text.startswith("FILE: is missing"), r.text
    files = {"picture": ("a.fits", io.BytesIO(SAMPLE.read_bytes()), "application/fits")}
    r = client.post("/uploads", files=files, headers=ALICE)
    assert r.status_code == 400 and r.text.startswith("PICTURE:"), r.text

    assert client.get("/uploads", headers=ALICE).json() == {"uploads": []}
    assert not any((server.data_dir / "uploads" / ".incoming").iterdir())


def test_size_limit_and_quota(client: httpx.Client, server: ServerProcess, tmp_path: Path) -> None:
    big = fits_image(tmp_path / "big.fits", (300, 300))  # 720 kB > MAX_UPLOAD
    r = post(client, ALICE, big.read_bytes())
    assert r.status_code == 413, r.text
    assert r.text.startswith("FILE:") and "max_upload_bytes" in r.text

    assert post(client, ALICE, SAMPLE.read_bytes()).status_code == 201
    second = fits_image(tmp_path / "second.fits", (256, 256))  # 527 kB: 1.06 MB in all
    r = post(client, ALICE, second.read_bytes())
    assert r.status_code == 413, r.text
    assert "upload_quota_bytes" in r.text and f"{QUOTA} bytes" in r.text
    assert "you hold 529920 bytes" in r.text and "in 1 upload(s)" in r.text
    # bigger than anything alice holds: refused while it streams in
    third = fits_image(tmp_path / "third.fits", (250, 290))  # 583 kB
    r = post(client, ALICE, third.read_bytes())
    assert r.status_code == 413, r.text
    assert "upload_quota_bytes" in r.text and "takes at least" in r.text
    # compressed: found over quota once inflated, at the end
    r = post(client, ALICE, gzip.compress(second.read_bytes()), filename="second.fits.gz")
    assert r.status_code == 413, r.text
    assert "upload_quota_bytes" in r.text
    # the quota is per owner
    assert post(client, BOB, second.read_bytes()).status_code == 201
    assert len(client.get("/uploads", headers=ALICE).json()["uploads"]) == 1
    assert not any((server.data_dir / "uploads" / ".incoming").iterdir())


def test_owners_and_deletion(client: httpx.Client, server: ServerProcess) -> None:
    content = SAMPLE.read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    assert client.get("/uploads").status_code == 401
    assert post(client, {}, content).status_code == 401

    alice = post(client, ALICE, content).json()
    r = post(client, BOB, content)
    assert r.status_code == 201, r.text  # bob's own record of the same content
    bob = r.json()
    assert bob["upload_id"] != alice["upload_id"] and bob["sha256"] == sha256

    assert client.get(f"/uploads/{alice['upload_id']}", headers=BOB).status_code == 404
    assert client.delete(f"/uploads/{alice['upload_id']}", headers=BOB).status_code == 404
    assert [u["upload_id"] for u in client.get("/uploads", headers=BOB).json()["uploads"]] == [
        bob["upload_id"]
    ]
    assert client.get("/uploads/not-an-id", headers=ALICE).status_code == 404
    assert client.get(f"/uploads/{'0' * 16}", headers=ALICE).status_code == 404

    # the file is shared, and removed with the last record naming it
    assert client.delete(f"/uploads/{alice['upload_id']}", headers=ALICE).status_code == 204
    assert client.get(f"/uploads/{alice['upload_id']}", headers=ALICE).status_code == 404
    assert stored_file(server, sha256).is_file()
    assert client.delete(f"/uploads/{bob['upload_id']}", headers=BOB).status_code == 204
    assert not stored_file(server, sha256).exists()
    assert client.delete(f"/uploads/{bob['upload_id']}", headers=BOB).status_code == 404


def test_resolve_and_expire(client: httpx.Client, server: ServerProcess, tmp_path: Path) -> None:
    content = SAMPLE.read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    upload = post(client, ALICE, content).json()
    other = post(client, ALICE, fits_image(tmp_path / "o.fits", (30, 30)).read_bytes()).json()

    async def scenario() -> None:
        service = service_for(server)
        soon = datetime.now(UTC) + timedelta(hours=1)
        await service.set_times(upload["upload_id"], created=datetime.now(UTC), expires=soon)

        found = await service.resolve("alice", f"upload:{upload['upload_id']}")
        assert found.sha256 == sha256 and found.path == stored_file(server, sha256)
        assert found.path.read_bytes() == content
        assert found.filename == "x.fits" and found.owner == "alice"
        assert found.header["shape"] == [256, 512]
        assert found.expires > soon + timedelta(days=6)  # in use: kept from now on
        by_hash = await service.resolve("alice", f"SHA256:{sha256.upper()}")
        assert by_hash.upload_id == upload["upload_id"]

        for owner, ref in (("bob", f"upload:{upload['upload_id']}"), ("bob", f"sha256:{sha256}")):
            with pytest.raises(UnknownUpload, match="unknown or expired") as info:
                await service.resolve(owner, ref)
            assert info.value.name == "image"
        for ref in ("upload:xyz", f"sha256:{sha256[:-1]}", "ngc1234.fits", ""):
            with pytest.raises(ParameterError) as bad:
                await service.resolve("alice", ref)
            assert bad.value.message.startswith("IMAGE:")
            assert not isinstance(bad.value, UnknownUpload)

        past = datetime.now(UTC) - timedelta(days=1)
        await service.set_times(upload["upload_id"], created=past - timedelta(days=7), expires=past)
        assert client.get(f"/uploads/{upload['upload_id']}", headers=ALICE).status_code == 404
        with pytest.raises(UnknownUpload):
            await service.resolve("alice", f"upload:{upload['upload_id']}")
        assert await service.expire() == 1
        assert not stored_file(server, sha256).exists()
        assert await service.expire() == 0
        remaining = await service.list("alice")
        assert [u.upload_id for u in remaining] == [other["upload_id"]]
        assert remaining[0].path.is_file()
        service.engine.dispose()

    asyncio.run(scenario())
    listed = client.get("/uploads", headers=ALICE).json()["uploads"]
    assert [u["upload_id"] for u in listed] == [other["upload_id"]]


def test_anonymous_service_streams_from_any_reader(tmp_path: Path) -> None:
    """In anonymous mode every caller shares the uploads (owner None). The service takes any
    reader that streams into the sink it is given, here one that is not HTTP."""
    settings = Settings(data_dir=tmp_path / "data", max_upload_bytes=MAX_UPLOAD)
    engine = make_engine(settings.effective_database_url)
    migrate(engine)
    content = SAMPLE.read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()

    async def read(sink: Sink) -> Form:
        part = sink("image", "C:\\data\\m31.fits")
        assert part is not None
        for start in range(0, len(content), 65536):
            part.write(content[start : start + 65536])
        part.close()
        return Form(files={"image": len(content)})

    async def scenario() -> None:
        service = UploadService(settings, engine)
        upload, created = await service.receive(None, read)
        assert created and upload.owner is None and upload.filename == "m31.fits"
        assert upload.sha256 == sha256 and upload.path.read_bytes() == content
        again, created = await service.receive(None, read)
        assert not created and again.upload_id == upload.upload_id
        # the owner is not looked at in anonymous mode
        assert (await service.resolve("someone", f"sha256:{sha256}")).upload_id == upload.upload_id
        assert [u.upload_id for u in await service.list("someone")] == [upload.upload_id]
        await service.delete(None, upload.upload_id)
        assert not upload.path.exists()
        assert await service.list(None) == []

    asyncio.run(scenario())
    engine.dispose()
