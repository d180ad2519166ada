"""Datasets: references to a dataset's files and what they refuse, the completeness check
a HELD job relies on, HOLD, and the phase moves of waiting jobs."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from astro_otf.config import DatasetConfig, Settings
from astro_otf.domain.errors import NotFound, ParameterError
from astro_otf.domain.phases import ACTIVE_PHASES, Phase, can_move
from astro_otf.service.datasets import Datasets, glob_regex, incomplete
from astro_otf.service.held import is_held_ref, parse_hold

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "astro_otf" / "data" / "sample.fits"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "askap"
    (root / "sub").mkdir(parents=True)
    shutil.copyfile(SAMPLE, root / "a.fits")
    shutil.copyfile(SAMPLE, root / "sub" / "b.fits")
    (root / "notes.txt").write_text("x")
    outside = tmp_path / "secret.fits"
    shutil.copyfile(SAMPLE, outside)
    os.symlink(outside, root / "out.fits")
    os.symlink(root / "a.fits", root / "alias.fits")
    return root


def datasets(*configs: tuple[str, str]) -> Datasets:
    return Datasets([DatasetConfig(name=n, path=p) for n, p in configs])


def test_folder_dataset_resolves_its_files(tree: Path) -> None:
    found = datasets(("askap", str(tree))).resolve("dataset:askap/sub/b.fits")
    assert found.path == tree / "sub" / "b.fits"
    assert found.ref == "dataset:askap/sub/b.fits"
    # a link that stays inside is fine
    assert datasets(("askap", str(tree))).resolve("dataset:askap/alias.fits").relative == (
        "alias.fits"
    )


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("dataset:askap/../secret.fits", "'..'"),
        ("dataset:askap/sub/../../secret.fits", "'..'"),
        ("dataset:askap//etc/passwd", "not a"),  # a relative path with an empty part
        ("dataset:askap/out.fits", "outside"),
        ("dataset:askap/notes.txt", "holds only"),
        ("dataset:nope/a.fits", "no dataset named 'nope'"),
        ("dataset:askap", "dataset:<dataset>/<path"),
        ("dataset:askap/sub", "holds only"),
        ("dataset:askap/a\x00.fits", "control characters"),
    ],
)
def test_refusals_name_image_and_say_why(tree: Path, ref: str, words: str) -> None:
    with pytest.raises(ParameterError) as caught:
        datasets(("askap", str(tree))).resolve(ref)
    assert caught.value.name == "image"
    assert caught.value.status_code == 400
    assert words in caught.value.message


def test_absolute_path_refused(tree: Path) -> None:
    # "dataset:askap/" + "/etc/passwd" gives an empty first part, dropped; a path that
    # starts with "/" after the dataset's slash is refused as absolute
    with pytest.raises(ParameterError, match="absolute"):
        datasets(("askap", str(tree))).resolve("dataset:askap/~/x.fits")
    with pytest.raises(ParameterError):
        datasets(("askap", str(tree))).resolve("dataset:askap//etc/passwd.fits")


def test_glob_dataset_takes_only_matching_files(tree: Path) -> None:
    d = datasets(("top", str(tree / "*.fits")))
    assert d.resolve("dataset:top/a.fits").path == tree / "a.fits"
    with pytest.raises(ParameterError, match=r"holds only \*\.fits"):
        d.resolve("dataset:top/sub/b.fits")  # * stays within one folder
    deep = datasets(("deep", str(tree / "**" / "*.fits")))
    assert deep.resolve("dataset:deep/sub/b.fits").relative == "sub/b.fits"
    assert deep.resolve("dataset:deep/a.fits").relative == "a.fits"


def test_glob_regex() -> None:
    assert glob_regex("*.fits").fullmatch("a.fits")
    assert not glob_regex("*.fits").fullmatch("x/a.fits")
    assert glob_regex("**/*.fits").fullmatch("x/y/a.fits")
    assert glob_regex("img_?.fit[st]").fullmatch("img_1.fits")
    assert not glob_regex("img_[!1].fits").fullmatch("img_1.fits")


def test_a_missing_file_resolves_for_waiting(tree: Path) -> None:
    found = datasets(("askap", str(tree))).resolve("dataset:askap/later.fits")
    assert not found.path.exists()
    assert incomplete(found.path) == "the file is not there yet"


def test_listing_with_header_facts(tree: Path) -> None:
    d = datasets(("askap", str(tree)))
    images, truncated = d.images("askap")
    assert not truncated
    paths = [i["path"] for i in images]
    assert paths == ["a.fits", "alias.fits", "sub/b.fits"]  # not notes.txt nor out.fits
    first = images[0]
    assert first["complete"] is True
    assert first["ref"] == "dataset:askap/a.fits"
    assert len(first["shape"]) == 2 and all(n > 0 for n in first["shape"])
    assert "beam" in first and "frequency_hz" in first
    # cached by (path, size, mtime): the second listing reads no header
    assert len(d._facts) == 3
    d.images("askap")
    assert len(d._facts) == 3
    with pytest.raises(NotFound):
        d.images("nope")


def test_incomplete_until_every_declared_byte_is_there(tmp_path: Path) -> None:
    data = SAMPLE.read_bytes()
    target = tmp_path / "growing.fits"
    target.write_bytes(b"")
    assert incomplete(target) == "the file is empty so far"
    target.write_bytes(data[:1000])  # less than one header block
    assert "FITS header" in (incomplete(target) or "")
    target.write_bytes(data[: len(data) // 2])
    assert "of the" in (incomplete(target) or "")
    target.write_bytes(data)
    assert incomplete(target) is None


def test_hold_parsing() -> None:
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert parse_hold("60", now) == now + timedelta(seconds=60)
    assert parse_hold("2026-11-29T13:00:00Z", now) == now + timedelta(hours=1)
    for bad in ("0", "-5", "nan", "2026-11-29T11:00:00Z", "soon"):
        with pytest.raises(ParameterError) as caught:
            parse_hold(bad, now)
        assert caught.value.name == "hold"


def test_held_refs() -> None:
    assert is_held_ref("dataset:a/b.fits") and is_held_ref("pending:x.fits")
    assert not is_held_ref("upload:0123456789abcdef")


def test_dataset_names_are_url_safe() -> None:
    with pytest.raises(ValueError):
        DatasetConfig(name="a/b", path="/x")
    with pytest.raises(ValueError, match="twice"):
        Settings(datasets=[DatasetConfig(name="a", path="/x"), DatasetConfig(name="a", path="/y")])


def test_held_phase_moves() -> None:
    assert Phase.HELD in ACTIVE_PHASES  # WAIT blocks on it, ABORT stops it
    assert can_move(Phase.PENDING, Phase.HELD)
    for dst in (Phase.QUEUED, Phase.ABORTED, Phase.ERROR, Phase.COMPLETED):
        assert can_move(Phase.HELD, dst)
    assert not can_move(Phase.HELD, Phase.EXECUTING)
    assert not can_move(Phase.QUEUED, Phase.HELD)
