"""The VOTable catalogue writer (astro_otf.results.votable): schema-valid, described, atomic."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io.votable import parse, validate
from astropy.table import Column, Table
from lxml import etree

from astro_otf.results.votable import write_catalogue

INFOS = {"job_id": "j-123", "model_id": "sep", "model_version": "1.0 (sep 1.4.1)"}
PARAMS = {"thresh": 3.0, "filter": False, "width": "2 arcmin"}


@pytest.fixture(scope="module")
def schema(shared_dir: Path) -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(shared_dir / "ivoa" / "VOTable-v1.4.xsd")))


def catalogue(n: int) -> Table:
    rng = np.random.default_rng(3)
    return Table(
        [
            Column(
                np.arange(1, n + 1, dtype=np.int32),
                name="id",
                unit="",
                meta={"ucd": "meta.id;meta.main"},
                description="Source number.",
            ),
            Column(
                rng.uniform(0, 360, n), name="ra", unit="deg", meta={"ucd": "pos.eq.ra;meta.main"}
            ),
            Column(
                rng.uniform(-90, 90, n),
                name="dec",
                unit="deg",
                meta={"ucd": "pos.eq.dec;meta.main"},
            ),
            Column(
                rng.uniform(0, 1, n),
                name="peak_flux",
                unit="Jy/beam",
                meta={"ucd": "phot.flux.density;stat.max"},
            ),
            Column(
                rng.uniform(0, 1, n), name="int_flux", unit="Jy", meta={"ucd": "phot.flux.density"}
            ),
            Column(rng.uniform(0, 100, n), name="x", unit="pix", meta={"ucd": "pos.cartesian.x"}),
            Column(np.full(n, np.nan), name="pa", unit="deg", meta={"ucd": "pos.posAng"}),
        ]
    )


def check_document(path: Path, schema: etree.XMLSchema, n_rows: int) -> None:
    document = etree.parse(str(path))
    assert schema.validate(document), schema.error_log
    report = io.StringIO()
    assert validate(str(path), output=report, xmllint=False), report.getvalue()
    votable = parse(str(path))
    assert votable.version == "1.4"
    resource = votable.resources[0]
    assert resource.type == "results"
    fields = votable.get_first_table().fields
    assert [f.name for f in fields] == ["id", "ra", "dec", "peak_flux", "int_flux", "x", "pa"]
    for field in fields:
        assert field.unit is not None, field.name
        assert field.ucd, field.name
    raw = path.read_text()
    assert raw.count("<FIELD ") == raw.count('unit="') == len(fields)
    assert len(votable.get_first_table().array) == n_rows


@pytest.mark.parametrize("n", [5, 0])
def test_catalogue_is_valid_votable_14(tmp_path: Path, schema: etree.XMLSchema, n: int) -> None:
    path = write_catalogue(catalogue(n), tmp_path / "catalogue.vot", infos=INFOS, params=PARAMS)
    assert path == tmp_path / "catalogue.vot"
    check_document(path, schema, n)


def test_infos_params_and_descriptions(tmp_path: Path) -> None:
    path = write_catalogue(
        catalogue(2), tmp_path / "c.vot", infos=INFOS, params=PARAMS, description="Test run."
    )
    votable = parse(str(path))
    resource = votable.resources[0]
    infos = {info.name: info.value for info in resource.infos}
    assert infos["QUERY_STATUS"] == "OK"
    for key, value in INFOS.items():
        assert infos[key] == value
    assert infos["param:thresh"] == "3.0"
    assert infos["param:filter"] == "False"
    assert infos["param:width"] == "2 arcmin"
    assert resource.description == "Test run."
    fields = {f.name: f for f in votable.get_first_table().fields}
    assert fields["id"].description == "Source number."
    assert str(fields["peak_flux"].unit) == "Jy / beam"
    assert fields["ra"].ucd == "pos.eq.ra;meta.main"
    assert fields["ra"].ref == fields["dec"].ref
    assert resource.coordinate_systems[0].system == "ICRS"
    table = votable.get_first_table().to_table()
    np.testing.assert_allclose(table["ra"], catalogue(2)["ra"])
    assert np.ma.getmaskarray(table["pa"]).all()  # NaN reads back as null


def test_replaces_existing_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "catalogue.vot"
    target.write_text("old")
    write_catalogue(catalogue(3), target, infos=INFOS)
    assert parse(str(target)).get_first_table().array.shape == (3,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalogue.vot"]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ("unit", "x: no unit"),
        ("ucd_missing", "x: no UCD"),
        ("ucd_bad", "is not valid"),
    ],
)
def test_undescribed_column_is_refused(tmp_path: Path, change: str, words: str) -> None:
    table = catalogue(2)
    if change == "unit":
        table["x"].unit = None
    elif change == "ucd_missing":
        del table["x"].meta["ucd"]
    else:
        table["x"].meta["ucd"] = "pos.cartesian.notaword"
    with pytest.raises(ValueError, match=words):
        write_catalogue(table, tmp_path / "c.vot", infos=INFOS)
    assert list(tmp_path.iterdir()) == []
