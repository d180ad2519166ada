"""Command apps without a server: manifest parsing and its errors (naming the file and the
field), the ONNX loader leaving command manifests alone, the command line, the column
mapping with its unit conversions and position angles, and availability."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from astro_otf.domain.errors import JobFailure, ParameterError
from astro_otf.imaging.fits import SkyImage
from astro_otf.models.command_app import (
    SHIPPED_APPS,
    CommandApp,
    load_command_manifest,
    load_command_manifests,
)
from astro_otf.models.manifest import SHIPPED_MODELS, ManifestError, load_manifests
from astro_otf.models.registry import Registry
from astro_otf.models.sep_finder import SepFinder
from astro_otf.results.catalogue import CATALOGUE_COLUMNS

PYBDSF = SHIPPED_APPS / "pybdsf" / "1.14.1"
AEGEAN = SHIPPED_APPS / "aegean" / "2.3.5"

TINY = """
kind = "command"
id = "tiny"
version = "0.1"
description = "A test finder."
environment = "tiny-env"
command = ["{python}", "{app_dir}/find.py", "{image}", "{workdir}/out.csv", "{level}",
           ["--extra", "{extra}"], ["--flag", "{flag}"]]

[output]
path = "out.csv"
format = "csv"

[[parameters]]
name = "level"
type = "float"
default = 2.5
description = "A level."

[[parameters]]
name = "extra"
type = "int"
description = "Optional."

[[parameters]]
name = "flag"
type = "bool"
default = false
description = "A switch."

[columns]
x = { from = "px", unit = "pix", origin = 1 }
y = { from = "py", unit = "pix", origin = 1 }
peak_flux = { from = "peak", unit = "mJy/beam" }
int_flux = { from = "total", unit = "image*beam" }
maj = { from = "major", unit = "deg" }
min = { from = "minor", unit = "arcmin" }
pa = { from = "angle", unit = "deg", reference = "north" }
ra_err = { from = "era", unit = "deg", null_values = [-1.0] }
local_rms = { from = "rms", unit = "image" }
"""


def write_app(root: Path, text: str = TINY, folder: str = "tiny/0.1") -> Path:
    path = root / folder / "manifest.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_shipped_apps_load_with_the_reference_settings() -> None:
    apps = {m.manifest.id: m for m in load_command_manifests(SHIPPED_APPS)}
    assert set(apps) == {"pybdsf", "aegean"}
    bdsf = {p.name: p.default for p in apps["pybdsf"].manifest.parameters}
    assert bdsf["thresh_pix"] == 5.0 and bdsf["thresh_isl"] == 3.0
    aegean = {p.name: p.default for p in apps["aegean"].manifest.parameters}
    assert aegean["seedclip"] == 5.0 and aegean["floodclip"] == 3.0
    assert "--cores" in apps["aegean"].manifest.command
    for loaded in apps.values():
        assert loaded.requirements is not None and loaded.requirements.is_file()
    assert "numpy==2.3.5" in (AEGEAN / "requirements.txt").read_text()  # AegeanTools: < 2.4


def test_onnx_loader_skips_command_manifests(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED_MODELS / "matched-filter", tmp_path / "matched-filter")
    write_app(tmp_path)
    assert [m.model_id for m in load_manifests(tmp_path)] == ["matched-filter"]
    assert [m.manifest.id for m in load_command_manifests(tmp_path)] == ["tiny"]


@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        (
            'maj = { from = "major", unit = "deg" }',
            'maj = { from = "major", unit = "Jy" }',
            "columns",
            "maj.unit",
        ),
        (
            'maj = { from = "major", unit = "deg" }',
            'majx = { from = "major", unit = "deg" }',
            "columns",
            "not a standard column",
        ),
        ('"{level}",', '"{levle}",', "(top level)", "{levle}"),
        ('"{image}", ', "", "(top level)", "{image}"),
        ('x = { from = "px", unit = "pix", origin = 1 }\n', "", "columns", "positions"),
        ('environment = "tiny-env"\n', "", "environment", "Field required"),
        (
            'peak_flux = { from = "peak", unit = "mJy/beam" }',
            'peak_flux = { from = "peak", unit = "mJy" }',
            "columns",
            "peak_flux.unit",
        ),
        ('format = "csv"', 'format = "xlsx"', "output.format", "csv"),
        ('name = "level"', 'name = "image"', "parameters", "image"),
        ('kind = "command"', 'kind = "command"\nsurprise = 1', "surprise", "Extra inputs"),
    ],
)
def test_manifest_errors_name_the_file_and_the_field(
    tmp_path: Path, old: str, new: str, field: str, words: str
) -> None:
    assert old in TINY
    path = write_app(tmp_path, TINY.replace(old, new, 1))
    with pytest.raises(ManifestError) as caught:
        load_command_manifest(path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert words in message


def test_missing_requirements_and_wrong_folder_are_named(tmp_path: Path) -> None:
    path = write_app(tmp_path, TINY.replace("command = [", 'requirements = "req.txt"\ncommand = ['))
    with pytest.raises(ManifestError, match=r"requirements: .*req\.txt does not exist"):
        load_command_manifest(path)
    write_app(tmp_path / "other", folder="tiny/0.2")
    with pytest.raises(ManifestError, match="must be <id>/<version>"):
        load_command_manifests(tmp_path / "other")


def test_command_line_fills_placeholders_and_drops_unset_groups(tmp_path: Path) -> None:
    app = CommandApp(load_command_manifest(write_app(tmp_path)), tmp_path / "apps")
    image, work = tmp_path / "in.fits", tmp_path / "work"
    argv = app.argv({"level": 2.5, "extra": None, "flag": False}, image, work)
    assert argv == [
        str(tmp_path / "apps" / "tiny-env" / "bin" / "python"),
        str(tmp_path / "tiny" / "0.1" / "find.py"),
        str(image),
        str(work / "out.csv"),
        "2.5",
    ]
    argv = app.argv({"level": 1.0, "extra": 7, "flag": True}, image, work)
    assert argv[4:] == ["1.0", "--extra", "7", "--flag"]


def test_unavailable_until_the_environment_exists(tmp_path: Path) -> None:
    apps_dir = tmp_path / "apps"
    app = CommandApp(load_command_manifest(write_app(tmp_path)), apps_dir)
    reason = app.unavailable()
    assert reason is not None and "tiny-env is missing" in reason and "make apps" in reason
    registry = Registry([SepFinder(), app], default="sep")
    described = registry.describe(app)
    assert described["available"] is False and described["reason"] == reason
    assert registry.describe(registry.get("sep"))["available"] is True
    with pytest.raises(ParameterError) as caught:
        registry.check_runnable(app)
    assert caught.value.name == "model" and "tiny-env is missing" in caught.value.message
    # a real environment: this test's own venv, by absolute path
    venv = Path(sys.prefix)
    text = TINY.replace('environment = "tiny-env"', f'environment = "{venv}"')
    ready = CommandApp(load_command_manifest(write_app(tmp_path / "b", text)), apps_dir)
    assert ready.unavailable() is None
    registry.check_runnable(ready)


def sky_image(ctype: tuple[str, str] = ("RA---SIN", "DEC--SIN"), rot: float = 0.0) -> SkyImage:
    """A 100 x 80 image with a 2 arcsec pixel, the reference pixel at (50, 40), rotated by
    ``rot`` degrees, BUNIT mJy/beam and a 10 x 6 arcsec beam."""
    header = fits.Header()
    header.update(NAXIS=2, NAXIS1=100, NAXIS2=80, BUNIT="mJy/beam")
    header.update(BMAJ=10 / 3600, BMIN=6 / 3600, BPA=0.0)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = list(ctype)
    wcs.wcs.crval = [150.0, 30.0] if ctype[0].startswith("RA") else [20.0, 10.0]
    wcs.wcs.crpix = [51.0, 41.0]
    scale = 2.0 / 3600
    c, s = np.cos(np.deg2rad(rot)), np.sin(np.deg2rad(rot))
    wcs.wcs.cd = np.array([[-scale * c, scale * s], [scale * s, scale * c]])
    return SkyImage(np.zeros((80, 100), dtype=np.float32), wcs, header, 0, origin=(5, 7))


def finder_table(image: SkyImage) -> Table:
    return Table(
        {
            "px": [51.0, 11.0],  # FITS pixels: 0-based 50 and 10
            "py": [41.0, 21.0],
            "peak": [5.0, 2.0],  # mJy/beam
            "total": [7.0, 3.0],  # image unit x beam: mJy
            "major": [10 / 3600, 20 / 3600],
            "minor": [0.1, 0.2],  # arcmin
            "angle": [0.0, 90.0],
            "era": [-1.0, 1 / 3600],
            "rms": [0.5, 0.5],
        }
    )


def test_column_mapping_converts_units_and_positions(tmp_path: Path) -> None:
    app = CommandApp(load_command_manifest(write_app(tmp_path)), tmp_path)
    image = sky_image()
    table = app._catalogue(finder_table(image), image, None)
    assert table.colnames[: len(CATALOGUE_COLUMNS) - 2] == [
        c.name for c in CATALOGUE_COLUMNS if c.name not in ("class", "tile")
    ]
    assert list(table["id"]) == [1, 2]  # decreasing peak
    # the image is mJy/beam: the catalogue is in Jy/beam and Jy, like sep's
    assert table["peak_flux"].unit == u.Jy / u.beam
    np.testing.assert_allclose(table["peak_flux"], [0.005, 0.002])
    np.testing.assert_allclose(table["int_flux"], [0.007, 0.003])
    assert str(table["int_flux"].unit) == "Jy"
    np.testing.assert_allclose(table["maj"], [10.0, 20.0])
    np.testing.assert_allclose(table["min"], [6.0, 12.0])
    assert np.isnan(table["ra_err"][0]) and table["ra_err"][1] == pytest.approx(1.0)
    np.testing.assert_allclose(table["score"], [10.0, 4.0])
    # FITS pixels of the searched image -> 0-based pixels of the uploaded one (origin 5, 7)
    np.testing.assert_allclose(table["x"], [55.0, 15.0])
    np.testing.assert_allclose(table["y"], [47.0, 27.0])
    assert table["ra"][0] == pytest.approx(150.0) and table["dec"][0] == pytest.approx(30.0)
    np.testing.assert_allclose(table["pa"], [0.0, 90.0], atol=0.05)


@pytest.mark.parametrize("rot", [0.0, 30.0, -75.0])
def test_position_angles_follow_a_rotated_or_galactic_wcs(tmp_path: Path, rot: float) -> None:
    """A PA east of the image frame's north is turned into an ICRS PA: on a rotated
    equatorial image it is unchanged; on a Galactic one it gains the angle between
    Galactic and equatorial north at the source."""
    app = CommandApp(load_command_manifest(write_app(tmp_path)), tmp_path)
    for ctype in (("RA---SIN", "DEC--SIN"), ("GLON-CAR", "GLAT-CAR")):
        image = sky_image(ctype, rot)
        raw = finder_table(image)
        table = app._catalogue(raw, image, None)
        for row, given in zip(range(2), raw["angle"], strict=True):
            x, y = raw["px"][row] - 1, raw["py"][row] - 1
            centre = image.wcs.pixel_to_world(x, y)
            along = centre.directional_offset_by(given * u.deg, 1 * u.arcsec)
            expected = centre.icrs.position_angle(along.icrs).deg % 180.0
            got = float(table["pa"][table["x"] == x + 5][0])
            assert min(abs(got - expected), 180 - abs(got - expected)) < 0.1
        if ctype[0].startswith("GLON"):
            frame = SkyCoord(table["ra"], table["dec"], unit="deg").galactic
            assert frame.l.deg[0] == pytest.approx(20.0, abs=1e-6)


def test_sky_positions_go_through_the_image_frame(tmp_path: Path) -> None:
    """A finder's ra/dec on a GLON/GLAT image are Galactic: they are put on pixels with the
    image's WCS, then turned into ICRS."""
    pixels = TINY.split("[columns]\n")[1].split("peak_flux")[0]
    sky = 'ra = { from = ["ra", "lon"], unit = "deg" }\n'
    sky += 'dec = { from = ["dec", "lat"], unit = "deg" }\n'
    text = TINY.replace(pixels, sky)
    app = CommandApp(load_command_manifest(write_app(tmp_path, text)), tmp_path)
    image = sky_image(("GLON-CAR", "GLAT-CAR"))
    raw = finder_table(image)
    lon, lat = image.wcs.all_pix2world(raw["px"] - 1, raw["py"] - 1, 0)
    raw["lon"], raw["lat"] = lon, lat
    table = app._catalogue(raw, image, None)
    np.testing.assert_allclose(table["x"], [55.0, 15.0], atol=1e-6)
    icrs = SkyCoord(lon, lat, unit="deg", frame="galactic").icrs
    np.testing.assert_allclose(table["ra"], icrs.ra.deg, atol=1e-9)
    # a table lacking a mapped column is named in the failure
    raw.remove_column("lat")
    with pytest.raises(JobFailure, match="dec"):
        app._catalogue(raw, image, None)


def test_a_failing_command_quotes_its_last_lines(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    text = TINY.replace('environment = "tiny-env"', f'environment = "{venv}"')
    app = CommandApp(load_command_manifest(write_app(tmp_path, text)), tmp_path)
    script = (
        "import sys; print('reading'); print('ValueError: no good', file=sys.stderr); sys.exit(3)"
    )
    with pytest.raises(JobFailure) as caught:
        app._execute([str(app.python), "-c", script], tmp_path, logging.getLogger("t"))
    assert "exited with status 3" in caught.value.message
    assert "ValueError: no good" in caught.value.message
