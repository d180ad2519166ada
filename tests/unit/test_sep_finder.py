"""The ``sep`` app end to end on real radio images and generated fixtures: no mocks."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.io.votable import parse, validate
from astropy.table import Table
from lxml import etree

from astro_otf.domain.errors import JobFailure
from astro_otf.domain.parameters import Extent, ParamSpec, Roi
from astro_otf.imaging.fits import load_image
from astro_otf.models.base import App, AppOutput, AppRequest
from astro_otf.models.sep_finder import SepFinder
from tests.products import write_results

LOG = logging.getLogger("test.sep")

#: Real images and the number of sources the sep app must find: the range the four peer
#: finders (PyBDSF, Aegean, sep, photutils) give in ../shared/data/real/baseline.
REAL_COUNTS = {
    "aegean/1904-66_SIN.fits": (40, 73),
    "aegean/synthetic_test.fits": (100, 104),
    "astroquery/first_J105007+304037.fits": (2, 4),
    "astroquery/magpis_G10.5+0.0.fits": (11, 24),
    "caesar/ScorpioExtendedSourceField.fits": (24, 117),
    "caesar/ScorpioS17Field.fits": (29, 99),
    "pybdsf/tbdsf_process_image.in_fits.pybdsf.ch0_I.fits": (32, 46),
    "pyse/GRB201006A_final_2min_srcs-t0002-image-pb_cutout.fits": (4, 6),
    "pyse/SWIFT_554620-130504.fits": (1, 1),
}
COLUMNS = [
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
    "local_rms",
    "flag",
]


def defaults(app: SepFinder) -> dict[str, Any]:
    values: dict[str, Any] = {p.name: p.default for p in app.parameters if p.default is not None}
    values["precision"] = app.precisions[0]
    return values


def run_app(
    image: Path, staging: Path, roi: Roi | None = None, **values: Any
) -> tuple[AppOutput, Table]:
    app = SepFinder()
    staging.mkdir(parents=True, exist_ok=True)
    request = AppRequest(
        job_id="job-test",
        image_path=image,
        values={**defaults(app), **values},
        roi=roi,
        staging_dir=staging,
        log=LOG,
    )
    output = app.run(request)
    paths = write_results(app, output, staging, image_path=image, values=request.values)
    assert paths["result"] == staging / "catalogue.xml"
    table = Table.read(paths["result"], format="votable")
    assert output.info["n_sources"] == len(table)
    return output, table


def sky(table: Table) -> SkyCoord:
    return SkyCoord(np.asarray(table["ra"]), np.asarray(table["dec"]), unit="deg")


@pytest.fixture(scope="module")
def synthetic(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Table:
    return run_app(real_data / "aegean/synthetic_test.fits", tmp_path_factory.mktemp("syn"))[1]


# --------------------------------------------------------------------------- the app contract


def test_declares_the_app_protocol() -> None:
    app: App = SepFinder()
    assert app.model_id == "sep"
    assert "sep 1.4" in app.version
    assert app.precisions == ("fp64", "fp32")
    assert app.needs_image is True
    names = [p.name for p in app.parameters]
    assert names == ["thresh", "seed", "minarea", "back_size", "deblend_cont", "filter"]
    for spec in app.parameters:
        assert isinstance(spec, ParamSpec) and spec.description
        if spec.default is not None:  # every default survives its own parser
            assert spec.parse(str(spec.default)) == spec.default


# --------------------------------------------------------------------------- real images


def test_synthetic_image_recovers_the_truth(synthetic: Table, real_data: Path) -> None:
    assert 100 <= len(synthetic) <= 104
    truth = Table.read(real_data / "aegean/synthetic_test_truth.csv", format="ascii.csv")
    found, wanted = sky(synthetic), sky(truth)
    distance = wanted[:, np.newaxis].separation(found[np.newaxis, :]).arcsec
    nearest = distance.min(axis=1)
    assert np.mean(nearest < 30.0) >= 0.98  # within one beam
    assert np.median(nearest) < 1.0
    # Point sources: peak flux close to the truth, sizes close to the 30" beam.
    matched = distance.argmin(axis=1)
    ratio = np.asarray(synthetic["peak_flux"])[matched] / np.asarray(truth["peak_flux"])
    assert 0.9 < np.median(ratio) < 1.1
    assert 25.0 < np.median(np.asarray(synthetic["maj"])) < 35.0
    assert 25.0 < np.median(np.asarray(synthetic["min"])) < 35.0
    # With the beam in the header, a point source's int_flux (Jy) equals its peak (Jy/beam).
    int_over_peak = np.asarray(synthetic["int_flux"]) / np.asarray(synthetic["peak_flux"])
    assert 0.9 < np.median(int_over_peak) < 1.15


def test_catalogue_columns_and_order(synthetic: Table) -> None:
    assert synthetic.colnames == COLUMNS
    assert list(synthetic["id"]) == list(range(1, len(synthetic) + 1))
    assert np.all(np.diff(synthetic["peak_flux"]) <= 0)  # brightest first
    assert np.all((synthetic["pa"] >= 0) & (synthetic["pa"] < 180))
    assert np.all(synthetic["min"] <= synthetic["maj"])
    np.testing.assert_allclose(synthetic["score"], synthetic["peak_flux"] / synthetic["local_rms"])


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_every_real_image_gives_a_catalogue(real_data: Path, tmp_path: Path, name: str) -> None:
    output, table = run_app(real_data / name, tmp_path)
    low, high = REAL_COUNTS[name]
    assert low <= len(table) <= high, f"{name}: {len(table)} sources"
    image = load_image(real_data / name)
    ny, nx = image.shape
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    assert np.all((x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5))
    # ra/dec are the ICRS position of x/y.
    again = image.wcs.pixel_to_world(x, y).icrs
    assert np.all(again.separation(sky(table)).arcsec < 1e-6)
    assert np.all(table["score"] >= 5.0)
    assert output.info["background_rms"] > 0


def test_amis_single_source_has_the_beam_shape(real_data: Path, tmp_path: Path) -> None:
    _, table = run_app(real_data / "pyse/SWIFT_554620-130504.fits", tmp_path)
    assert len(table) == 1
    assert abs(table["pa"][0] - 13.5) < 10.0  # an unresolved source is elongated like the beam
    assert table["maj"][0] > 2.0 * table["min"][0]


def test_galactic_image_gives_icrs_positions(real_data: Path, tmp_path: Path) -> None:
    path = real_data / "astroquery/magpis_G10.5+0.0.fits"
    _, table = run_app(path, tmp_path)
    centre = SkyCoord(l=10.5, b=0.0, unit="deg", frame="galactic").icrs
    assert centre.ra.deg == pytest.approx(272.16, abs=0.05)  # the ICRS centre, not 10.5
    half_diagonal = 150 * 2.0 * np.sqrt(2.0)  # arcsec: 300 pixels of 2"
    assert np.all(sky(table).separation(centre).arcsec < half_diagonal)
    with fits.open(path) as hdul:
        assert hdul[0].header["CTYPE1"].startswith("GLON")


def test_precisions_agree(real_data: Path, tmp_path: Path, synthetic: Table) -> None:
    _, fp32 = run_app(real_data / "aegean/synthetic_test.fits", tmp_path, precision="fp32")
    assert len(fp32) == len(synthetic)
    assert np.all(sky(fp32).separation(sky(synthetic)).arcsec < 0.1)


# --------------------------------------------------------------------------- regions of interest


def test_roi_in_pixels_reports_original_pixels(
    real_data: Path, tmp_path: Path, synthetic: Table
) -> None:
    bright = synthetic[synthetic["x"] > 300][0]
    roi = Roi(float(bright["ra"]), float(bright["dec"]), Extent(64, "pix"), Extent(48, "pix"))
    output, table = run_app(real_data / "aegean/synthetic_test.fits", tmp_path, roi=roi)
    assert output.info["region_shape_pix"] == "64 x 48"
    assert 1 <= len(table) < len(synthetic)
    x0, y0 = (int(v) for v in output.info["region_origin_pix"].split())
    assert (x0, y0) != (0, 0)
    assert np.all((table["x"] >= x0 - 0.5) & (table["x"] < x0 + 63.5))
    assert np.all((table["y"] >= y0 - 0.5) & (table["y"] < y0 + 47.5))
    # The source in the middle of the region has the full-image run's pixel and sky position.
    nearest = int(np.argmin(np.hypot(table["x"] - bright["x"], table["y"] - bright["y"])))
    assert abs(table["x"][nearest] - bright["x"]) < 0.2
    assert abs(table["y"][nearest] - bright["y"]) < 0.2
    assert sky(table[nearest : nearest + 1]).separation(sky(Table(bright))).arcsec[0] < 2.0


def test_roi_in_arcmin(real_data: Path, tmp_path: Path, synthetic: Table) -> None:
    image = load_image(real_data / "aegean/synthetic_test.fits")
    centre = image.wcs.pixel_to_world(255.5, 127.5).icrs
    roi = Roi(centre.ra.deg, centre.dec.deg, Extent(10, "arcmin"), None)
    output, table = run_app(real_data / "aegean/synthetic_test.fits", tmp_path, roi=roi)
    assert output.info["region_shape_pix"] == "70 x 256"  # 600" of 8.57" pixels, full height
    inside = synthetic[np.abs(synthetic["x"] - 255.5) < 30]  # clear of the region's edges
    assert len(inside) >= 5
    assert all(np.min(np.hypot(table["x"] - s["x"], table["y"] - s["y"])) < 0.5 for s in inside)


def test_roi_on_galactic_image_from_icrs(real_data: Path, tmp_path: Path) -> None:
    path = real_data / "astroquery/magpis_G10.5+0.0.fits"
    _, whole = run_app(path, tmp_path / "whole")
    compact = whole[(whole["maj"] < 15.0) & (whole["flag"] == 0)]
    target = compact[0]  # the brightest compact, isolated source
    roi = Roi(float(target["ra"]), float(target["dec"]), Extent(2, "arcmin"), Extent(2, "arcmin"))
    _, part = run_app(path, tmp_path / "part", roi=roi)
    distance = sky(part).separation(sky(Table(target))).arcsec
    assert distance.min() < 2.0
    best = int(np.argmin(distance))
    assert abs(part["x"][best] - target["x"]) < 1.0 and abs(part["y"][best] - target["y"]) < 1.0


# --------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize(
    "name",
    [
        "image2d.fits",
        "cube4d_degenerate.fits",
        "int16_bscale_blank.fits",
        "extension_image.fits",
        "compressed_image.fits",
        "cube_freq_first.fits",
    ],
)
def test_fixture_sources_are_found(test_data: Path, tmp_path: Path, name: str) -> None:
    _, table = run_app(test_data / name, tmp_path)
    assert len(table) == 3
    expected = sorted(
        [(45.0, 40.0, 0.1), (16.0, 20.0, 0.05), (30.0, 50.0, 0.02)], key=lambda s: -s[2]
    )
    for row, (x, y, peak) in zip(table, expected, strict=True):
        assert abs(row["x"] - x) < 0.3 and abs(row["y"] - y) < 0.3
        assert row["peak_flux"] == pytest.approx(peak, rel=0.1)


def test_mjy_per_beam_image_gives_jy(test_data: Path, tmp_path: Path) -> None:
    _, table = run_app(test_data / "int16_blank_unscaled.fits", tmp_path)
    assert table["peak_flux"].unit == "Jy / beam" and table["int_flux"].unit == "Jy"
    assert table["peak_flux"][0] == pytest.approx(0.1, rel=0.1)


def test_image_without_beam_or_bunit(test_data: Path, tmp_path: Path) -> None:
    with fits.open(test_data / "image2d.fits") as hdul:
        header = hdul[0].header.copy()
        data = hdul[0].data.copy()
    for key in ("BMAJ", "BMIN", "BPA", "BUNIT"):
        del header[key]
    fits.PrimaryHDU(data, header).writeto(tmp_path / "bare.fits")
    output, table = run_app(tmp_path / "bare.fits", tmp_path / "out")
    assert len(table) == 3
    assert "no BUNIT" in output.info["flux_note"] and "no beam" in output.info["flux_note"]
    assert str(table["int_flux"].unit) == "Jy / beam"  # a pixel sum, not converted to Jy
    votable = parse(str(tmp_path / "out" / "catalogue.xml"))
    field = next(f for f in votable.get_first_table().fields if f.name == "int_flux")
    assert "not converted to Jy" in field.description


def test_position_angle_is_east_of_north(tmp_path: Path) -> None:
    # An elongated source whose major axis points 30 deg East of North; East is -x here.
    ny = nx = 80
    yy, xx = np.mgrid[0:ny, 0:nx]
    pa = np.deg2rad(30.0)
    major = (xx - 40) * -np.sin(pa) + (yy - 40) * np.cos(pa)
    minor = (xx - 40) * np.cos(pa) + (yy - 40) * np.sin(pa)
    rng = np.random.default_rng(7)
    image = rng.normal(0, 1e-3, (ny, nx)) + 0.2 * np.exp(-(major**2 / 32.0 + minor**2 / 4.5))
    hdu = fits.PrimaryHDU(image.astype(np.float32))
    cards = {
        "CTYPE1": "RA---SIN",
        "CTYPE2": "DEC--SIN",
        "CRVAL1": 80.0,
        "CRVAL2": 45.0,
        "CRPIX1": 40.0,
        "CRPIX2": 40.0,
        "CDELT1": -1 / 3600,
        "CDELT2": 1 / 3600,
        "BMAJ": 2 / 3600,
        "BMIN": 2 / 3600,
        "BUNIT": "Jy/beam",
    }
    hdu.header.update(cards)
    hdu.writeto(tmp_path / "pa.fits")
    _, table = run_app(tmp_path / "pa.fits", tmp_path / "out")
    assert len(table) == 1
    assert table["pa"][0] == pytest.approx(30.0, abs=2.0)
    assert table["maj"][0] > 2.0 * table["min"][0]


def test_large_island_does_not_overflow_sep(tmp_path: Path) -> None:
    # One island of ~320,000 pixels: more than sep's default pixel buffer of 300,000.
    n = 1000
    yy, xx = np.mgrid[0:n, 0:n]
    image = np.random.default_rng(1).normal(0, 1e-3, (n, n)).astype(np.float32)
    image[(xx - 500) ** 2 + (yy - 500) ** 2 < 320**2] += 0.05
    hdu = fits.PrimaryHDU(image)
    hdu.header.update(
        {
            "CTYPE1": "RA---SIN",
            "CTYPE2": "DEC--SIN",
            "CRVAL1": 10.0,
            "CRVAL2": -30.0,
            "CRPIX1": 500.0,
            "CRPIX2": 500.0,
            "CDELT1": -1 / 3600,
            "CDELT2": 1 / 3600,
        }
    )
    hdu.writeto(tmp_path / "big.fits")
    # One background box over the whole image: its rms (~0.023) is inflated by the disk, so
    # low thresholds keep the disk (0.05) one island, and noise below them.
    _, table = run_app(
        tmp_path / "big.fits",
        tmp_path / "out",
        precision="fp32",
        back_size=Extent(n, "pix"),
        deblend_cont=1.0,
        thresh=1.5,
        seed=1.5,
    )
    assert len(table) == 1
    assert abs(table["x"][0] - 500) < 1 and abs(table["y"][0] - 500) < 1


def test_catalogue_validates_against_the_schema(
    test_data: Path, tmp_path: Path, shared_dir: Path
) -> None:
    run_app(test_data / "image2d.fits", tmp_path, thresh=4.0)
    path = tmp_path / "catalogue.xml"
    schema = etree.XMLSchema(etree.parse(str(shared_dir / "ivoa" / "VOTable-v1.4.xsd")))
    assert schema.validate(etree.parse(str(path))), schema.error_log
    report = io.StringIO()
    assert validate(str(path), output=report, xmllint=False), report.getvalue()
    votable = parse(str(path))
    for field in votable.get_first_table().fields:
        assert field.unit is not None and field.ucd, field.name
        assert field.description, field.name
    infos = {i.name: i.value for i in votable.resources[0].infos}
    assert infos["job_id"] == "job-test" and infos["model_id"] == "sep"
    assert infos["model_version"] == SepFinder.version
    assert infos["param:thresh"] == "4.0" and infos["param:precision"] == "fp64"


# --------------------------------------------------------------------------- refusals

REFUSED = {
    "cube3d_4planes.fits": ("axis 3 (FREQ) has 4 planes", "send one plane"),
    "no_wcs.fits": ("no celestial WCS",),
    "table_only.fits": ("no image HDU", "BinTableHDU"),
    "not_fits.txt": ("not a FITS file",),
    "all_nan.fits": ("every pixel", "blank"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_input_fails_clearly_and_writes_nothing(
    test_data: Path, tmp_path: Path, name: str
) -> None:
    staging = tmp_path / "staging"
    with pytest.raises(JobFailure) as failure:
        run_app(test_data / name, staging)
    for words in REFUSED[name]:
        assert words in failure.value.message
    assert list(staging.iterdir()) == []


def test_tiny_roi_is_refused(test_data: Path, tmp_path: Path) -> None:
    image = load_image(test_data / "image2d.fits")
    centre = image.wcs.pixel_to_world(30.0, 30.0).icrs
    roi = Roi(centre.ra.deg, centre.dec.deg, Extent(5, "pix"), Extent(20, "pix"))
    with pytest.raises(JobFailure, match=r"region of interest is only 5 x 20 pixels"):
        run_app(test_data / "image2d.fits", tmp_path, roi=roi)
    assert list(tmp_path.iterdir()) == []


def test_roi_outside_is_refused(test_data: Path, tmp_path: Path) -> None:
    roi = Roi(10.0, -40.0, Extent(10, "pix"), Extent(10, "pix"))
    with pytest.raises(JobFailure, match="lies outside the image"):
        run_app(test_data / "image2d.fits", tmp_path, roi=roi)
    assert list(tmp_path.iterdir()) == []


def test_roi_of_blank_pixels_is_refused(test_data: Path, tmp_path: Path) -> None:
    image = load_image(test_data / "int16_bscale_blank.fits")
    centre = image.wcs.pixel_to_world(52.5, 7.5).icrs  # the 6 x 6 BLANK patch
    roi = Roi(centre.ra.deg, centre.dec.deg, Extent(8, "pix"), Extent(8, "pix"))
    with pytest.raises(JobFailure, match="pixels of the region of interest are valid"):
        run_app(test_data / "int16_bscale_blank.fits", tmp_path, roi=roi)
