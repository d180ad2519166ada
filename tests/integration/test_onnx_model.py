"""The matched-filter ONNX model served as a job: real ONNX Runtime, real images."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io.votable import parse_single_table
from astropy.table import Table

from astro_otf.domain.parameters import roi_from, validate
from astro_otf.models.base import AppRequest
from astro_otf.models.onnx_detector import RuntimeConfig
from astro_otf.models.registry import RegistryConfig, build_registry
from tests.conftest import ServerProcess
from tests.integration.test_uws_api import create, wait_final
from tests.products import write_results


def run_app(image: Path, raw: dict[str, str], out: Path) -> Table:
    app = build_registry(RegistryConfig(runtime=RuntimeConfig(intra_op_threads=1))).get(
        "matched-filter"
    )
    checked = validate(
        raw, ["image"], app.parameters, precisions=app.precisions, model_id=app.model_id
    )
    out.mkdir(exist_ok=True)
    output = app.run(
        AppRequest(
            "t", image, checked.values, roi_from(checked.values), out, logging.getLogger("test")
        )
    )
    assert output.info["n_sources"] >= 0
    paths = write_results(app, output, out, image_path=image, values=checked.values)
    return parse_single_table(str(paths["result"])).to_table()


def truth_matches(table: Table, real_data: Path, radius_arcsec: float = 15) -> float:
    truth = Table.read(real_data / "aegean" / "synthetic_test_truth.csv")
    found = SkyCoord(table["ra"], table["dec"], unit="deg")
    ref = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    _, sep, _ = ref.match_to_catalog_sky(found)
    return float(np.mean(sep.arcsec < radius_arcsec))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_finds_the_synthetic_sources(real_data: Path, tmp_path: Path, precision: str) -> None:
    table = run_app(
        real_data / "aegean" / "synthetic_test.fits", {"precision": precision}, tmp_path
    )
    assert 100 <= len(table) <= 106
    assert truth_matches(table, real_data) >= 0.98
    assert (table["score"] >= 5).all()
    assert list(table.colnames[:3]) == ["id", "ra", "dec"]


def test_threshold_and_region(real_data: Path, tmp_path: Path) -> None:
    image = real_data / "aegean" / "synthetic_test.fits"
    strict = run_app(image, {"threshold": "50"}, tmp_path / "a")
    loose = run_app(image, {"threshold": "5"}, tmp_path / "b")
    assert len(strict) < len(loose)
    centre = loose[len(loose) // 2]
    roi = run_app(
        image,
        {"ra": str(centre["ra"]), "dec": str(centre["dec"]), "width": "64", "height": "64"},
        tmp_path / "c",
    )
    assert 1 <= len(roi) < len(loose)
    assert ((abs(roi["x"] - centre["x"]) <= 33) & (abs(roi["y"] - centre["y"]) <= 33)).all()


@pytest.mark.parametrize(
    "rel",
    [
        "pyse/SWIFT_554620-130504.fits",
        "astroquery/magpis_G10.5+0.0.fits",
        "caesar/ScorpioS17Field.fits",
    ],
)
def test_real_images_of_other_shapes(real_data: Path, tmp_path: Path, rel: str) -> None:
    table = run_app(real_data / rel, {}, tmp_path)
    assert len(table) >= 1
    assert np.isfinite(table["ra"]).all() and np.isfinite(table["dec"]).all()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def test_served_as_a_job(client: httpx.Client, real_data: Path, tmp_path: Path) -> None:
    models = client.get("/models").json()
    assert "matched-filter" in [m["id"] for m in models["models"]]
    job_id = create(
        client,
        {"MODEL": "matched-filter", "PRECISION": "fp16", "PHASE": "RUN"},
        real_data / "aegean" / "synthetic_test.fits",
    )
    doc = wait_final(client, job_id)
    assert doc["phase"] == "COMPLETED", doc["errorSummary"]
    assert doc["parameters"]["model"] == "matched-filter"
    out = tmp_path / "cat.vot"
    out.write_bytes(client.get(f"/jobs/{job_id}/results/result").content)
    assert truth_matches(Table.read(out), real_data) >= 0.98
    bad = client.post(
        "/jobs",
        data={"MODEL": "matched-filter", "THRESHOLD": "0.1"},
        files={"IMAGE": ("x.fits", b"SIMPLE")},
    )
    assert bad.status_code == 400 and "THRESHOLD" in bad.text
    bad = client.post(
        "/jobs",
        data={"MODEL": "matched-filter", "PRECISION": "int8"},
        files={"IMAGE": ("x.fits", b"SIMPLE")},
    )
    assert bad.status_code == 400 and "PRECISION" in bad.text
