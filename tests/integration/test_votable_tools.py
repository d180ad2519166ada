"""The sep catalogue passes the VO tools astronomers use: STILTS votlint (Debian's stilts),
the VOTable 1.4 schema and astropy's validator, for several kinds of image and for an empty
catalogue."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from astropy.io.votable import parse, validate
from lxml import etree

from astro_otf.domain.parameters import validate as validate_params
from astro_otf.models.base import AppRequest
from astro_otf.models.sep_finder import SepFinder
from tests.products import write_results

CASES = {
    "synthetic": ("aegean/synthetic_test.fits", {}),
    "galactic_magpis": ("astroquery/magpis_G10.5+0.0.fits", {}),
    "ami_4d_cube": ("pyse/SWIFT_554620-130504.fits", {}),
    "empty_catalogue": ("astroquery/first_J105007+304037.fits", {"seed": "1000"}),
}


@pytest.fixture(scope="module")
def stilts() -> str:
    path = shutil.which("stilts")
    if path is None:
        pytest.fail("stilts is not installed: `make deb-test` installs the Debian package")
    return path


def run_sep(image: Path, raw: dict[str, str], out: Path) -> Path:
    app = SepFinder()
    checked = validate_params(
        raw, ["image"], app.parameters, precisions=app.precisions, model_id="sep"
    )
    out.mkdir()
    output = app.run(
        AppRequest(
            job_id="votlint",
            image_path=image,
            values=checked.values,
            roi=None,
            staging_dir=out,
            log=logging.getLogger("test"),
        )
    )
    return write_results(app, output, out, image_path=image, values=checked.values)["result"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_catalogue_is_clean_for_votlint_schema_and_astropy(
    case: str, real_data: Path, tmp_path: Path, stilts: str, votable_schema: etree.XMLSchema
) -> None:
    rel, raw = CASES[case]
    path = run_sep(real_data / rel, raw, tmp_path / "out")
    lint = subprocess.run(
        [stilts, "votlint", "validate=true", f"votable={path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # votlint exits 0 even when it reports problems: any output line is a finding
    findings = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    assert lint.returncode == 0 and findings == [], findings
    assert votable_schema.validate(etree.parse(str(path))), votable_schema.error_log
    report = io.StringIO()
    assert validate(str(path), output=report), report.getvalue()
    table = parse(str(path)).get_first_table()
    for field in table.fields:  # a UCD and a unit on every column (dimensionless: "")
        assert field.ucd and field.unit is not None, field.name
    units = {f.name: str(f.unit) for f in table.fields}
    assert (units["ra"], units["dec"], units["peak_flux"]) == ("deg", "deg", "Jy / beam")
    if case == "empty_catalogue":
        assert len(table.array) == 0
    else:
        assert len(table.array) >= 1
