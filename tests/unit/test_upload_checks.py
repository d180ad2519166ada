"""The checks that keep a client's mistake from harming the service: an upload's declared
image size (against the file and the pixel cap), byte-stream compression, bounded tile
counting, printable bounded text values, job ids, and the cap on a request's text fields."""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from astro_otf.domain.errors import JobFailure, ParameterError, UploadTooLarge
from astro_otf.domain.job import Job, is_job_id, new_job_id
from astro_otf.domain.parameters import (
    MAX_RUN_ID_CHARS,
    MAX_TEXT_CHARS,
    ParamSpec,
    check_run_id,
    text_problem,
    validate,
)
from astro_otf.domain.phases import Phase
from astro_otf.imaging import tiling
from astro_otf.imaging.fits import (
    MAX_HDUS_SCANNED,
    UploadRefused,
    check_upload,
    declared_image,
    inflate_upload,
    load_image,
)
from astro_otf.imaging.tiling import tile_count, tile_grid
from astro_otf.uws.routes import parse_count, parse_time
from astro_otf.uws.uploads import read_form

# -- FITS files ------------------------------------------------------------------------------


def header(nx: int, ny: int, bitpix: int = -32) -> fits.Header:
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = bitpix
    h["NAXIS"] = 2
    h["NAXIS1"] = nx
    h["NAXIS2"] = ny
    h["CTYPE1"], h["CTYPE2"] = "RA---SIN", "DEC--SIN"
    h["CRVAL1"], h["CRVAL2"] = 150.0, 2.0
    h["CRPIX1"], h["CRPIX2"] = nx / 2 + 0.5, ny / 2 + 0.5
    h["CDELT1"], h["CDELT2"] = -0.0005, 0.0005
    return h


def lying(path: Path, nx: int, ny: int, data_bytes: int = 2880) -> Path:
    path.write_bytes(header(nx, ny).tostring().encode() + bytes(data_bytes))
    return path


def image_file(path: Path, n: int = 64) -> Path:
    fits.PrimaryHDU(np.ones((n, n), np.float32), header(n, n)).writeto(path)
    return path


def test_a_header_declaring_more_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    path = lying(tmp_path / "lie.fits", 3000, 3000)
    declared = declared_image(path)
    assert declared is not None
    assert declared.axes == (3000, 3000) and declared.data_bytes == 36_000_000
    with pytest.raises(UploadRefused, match="truncated") as caught:
        check_upload(path, max_pixels=2**30, max_bytes=2**31)
    assert not caught.value.too_large
    assert "36000000" in caught.value.message


def test_the_campaigns_tiny_file_declaring_a_terapixel_is_over_the_cap(tmp_path: Path) -> None:
    path = lying(tmp_path / "huge.fits", 1_000_000, 1_000_000)
    assert path.stat().st_size < 8000
    start = time.monotonic()
    with pytest.raises(UploadRefused) as caught:
        check_upload(path, max_pixels=2**30, max_bytes=2**31)
    assert time.monotonic() - start < 1.0
    assert caught.value.too_large
    assert "1000000 x 1000000" in caught.value.message
    assert str(2**30) in caught.value.message and "max_image_pixels" in caught.value.message


def test_complete_files_pass_and_the_cap_is_inclusive(tmp_path: Path, test_data: Path) -> None:
    path = image_file(tmp_path / "ok.fits", 64)
    check_upload(path, max_pixels=64 * 64, max_bytes=2**31)
    with pytest.raises(UploadRefused, match="64 x 64"):
        check_upload(path, max_pixels=64 * 64 - 1, max_bytes=2**31)
    for name in (
        "image2d.fits",
        "extension_image.fits",
        "compressed_image.fits",
        "cube4d_degenerate.fits",
        "int16_bscale_blank.fits",
    ):
        check_upload(test_data / name, max_pixels=2**30, max_bytes=2**31)


def test_data_without_the_final_padding_is_accepted(tmp_path: Path) -> None:
    """The check needs the declared bytes, not the 2880-byte padding some writers omit."""
    full = image_file(tmp_path / "full.fits", 10).read_bytes()
    cut = tmp_path / "unpadded.fits"
    cut.write_bytes(full[: 2880 * (len(full) // 2880 - 1) + 10 * 10 * 4])
    check_upload(cut, max_pixels=2**30, max_bytes=2**31)


def test_tile_compressed_images_count_their_znaxis_pixels(tmp_path: Path, test_data: Path) -> None:
    declared = declared_image(test_data / "compressed_image.fits")
    assert declared is not None and declared.tile_compressed and declared.axes == (64, 64)
    path = tmp_path / "comp.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((300, 200), np.float32), header(200, 300))]
    ).writeto(path)
    with pytest.raises(UploadRefused, match="tile-compressed image is 200 x 300") as caught:
        check_upload(path, max_pixels=200 * 300 - 1, max_bytes=2**31)
    assert caught.value.too_large
    # a compressed table cut short is refused like an image cut short
    short = tmp_path / "short.fits"
    short.write_bytes(path.read_bytes()[: declared_image(path).data_offset + 100])  # type: ignore[union-attr]
    with pytest.raises(UploadRefused, match="truncated"):
        check_upload(short, max_pixels=2**30, max_bytes=2**31)


def test_files_that_are_not_images_are_left_to_the_worker(tmp_path: Path, test_data: Path) -> None:
    """Not FITS, or FITS without an image: the job's worker says why (as before)."""
    for path in (test_data / "not_fits.txt", test_data / "table_only.fits"):
        assert declared_image(path) is None
        check_upload(path, max_pixels=2**30, max_bytes=2**31)


def test_an_image_hidden_behind_too_many_hdus_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.fits"
    with path.open("wb") as f:
        f.write(fits.PrimaryHDU().header.tostring().encode())
        empty = fits.ImageHDU().header.tostring().encode()
        for _ in range(MAX_HDUS_SCANNED):
            f.write(empty)
    with pytest.raises(UploadRefused, match=f"first {MAX_HDUS_SCANNED} HDUs"):
        check_upload(path, max_pixels=2**30, max_bytes=2**31)


# -- byte-stream compression -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "bzip2"])
def test_compressed_uploads_are_inflated_in_place(tmp_path: Path, kind: str) -> None:
    raw = image_file(tmp_path / "raw.fits").read_bytes()
    path = tmp_path / "up.fits"
    path.write_bytes(gzip.compress(raw) if kind == "gzip" else bz2.compress(raw))
    assert inflate_upload(path, len(raw)) == kind
    assert path.read_bytes() == raw
    assert inflate_upload(path, len(raw)) is None  # plain now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.fits", "up.fits"]


def test_a_gzip_bomb_stops_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.fits"
    compressed = gzip.compress(bytes(64 * 1024 * 1024))
    path.write_bytes(compressed)
    with pytest.raises(UploadRefused, match="inflates to more than") as caught:
        inflate_upload(path, 1024 * 1024)
    assert caught.value.too_large and "1048576" in caught.value.message
    assert path.read_bytes() == compressed  # untouched; no partial file left
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.fits"]


def test_load_image_refuses_a_compressed_stream(tmp_path: Path) -> None:
    """A job stored before uploads were inflated: its worker refuses rather than inflate."""
    path = tmp_path / "old.fits"
    path.write_bytes(gzip.compress(image_file(tmp_path / "raw.fits").read_bytes()))
    with pytest.raises(JobFailure, match="gzip-compressed"):
        load_image(path)


# -- tile counting -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    ny=st.integers(1, 3000),
    nx=st.integers(1, 3000),
    tile=st.integers(1, 700),
    data=st.data(),
)
def test_tile_count_is_the_length_of_the_grid(ny: int, nx: int, tile: int, data: Any) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    if (ny // max(1, tile - overlap) + 1) * (nx // max(1, tile - overlap) + 1) > 20_000:
        overlap = 0  # keep the listed grid small enough to build
        if (ny // tile + 1) * (nx // tile + 1) > 20_000:
            return
    assert tile_count((ny, nx), tile, overlap) == len(tile_grid((ny, nx), tile, overlap))


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [
        ((1, 1), 256, 32),
        ((10, 500), 256, 32),  # one axis smaller than a tile
        ((256, 256), 256, 32),
        ((257, 256), 256, 32),
        ((513, 1025), 256, 0),
        ((4096, 4096), 576, 64),
        ((100, 100), 1, 0),
        ((7, 9), 3, 2),
    ],
)
def test_tile_count_matches_chosen_shapes(shape: tuple[int, int], tile: int, overlap: int) -> None:
    assert tile_count(shape, tile, overlap) == len(tile_grid(shape, tile, overlap))


def test_tile_count_of_a_huge_shape_is_instant_and_exact() -> None:
    start = time.monotonic()
    n = tile_count((1_000_000, 1_000_000), 576, 64)
    assert time.monotonic() - start < 0.01
    per_axis = -(-(1_000_000 - 576) // 512) + 1
    assert n == per_axis**2
    assert tile_count((10**15, 10**15), 256, 32) > 10**20  # exact integers, no float


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [((0, 10), 4, 0), ((10, 10), 0, 0), ((10, 10), 4, 4), ((10, -1), 4, 1)],
)
def test_tile_count_refuses_what_tile_grid_refuses(
    shape: tuple[int, int], tile: int, overlap: int
) -> None:
    with pytest.raises(ValueError):
        tile_grid(shape, tile, overlap)
    with pytest.raises(ValueError):
        tile_count(shape, tile, overlap)


def _job(**params: str) -> Job:
    from astro_otf.domain.job import JobParameter

    now = datetime.now(UTC)
    return Job(
        job_id=new_job_id(),
        owner=None,
        run_id=None,
        phase=Phase.QUEUED,
        model_id="radio-detector",
        priority=0,
        creation_time=now,
        start_time=None,
        end_time=None,
        execution_duration=60,
        destruction_time=None,
        parameters=[JobParameter(k, v) for k, v in params.items()],
    )


def test_count_tiles_of_a_huge_declared_image_lists_no_tile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler asks count_tiles of every queued job: for the campaign's 5.7 kB file
    declaring 10^6 x 10^6 pixels it listed 20 million tiles (5 GB, two minutes without a
    batch for anyone). It counts now, without listing."""
    from astro_otf.models import onnx_detector
    from astro_otf.models.registry import build_registry

    app = build_registry().get("radio-detector")
    assert isinstance(app, onnx_detector.OnnxDetector)
    path = lying(tmp_path / "huge.fits", 1_000_000, 1_000_000)

    def no_listing(*args: object, **kwargs: object) -> list[object]:
        raise AssertionError("count_tiles listed the tiles")

    monkeypatch.setattr(tiling, "tile_grid", no_listing)
    monkeypatch.setattr(onnx_detector, "tile_grid", no_listing)
    tiles = app.model.manifest.tiling
    start = time.monotonic()
    n = app.count_tiles(str(path), _job())
    assert time.monotonic() - start < 1.0
    assert n == tile_count((1_000_000, 1_000_000), tiles.tile, tiles.overlap)
    # a small region, in pixels or as an angle, runs on the full image's tiles whose cores
    # meet it (one or two a side), found without listing the grid either
    for size in ("100", "3 arcmin"):
        region = _job(ra="150", dec="2", width=size, height=size)
        assert 1 <= app.count_tiles(str(path), region) <= 4
    # parameters or a file it cannot read: 1 (the job fails in its worker, saying why)
    assert app.count_tiles(str(path), _job(ra="150", dec="2", width="²")) == 1
    assert app.count_tiles(str(tmp_path / "missing.fits"), _job()) == 1


# -- text values, RUNID, job ids ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("x\x01y", "U+0001, a control character, at character 2"),
        ("\x00", "U+0000"),
        ("a\tb", "U+0009"),
        ("a\nb", "U+000A"),
        ("c1\x85", "U+0085"),
        ("del\x7f", "U+007F"),
        ("ls\u2028", "line separator"),
        ("nc\ufffe", "non-character"),
        ("nc\U0001ffff", "non-character"),
    ],
)
def test_text_that_cannot_be_written_is_named(text: str, words: str) -> None:
    problem = text_problem(text, 100)
    assert problem is not None and words in problem


@pytest.mark.parametrize("text", ["plain", "été 🌌", "a b", "M31 — field 3", "x" * 100, ""])
def test_printable_text_passes(text: str) -> None:
    assert text_problem(text, 100) is None


def test_runid_limits() -> None:
    check_run_id("r" * MAX_RUN_ID_CHARS)
    with pytest.raises(ParameterError, match=f"RUNID: is 256 characters long; at most {255}"):
        check_run_id("r" * (MAX_RUN_ID_CHARS + 1))
    with pytest.raises(ParameterError, match="RUNID: contains U\\+0009"):
        check_run_id("tab\there")


def test_every_text_parameter_is_checked() -> None:
    app = (ParamSpec("label", "str", "a free text"), ParamSpec("thresh", "float", "t"))

    def run(raw: dict[str, str]) -> object:
        return validate(raw, ("image",), app, precisions=(), model_id="m")

    assert run({"label": "  field 3\n"}).stored["label"] == "field 3"  # type: ignore[attr-defined]
    with pytest.raises(ParameterError, match="LABEL: contains U\\+0001"):
        run({"label": "a\x01b"})
    with pytest.raises(ParameterError, match=f"LABEL: is {MAX_TEXT_CHARS + 1} characters"):
        run({"label": "x" * (MAX_TEXT_CHARS + 1)})
    with pytest.raises(ParameterError, match="THRESH: contains U\\+0000"):
        run({"thresh": "1\x00"})
    with pytest.raises(ParameterError, match="not a parameter name") as caught:
        run({"n\x00" * 100: "1"})
    assert len(caught.value.message) < 300


def test_job_ids() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(is_job_id(i) for i in ids)
    for bad in ("", "a\x00b", "doesnotexist", "0123456789ABCDEF", "0123456789abcde", "x" * 300):
        assert not is_job_id(bad)
    assert not is_job_id("\u0660\u0661\u0662\u0663\u0664\u0665abcdef0123")  # Arabic digits


# -- list filters ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("5", 5), (" 007 ", 7), ("0", 0), ("99999999999999999999", 99999999999999999999)],
)
def test_parse_count(text: str, value: int) -> None:
    """Digits become the number; the service judges its range (tests/integration)."""
    assert parse_count("last", text) == value


def test_parse_count_of_thousands_of_digits() -> None:
    with pytest.raises(ParameterError, match="LAST: a number of 5000 digits is out of range"):
        parse_count("last", "9" * 5000)


@pytest.mark.parametrize("text", ["", "-1", "+1", "1.0", "²", "\u0661\u0662", "1e3", "x"])
def test_parse_count_refuses(text: str) -> None:
    with pytest.raises(ParameterError, match=r"LAST: .* is not a positive integer"):
        parse_count("last", text)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_times_out_of_the_utc_range_are_parameter_errors(text: str) -> None:
    with pytest.raises(ParameterError, match=r"AFTER: .* out of the range"):
        parse_time("after", text)


# -- the cap on a request's text fields ----------------------------------------------------------


class FakeRequest:
    """Enough of a Starlette request for read_form: headers and a streamed body, counting
    what was read."""

    def __init__(self, content_type: str, chunks: Iterator[bytes]) -> None:
        self.headers = {"content-type": content_type}
        self._chunks = chunks
        self.read = 0

    async def stream(self) -> Any:
        for chunk in self._chunks:
            self.read += len(chunk)
            yield chunk


def multipart_fields(boundary: str, count: int, size: int) -> Iterator[bytes]:
    for i in range(count):
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n').encode()
        for _ in range(size // 65536):
            yield b"x" * 65536
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def test_sixty_one_mib_fields_stop_at_the_form_cap() -> None:
    """The campaign's 60 fields of 1 MiB each: each under the per-field limit, together
    60 MiB held in memory before the 400. Now refused as soon as the cap is passed."""
    cap = 1024 * 1024
    request = FakeRequest(
        "multipart/form-data; boundary=b0undary", multipart_fields("b0undary", 60, 1024 * 1024)
    )
    with pytest.raises(UploadTooLarge, match="max_form_bytes") as caught:
        asyncio.run(
            read_form(
                request,  # type: ignore[arg-type]
                max_form_bytes=cap,
                max_upload_bytes=2 * 1024**3,
                sink=lambda name, filename: None,
            )
        )
    assert str(cap) in caught.value.message
    assert request.read < cap + 2 * 65536


def test_form_encoded_body_stops_at_the_form_cap() -> None:
    def body() -> Iterator[bytes]:
        yield b"model=sleep&padding="
        for _ in range(100):
            yield b"x" * 65536

    request = FakeRequest("application/x-www-form-urlencoded", body())
    with pytest.raises(UploadTooLarge, match="max_form_bytes"):
        asyncio.run(read_form(request, max_form_bytes=256 * 1024))  # type: ignore[arg-type]
    assert request.read < 256 * 1024 + 65536 + 100


def test_file_parts_do_not_count_against_the_form_cap() -> None:
    sink = io.BytesIO()
    sink.close = lambda: None  # type: ignore[method-assign]
    boundary = "bnd"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="MODEL"\r\n\r\nsep\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="IMAGE"; filename="i.fits"'
            "\r\n\r\n"
        ).encode()
        for _ in range(40):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    request = FakeRequest(f"multipart/form-data; boundary={boundary}", body())
    form = asyncio.run(
        read_form(
            request,  # type: ignore[arg-type]
            max_form_bytes=64 * 1024,
            max_upload_bytes=10 * 1024 * 1024,
            sink=lambda name, filename: sink if name == "image" else None,
        )
    )
    assert form.fields == {"model": "sep"}
    assert form.files == {"image": 40 * 65536}
