"""The CSV, JSON and DS9 catalogue writers (astro_otf.results.formats): readable back by
the tools they are for, with blanks where nothing was measured, written atomically."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pytest
import regions
from astropy.table import Column, MaskedColumn, Table
from astropy.wcs import WCS

from astro_otf.imaging.facts import ImageFact
from astro_otf.results.catalogue import CATALOGUE_COLUMNS, Catalogue, conform
from astro_otf.results.formats import DS9_HEADER, write_csv, write_ds9, write_json

INFOS = {"job_id": "j-42", "model_id": "sep"}


def make_catalogue(n_rows: int = 5) -> Catalogue:
    """Five sources: a full ellipse, one with only axes (no pa), one with only maj, one with
    no size at all, and one with no position; plus an app column and a masked class."""
    rows: dict[str, Any] = {
        "ra": [150.0, 150.01, 149.99, 150.02, np.nan],
        "dec": [30.0, 30.01, 29.99, -0.5, 30.0],
        "peak_flux": [0.1, 0.2, np.inf, 0.4, 0.5],
        "maj": [10.0, 8.0, 6.0, np.nan, 5.0],
        "min": [4.0, 3.0, np.nan, np.nan, 2.0],
        "pa": [0.0, np.nan, 10.0, 20.0, 30.0],
        "x": [10.5, 20.0, 30.0, 40.0, 50.0],
        "y": [11.0, 21.0, 31.0, 41.0, 51.0],
    }
    table = Table({k: v[:n_rows] for k, v in rows.items()})
    table["class"] = MaskedColumn(
        ["point", "", "extended", "point", "point"][:n_rows],
        mask=[False, True, False, False, False][:n_rows],
    )
    table["tile"] = MaskedColumn(np.zeros(n_rows, dtype=np.int32), mask=np.ones(n_rows, bool))
    table["snr_local"] = Column(
        np.arange(n_rows, dtype=float) * 1.5, unit="", meta={"ucd": "stat.snr"}
    )
    table["snr_local"].description = "Local signal-to-noise."
    table.meta["comments"] = ["would be a # line in CSV"]
    return Catalogue(
        table=conform(table, peak_unit="Jy/beam", int_unit="Jy"),
        facts=[
            ImageFact("rms", 1.5e-4, "Jy/beam", "stat.stdev;phot.flux.density", "Image rms."),
            ImageFact("bmaj", float("nan"), "arcsec", "instr.beam", "Beam major axis."),
            ImageFact("frame", "ICRS", "", "pos.frame", "Sky frame."),
        ],
        infos={"model_sha256": "abc123"},
        description="Sources found by sep.",
    )


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_round_trips_through_astropy(tmp_path: Path) -> None:
    catalogue = make_catalogue()
    path = write_csv(catalogue, tmp_path / "cat.csv")
    assert path == tmp_path / "cat.csv"
    text = path.read_text()
    assert text.splitlines()[0] == ",".join(catalogue.table.colnames)
    assert "#" not in text  # table.meta comments are not written

    back = Table.read(path, format="ascii.csv")
    assert back.colnames == catalogue.table.colnames
    assert len(back) == 5
    assert list(back["id"]) == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(back["ra"][:4], catalogue.table["ra"][:4])  # full precision
    np.testing.assert_array_equal(back["x"], [10.5, 20.0, 30.0, 40.0, 50.0])
    assert back["ra"].mask[4]  # NaN is written blank and read back as missing
    assert back["pa"].mask[1] and not back["pa"].mask[0]
    assert back["min"].mask.tolist() == [False, False, True, True, False]
    assert back["class"][0] == "point" and back["class"].mask[1]
    assert back["peak_flux"][2] == np.inf  # only NaN means "not measured"
    assert back["snr_local"].tolist() == [0.0, 1.5, 3.0, 4.5, 6.0]
    assert back["ra_err"].mask.all()  # a standard column the finder does not measure
    assert no_temporaries(tmp_path)


def test_csv_of_zero_rows_is_the_header_only(tmp_path: Path) -> None:
    catalogue = make_catalogue(0)
    path = write_csv(catalogue, tmp_path / "empty.csv")
    assert path.read_text().splitlines() == [",".join(catalogue.table.colnames)]
    back = Table.read(path, format="ascii.csv")
    assert len(back) == 0
    assert back.colnames == [spec.name for spec in CATALOGUE_COLUMNS] + ["snr_local"]


def test_csv_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "cat.csv"
    target.write_text("old content\n")
    write_csv(make_catalogue(2), target)
    assert len(Table.read(target, format="ascii.csv")) == 2
    assert no_temporaries(tmp_path)


# -- JSON --------------------------------------------------------------------------------------


def strict_load(path: Path) -> dict[str, Any]:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    document = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    assert isinstance(document, dict)
    return document


def test_json_document_has_infos_facts_columns_and_rows(tmp_path: Path) -> None:
    catalogue = make_catalogue()
    path = write_json(catalogue, tmp_path / "cat.json", infos=INFOS)
    doc = strict_load(path)
    assert set(doc) == {"infos", "facts", "columns", "rows", "description"}
    assert doc["description"] == "Sources found by sep."
    assert doc["infos"] == {"job_id": "j-42", "model_id": "sep", "model_sha256": "abc123"}

    facts = {f["name"]: f for f in doc["facts"]}
    assert facts["rms"] == {
        "name": "rms",
        "value": 1.5e-4,
        "unit": u.Unit("Jy/beam").to_string("vounit"),
        "ucd": "stat.stdev;phot.flux.density",
        "description": "Image rms.",
    }
    assert facts["bmaj"]["value"] is None  # NaN
    assert facts["frame"]["value"] == "ICRS" and facts["frame"]["unit"] == ""

    columns = {c["name"]: c for c in doc["columns"]}
    assert [c["name"] for c in doc["columns"]] == catalogue.table.colnames
    assert columns["ra"] == {
        "name": "ra",
        "unit": "deg",
        "ucd": "pos.eq.ra;meta.main",
        "description": "Right ascension (ICRS) of the centre.",
        "datatype": "float",
    }
    assert columns["id"]["datatype"] == "int" and columns["id"]["unit"] == ""
    assert columns["class"]["datatype"] == "string"
    assert columns["tile"]["datatype"] == "int"
    assert columns["maj"]["unit"] == "arcsec"
    assert columns["peak_flux"]["unit"] == u.Unit("Jy/beam").to_string("vounit")
    assert columns["x"]["unit"] == u.Unit("pix").to_string("vounit")  # "pixel"
    assert columns["snr_local"]["ucd"] == "stat.snr"
    assert columns["snr_local"]["description"] == "Local signal-to-noise."

    rows = doc["rows"]
    assert len(rows) == 5 and all(len(r) == len(columns) for r in rows)
    index = {name: i for i, name in enumerate(catalogue.table.colnames)}
    assert [r[index["id"]] for r in rows] == [1, 2, 3, 4, 5]
    assert isinstance(rows[0][index["id"]], int)
    assert rows[0][index["ra"]] == 150.0
    assert rows[4][index["ra"]] is None  # NaN
    assert rows[2][index["peak_flux"]] is None  # inf
    assert rows[1][index["class"]] is None  # masked text
    assert rows[0][index["class"]] == "point"
    assert all(r[index["tile"]] is None for r in rows)  # masked integers (not measured)
    assert all(r[index["ra_err"]] is None for r in rows)


def test_json_app_infos_cannot_replace_the_services(tmp_path: Path) -> None:
    catalogue = make_catalogue(1)
    catalogue.infos = {"job_id": "forged", "background": "sep.Background"}
    doc = strict_load(write_json(catalogue, tmp_path / "c.json", infos=INFOS))
    assert doc["infos"] == {"job_id": "j-42", "model_id": "sep", "background": "sep.Background"}
    assert list(doc["infos"]) == ["job_id", "model_id", "background"]


def test_json_is_strict_even_with_nan_everywhere(tmp_path: Path) -> None:
    table = Table({"ra": [np.nan, np.inf], "dec": [-np.inf, np.nan]})
    catalogue = Catalogue(
        conform(table), facts=[ImageFact("rms", float("inf"), "", "stat.stdev", "")]
    )
    doc = strict_load(write_json(catalogue, tmp_path / "nan.json", infos={}))
    assert doc["facts"][0]["value"] is None
    assert [row[1:3] for row in doc["rows"]] == [[None, None], [None, None]]


def test_json_of_zero_rows(tmp_path: Path) -> None:
    doc = strict_load(write_json(make_catalogue(0), tmp_path / "empty.json", infos=INFOS))
    assert doc["rows"] == []
    assert len(doc["columns"]) == len(CATALOGUE_COLUMNS) + 1
    assert no_temporaries(tmp_path)


# -- DS9 ---------------------------------------------------------------------------------------


def north_up_wcs(ra: float = 150.0, dec: float = 30.0) -> WCS:
    """A north-up, east-left TAN WCS of 1 arcsec pixels centred on (ra, dec)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [101.0, 101.0]
    wcs.wcs.cdelt = [-1.0 / 3600.0, 1.0 / 3600.0]
    return wcs


def read_ds9(path: Path) -> list[Any]:
    return list(regions.Regions.read(str(path), format="ds9"))


def test_ds9_shapes_centres_and_labels(tmp_path: Path) -> None:
    catalogue = make_catalogue()
    path = write_ds9(catalogue, tmp_path / "cat.reg")
    text = path.read_text()
    assert text.splitlines()[0] == DS9_HEADER
    assert "icrs" in text.splitlines()
    shapes = read_ds9(path)
    # row 5 has no RA: skipped
    assert [type(s).__name__ for s in shapes] == [
        "EllipseSkyRegion",  # maj, min and pa
        "CircleSkyRegion",  # maj and min, no pa
        "CircleSkyRegion",  # maj only
        "PointSkyRegion",  # no size
    ]
    table = catalogue.table
    for shape, row in zip(shapes, table[:4], strict=True):
        assert shape.center.frame.name == "icrs"
        assert shape.center.ra.deg == pytest.approx(row["ra"], abs=1e-6)
        assert shape.center.dec.deg == pytest.approx(row["dec"], abs=1e-6)
        assert str(shape.meta["text"]) == str(row["id"])
    ellipse, circle_both, circle_maj, _ = shapes
    assert ellipse.width.to_value(u.arcsec) == pytest.approx(10.0, rel=1e-6)
    assert ellipse.height.to_value(u.arcsec) == pytest.approx(4.0, rel=1e-6)
    assert circle_both.radius.to_value(u.arcsec) == pytest.approx(4.0, rel=1e-6)  # max/2
    assert circle_maj.radius.to_value(u.arcsec) == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize(
    ("pa", "direction"),
    [
        (0.0, (0.0, 1.0)),  # north: up
        (90.0, (-1.0, 0.0)),  # east: left on a north-up image
        (30.0, (-0.5, math.sqrt(3) / 2)),
        (-45.0, (math.sqrt(0.5), math.sqrt(0.5))),  # north-west
    ],
)
def test_ds9_ellipse_major_axis_is_at_the_position_angle(
    tmp_path: Path, pa: float, direction: tuple[float, float]
) -> None:
    """On a north-up image an ellipse of PA p has its major axis at p east (left) of +y."""
    table = Table({"ra": [150.0], "dec": [30.0], "maj": [20.0], "min": [5.0], "pa": [pa]})
    path = write_ds9(Catalogue(conform(table)), tmp_path / "one.reg")
    (shape,) = read_ds9(path)
    pixel = shape.to_pixel(north_up_wcs())
    assert pixel.center.x == pytest.approx(100.0, abs=1e-6)
    assert pixel.center.y == pytest.approx(100.0, abs=1e-6)
    assert pixel.width == pytest.approx(20.0, rel=1e-3)  # width is the major axis
    assert pixel.height == pytest.approx(5.0, rel=1e-3)
    angle = pixel.angle.to_value(u.rad)
    major = (math.cos(angle), math.sin(angle))
    # same line (an axis has no sign): |cross product| ~ 0
    assert abs(major[0] * direction[1] - major[1] * direction[0]) < 1e-6
    # and the pixel ellipse really is long along that direction
    far = pixel.center.x + 9.0 * direction[0], pixel.center.y + 9.0 * direction[1]
    across = pixel.center.x - 9.0 * direction[1], pixel.center.y + 9.0 * direction[0]
    assert pixel.contains(regions.PixCoord(*far))
    assert not pixel.contains(regions.PixCoord(*across))


def test_ds9_one_source_keeps_its_label_on_the_shape_line(tmp_path: Path) -> None:
    table = Table({"id": [7], "ra": [10.0], "dec": [-5.0]})
    path = write_ds9(Catalogue(conform(table)), tmp_path / "one.reg")
    lines = path.read_text().splitlines()
    assert not any(line.startswith("global") for line in lines)
    assert lines[-1].startswith("point(") and lines[-1].endswith("# text={7}")
    (shape,) = read_ds9(path)
    assert str(shape.meta["text"]) == "7"


def test_ds9_of_zero_rows_is_a_valid_empty_file(tmp_path: Path) -> None:
    path = write_ds9(make_catalogue(0), tmp_path / "empty.reg")
    assert path.read_text().splitlines() == [DS9_HEADER, "icrs"]
    assert read_ds9(path) == []
    assert no_temporaries(tmp_path)


def test_ds9_skips_rows_without_a_position(tmp_path: Path) -> None:
    table = Table(
        {"ra": MaskedColumn([1.0, 2.0, np.nan], mask=[False, True, False]), "dec": [0.0] * 3}
    )
    path = write_ds9(Catalogue(conform(table)), tmp_path / "none.reg")
    shapes = read_ds9(path)
    assert [s.center.ra.deg for s in shapes] == pytest.approx([1.0])
    assert str(shapes[0].meta["text"]) == "1"


# -- written a column at a time: the same text as the reference writers ---------------------


def awkward_catalogue(n: int, seed: int = 7) -> Catalogue:
    """Sources with every awkward value the writers meet: NaN and infinite floats, masked
    cells, wrapped RA, sizes that are zero, negative or blank, text needing CSV quotes,
    float32, integer and boolean app columns."""
    rng = np.random.default_rng(seed)
    table = Table(
        {
            "ra": rng.uniform(-5.0, 365.0, n),
            "dec": rng.uniform(-90.0, 90.0, n),
            "peak_flux": rng.lognormal(0.0, 4.0, n),
            "maj": rng.choice([np.nan, 0.0, -1.0, 5.0, 12.345678, np.inf], n)
            * rng.uniform(0.5, 2, n),
            "min": rng.choice([np.nan, 3.0, 1.0], n),
            "pa": rng.choice([np.nan, 10.0, -200.0, 359.99], n),
            "score": rng.normal(size=n) * 1e-6,
            "x": rng.uniform(0, 1e4, n),
            "y": rng.uniform(0, 1e4, n),
            "class": MaskedColumn(
                rng.choice(["a", "b,c", " d ", "", 'q"u', "é"], n), mask=rng.random(n) < 0.2
            ),
        }
    )
    if n >= 7:
        table["peak_flux"][:6] = [1e16, 1e-5, 1e-4, np.inf, -np.inf, 0.1 + 0.2]
        table["dec"][6] = np.nan
    snr32 = rng.normal(size=n).astype(np.float32)
    table["snr32"] = Column(snr32, unit="", meta={"ucd": "stat.snr"})
    table["npix"] = MaskedColumn(
        rng.integers(0, 99, n), mask=rng.random(n) < 0.3, unit="pix", meta={"ucd": "meta.number"}
    )
    table["flag"] = Column(rng.random(n) < 0.5, unit="", meta={"ucd": "meta.code"})
    return Catalogue(conform(table, peak_unit="Jy/beam", int_unit="Jy"))


def astropy_csv(table: Table) -> str:
    """What astropy's CSV writer gives for ``table`` with NaN cells masked (the reference)."""
    columns = []
    for name in table.colnames:
        values = np.asarray(table[name])
        mask = np.asarray(getattr(table[name], "mask", np.zeros(len(table), bool)), bool)
        if values.dtype.kind == "f":
            mask = mask | np.isnan(values)
        columns.append(MaskedColumn(values, name=name, mask=mask))
    out = io.StringIO()
    Table(columns).write(out, format="ascii.csv")
    return out.getvalue()


@pytest.mark.parametrize("n", [0, 1, 2, 300])
def test_csv_is_what_astropy_writes(tmp_path: Path, n: int) -> None:
    catalogue = awkward_catalogue(n)
    path = write_csv(catalogue, tmp_path / "c.csv")
    text = path.read_text(encoding="utf-8")
    assert text == astropy_csv(catalogue.table)
    back = Table.read(text, format="ascii.csv")
    assert len(back) == n
    if n:
        finite = np.isfinite(catalogue.table["peak_flux"])
        np.testing.assert_array_equal(
            np.asarray(back["peak_flux"])[finite], catalogue.table["peak_flux"][finite]
        )  # shortest round-trip text: the same float64 values


@pytest.mark.parametrize("n", [0, 1, 300])
def test_json_rows_are_what_json_dumps_writes(tmp_path: Path, n: int) -> None:
    catalogue = awkward_catalogue(n)
    path = write_json(catalogue, tmp_path / "c.json", infos=INFOS)
    doc = strict_load(path)
    table = catalogue.table
    for j, name in enumerate(table.colnames):
        column = table[name]
        mask = np.asarray(getattr(column, "mask", np.zeros(n, bool)), bool)
        got = [row[j] for row in doc["rows"]]
        values = np.asarray(column)
        if values.dtype.kind == "f":
            as64 = values.astype(np.float64)
            want: list[Any] = [
                None if m or not math.isfinite(v) else v
                for v, m in zip(as64.tolist(), mask, strict=True)
            ]
        elif values.dtype.kind in "iub":
            want = [None if m else int(v) for v, m in zip(values.tolist(), mask, strict=True)]
        else:
            want = [None if m else str(v) for v, m in zip(values.tolist(), mask, strict=True)]
        assert got == want, name
    # the rows' text is json.dumps's own (separators, escapes, non-ASCII kept)
    rows = json.dumps(doc["rows"], ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    assert f'"rows":{rows}' in path.read_text(encoding="utf-8")


def test_ds9_regions_hold_what_the_table_holds(tmp_path: Path) -> None:
    catalogue = awkward_catalogue(300)
    table = catalogue.table
    shapes = read_ds9(write_ds9(catalogue, tmp_path / "c.reg"))
    ra, dec = np.asarray(table["ra"]), np.asarray(table["dec"])
    keep = np.flatnonzero(np.isfinite(ra) & np.isfinite(dec))
    assert len(shapes) == len(keep)
    for shape, i in zip(shapes, keep.tolist(), strict=True):
        centre = shape.center.icrs
        assert centre.ra.deg == pytest.approx(ra[i] % 360.0, abs=1e-9)
        assert centre.dec.deg == pytest.approx(dec[i], abs=1e-9)
        assert str(shape.meta["text"]) == str(table["id"][i])
        a, b, pa = (float(table[c][i]) for c in ("maj", "min", "pa"))
        sized_a, sized_b = math.isfinite(a) and a > 0, math.isfinite(b) and b > 0
        if sized_a and sized_b and math.isfinite(pa):
            assert isinstance(shape, regions.EllipseSkyRegion)
            assert shape.width.to_value(u.arcsec) == pytest.approx(a, abs=1e-5)
            assert shape.height.to_value(u.arcsec) == pytest.approx(b, abs=1e-5)
            assert shape.angle.to_value(u.deg) == pytest.approx((pa + 90.0) % 360.0, abs=1e-8)
        elif sized_a or sized_b:
            assert isinstance(shape, regions.CircleSkyRegion)
            radius = max(v for v, ok in ((a, sized_a), (b, sized_b)) if ok) / 2
            assert shape.radius.to_value(u.arcsec) == pytest.approx(radius, abs=1e-5)
        else:
            assert isinstance(shape, regions.PointSkyRegion)


def test_ds9_text_is_what_regions_writes(tmp_path: Path) -> None:
    """Line for line what ``regions`` serializes for the same shapes (the old writer)."""
    from astropy.coordinates import SkyCoord

    catalogue = awkward_catalogue(60)
    table = catalogue.table
    text = write_ds9(catalogue, tmp_path / "c.reg").read_text()
    expected = []
    for row in table:
        if not (math.isfinite(row["ra"]) and math.isfinite(row["dec"])):
            continue
        centre = SkyCoord(row["ra"] * u.deg, row["dec"] * u.deg, frame="icrs")
        a, b, pa = float(row["maj"]), float(row["min"]), float(row["pa"])
        meta = {"text": str(row["id"])}
        shape: regions.SkyRegion
        if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) and math.isfinite(pa):
            shape = regions.EllipseSkyRegion(
                centre, a * u.arcsec, b * u.arcsec, ((pa + 90.0) % 360.0) * u.deg, meta=meta
            )
        elif (math.isfinite(a) and a > 0) or (math.isfinite(b) and b > 0):
            radius = max(v for v in (a, b) if math.isfinite(v) and v > 0) / 2
            shape = regions.CircleSkyRegion(centre, radius * u.arcsec, meta=meta)
        else:
            shape = regions.PointSkyRegion(centre, meta=meta)
        expected.append(shape)
    lines = regions.Regions(expected).serialize(format="ds9", precision=10).splitlines()
    shape_lines = [line for line in lines if "(" in line]
    assert text.splitlines()[2:] == shape_lines
