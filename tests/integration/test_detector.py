"""The shipped trained detector (``radio-detector``), run in process as a worker runs it.

Version 2.0 (the default) must find the sources of a simulated SDC1-like field it never saw,
with fluxes and errors from Gaussian fits; keep to one detection on the single-source AMI
image (whose 12 px beam it only handles after block averaging) and on a bright point source;
keep a real pair two; make no detection in noise that rises towards an edge; give the same
sources in every precision; and measure position angles on the sky. Version 1.0 stays
installed and still runs. bench/science.py measures the full evaluation; these are its
floors.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.table import Table

from astro_otf.config import DEFAULT_MODEL
from astro_otf.models.base import AppRequest
from astro_otf.models.manifest import SHIPPED_MODELS
from astro_otf.models.onnx_detector import OnnxDetector, RuntimeConfig
from astro_otf.models.registry import RegistryConfig, build_registry
from training import simulate as sim

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
AMI = REAL / "pyse" / "SWIFT_554620-130504.fits"
SYNTHETIC = REAL / "aegean" / "synthetic_test.fits"

registry = build_registry(RegistryConfig(runtime=RuntimeConfig(intra_op_threads=1)))
app = registry.get("radio-detector")
app_1 = registry.get("radio-detector", "1.0")
BEAM_HEADER = {"BMAJ": 1.5 / 3600, "BMIN": 1.5 / 3600, "BPA": 0.0, "BUNIT": "JY/BEAM"}


def run(path: Path, tmp_path: Path, *, version: str | None = None, **values: object) -> Table:
    request = AppRequest(
        job_id="test",
        image_path=path,
        values=dict(values),
        roi=None,
        staging_dir=tmp_path,
        log=logging.getLogger("test.detector"),
    )
    catalogue = (app_1 if version == "1.0" else app).run(request).catalogue
    assert catalogue is not None
    return catalogue.table


def match(found: Table, truth: Table, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one nearest matches within the radius: (found index, truth index)."""
    a = SkyCoord(found["ra"], found["dec"], unit="deg")
    b = SkyCoord(truth["ra"], truth["dec"], unit="deg")
    idx, sep, _ = a.match_to_catalog_sky(b)
    pairs = sorted(
        (s, i, j)
        for i, (j, s) in enumerate(zip(idx, sep.arcsec, strict=True))
        if s <= radius_arcsec
    )
    used_a: set[int] = set()
    used_b: set[int] = set()
    for _, i, j in pairs:
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(int(j))
    return np.array(sorted(used_a)), np.array([int(idx[i]) for i in sorted(used_a)])


def test_the_trained_detector_is_the_default_model() -> None:
    assert DEFAULT_MODEL == "radio-detector"
    assert build_registry().default_model_id == "radio-detector"
    assert app.version == "2.0" and registry.versions("radio-detector") == ["2.0", "1.0"]
    assert app.precisions == ("fp32", "fp16", "int8")
    for version in ("1.0", "2.0"):
        card = SHIPPED_MODELS / "radio-detector" / version / "MODEL_CARD.md"
        assert "F1" in card.read_text()


def test_finds_the_sources_of_a_held_out_field(tmp_path: Path) -> None:
    image, truth_csv = sim.write_field(tmp_path / "f", *sim.HELDOUT_BOX[:2], 384, seed=11)
    truth = Table.read(truth_csv, format="ascii.csv")
    found = run(image, tmp_path)
    fi, ti = match(found, truth, radius_arcsec=sim.SDC1_BEAM_ARCSEC)
    completeness, purity = len(ti) / len(truth), len(fi) / len(found)
    f1 = 2 * completeness * purity / (completeness + purity)
    assert f1 >= 0.9, (completeness, purity)
    bright = np.asarray(truth["snr"][ti]) >= 10
    ratio = np.asarray(found["int_flux"][fi])[bright] / np.asarray(truth["int_flux"][ti])[bright]
    assert abs(float(np.median(ratio)) - 1) < 0.05
    assert str(found["int_flux"].unit) == "Jy" and str(found["peak_flux"].unit) == "Jy / beam"
    for name in ("peak_flux", "int_flux", "maj", "min", "pa", "score", "snr", "local_rms"):
        assert np.isfinite(np.asarray(found[name], dtype=float)).all(), name
    assert (found["maj"] >= found["min"]).all() and (found["min"] > 0.5).all()
    assert ((found["pa"] >= 0) & (found["pa"] < 180)).all()
    fitted = np.asarray(found["fitted"], dtype=bool)
    assert fitted.mean() > 0.95
    for name in ("ra_err", "dec_err", "peak_flux_err", "int_flux_err"):
        values = np.asarray(found[name], dtype=float)[fitted]
        assert np.isfinite(values).all() and (values > 0).all(), name
    # the position errors describe the offsets (Condon 1997): within 2x either way
    offsets = SkyCoord(found["ra"][fi], found["dec"][fi], unit="deg").spherical_offsets_to(
        SkyCoord(truth["ra"][ti], truth["dec"][ti], unit="deg")
    )
    pull = np.asarray(offsets[1].arcsec) / np.asarray(found["dec_err"][fi])
    assert 0.5 < float(np.std(pull[np.isfinite(pull)])) < 2.0
    assert (np.asarray(found["maj_deconv"]) >= 0).all()


def test_the_single_ami_source_is_found_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="test.detector"):
        found = run(AMI, tmp_path)
    assert "averaging 2x2 pixel blocks" in caplog.text  # a 12.3 px beam, 7 px at most
    assert len(found) == 1
    reference = Table.read(REAL / "baseline" / "SWIFT_554620-130504.bdsf.csv", format="ascii.csv")
    offset = SkyCoord(found["ra"][0], found["dec"][0], unit="deg").separation(
        SkyCoord(reference["ra"][0], reference["dec"][0], unit="deg")
    )
    assert offset < 10 * u.arcsec  # beam 61.5" x 23.7"
    # uploaded pixels, not the averaged ones
    assert 0 <= found["x"][0] < 512 and 0 <= found["y"][0] < 512


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_precision_finds_the_synthetic_grid(tmp_path: Path, precision: str) -> None:
    truth = Table.read(REAL / "aegean" / "synthetic_test_truth.csv", format="ascii.csv")
    found = run(SYNTHETIC, tmp_path, precision=precision)
    fi, ti = match(found, truth, radius_arcsec=30.0)
    assert len(ti) >= 0.97 * len(truth), precision
    assert len(fi) >= 0.95 * len(found), precision


def test_position_angle_is_measured_on_the_sky(tmp_path: Path) -> None:
    """One elongated source at PA 30 deg (East of North) in an SDC1-like field."""
    from astropy.io import fits

    spec = sim.FieldSpec(shape=(128, 128), rms=sim.SDC1_RMS)
    pa = 30.0
    src = sim.Sources(
        *(np.array([v]) for v in (64.2, 63.7, 2e-4, 8.0, 3.0, math.radians(pa + 90))),
        np.array([2]), np.array([3]), np.array([1]),
    )  # fmt: skip
    pixels, truth = sim.render(src, spec, np.random.default_rng(4))
    header = sim.sdc1_wcs(*sim.HELDOUT_BOX[:2], spec.shape).to_header()
    header.update(BMAJ=1.5 / 3600, BMIN=1.5 / 3600, BPA=0.0, BUNIT="JY/BEAM")
    path = tmp_path / "one.fits"
    fits.PrimaryHDU(pixels, header).writeto(path)
    found = run(path, tmp_path)
    assert len(found) == 1
    expected = math.degrees(truth["theta"][0] - math.pi / 2) % 180
    assert abs((found["pa"][0] - expected + 90) % 180 - 90) < 10
    assert found["maj"][0] == pytest.approx(truth["maj"][0] * 0.6, rel=0.2)


def write(path: Path, pixels: np.ndarray, beam_arcsec: float = 1.5) -> Path:
    from astropy.io import fits

    header = sim.sdc1_wcs(*sim.HELDOUT_BOX[:2], pixels.shape).to_header()
    header.update(BMAJ=beam_arcsec / 3600, BMIN=beam_arcsec / 3600, BPA=0.0, BUNIT="JY/BEAM")
    fits.PrimaryHDU(pixels.astype(np.float32), header).writeto(path)
    return path


def test_a_bright_point_source_is_one_row_and_a_real_pair_two(tmp_path: Path) -> None:
    """A 6 px beam (3.6"): a 2000-sigma point source once, with its flux; a pair 2.5 beams
    apart twice."""
    spec = sim.FieldSpec(shape=(192, 192), beam_maj=6.0, beam_min=6.0, rms=1e-5, pixel_arcsec=0.6)
    flux = np.array([2e-2, 5e-4, 5e-4])
    src = sim.Sources(
        np.array([60.3, 130.0, 145.0]), np.array([61.7, 130.0, 130.0]), flux, np.zeros(3),
        np.zeros(3), np.zeros(3), np.full(3, 2), np.full(3, 3), np.arange(3),
    )  # fmt: skip
    pixels, _ = sim.render(src, spec, np.random.default_rng(5))
    found = run(write(tmp_path / "bright.fits", pixels, beam_arcsec=3.6), tmp_path)
    near = np.hypot(found["x"] - 60.3, found["y"] - 61.7) < 12
    assert near.sum() == 1
    assert float(found["int_flux"][near][0]) == pytest.approx(2e-2, rel=0.05)
    pair = np.hypot(found["x"] - 137.5, found["y"] - 130.0) < 15
    assert pair.sum() == 2


def test_noise_rising_to_an_edge_makes_no_detection(tmp_path: Path) -> None:
    """A primary-beam-corrected look: the noise grows fivefold across the field. One rms for
    the whole image would call the noisy side's peaks sources."""
    spec = sim.FieldSpec(shape=(256, 256), rms=1e-5)
    pixels = sim.noise(spec, np.random.default_rng(9))
    pixels *= np.linspace(1.0, 5.0, 256)[None, :]
    found = run(write(tmp_path / "edge.fits", pixels), tmp_path)
    assert len(found) == 0


def test_version_1_still_runs(tmp_path: Path) -> None:
    found = run(SYNTHETIC, tmp_path, version="1.0")
    assert 95 <= len(found) <= 110
    assert "fitted" not in found.colnames  # 1.0 reports the network's own estimates


def test_a_field_of_noise_gives_an_empty_but_complete_catalogue(tmp_path: Path) -> None:
    from astropy.io import fits

    spec = sim.FieldSpec(shape=(256, 256))
    pixels = sim.noise(spec, np.random.default_rng(8)).astype(np.float32)
    header = sim.sdc1_wcs(*sim.HELDOUT_BOX[:2], spec.shape).to_header()
    header.update(BMAJ=1.5 / 3600, BMIN=1.5 / 3600, BPA=0.0, BUNIT="JY/BEAM")
    path = tmp_path / "noise.fits"
    fits.PrimaryHDU(pixels, header).writeto(path)
    found = run(path, tmp_path)
    assert len(found) == 0
    expected = {"ra", "dec", "ra_err", "peak_flux", "int_flux", "maj", "min", "pa", "snr"}
    assert expected | {"fitted", "maj_deconv", "local_rms"} <= set(found.colnames)


def test_unknown_attribute_channels_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "radio-detector" / "2.0"
    shutil.copytree(SHIPPED_MODELS / "radio-detector" / "2.0", folder)
    manifest = folder / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('"sin2t"', '"colour"'))
    from astro_otf.models.manifest import load_manifest

    with pytest.raises(ValueError, match="'colour'"):
        OnnxDetector(load_manifest(manifest), RuntimeConfig())


def _request(path: Path, tmp_path: Path, name: str) -> AppRequest:
    staging = tmp_path / name
    staging.mkdir()
    return AppRequest(name, path, {}, None, staging, logging.getLogger("test.detector"))


def test_tiles_are_sized_to_the_image_and_a_batch_runs_one_pass_per_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """2.0 takes any multiple of 8: the 256 x 512 synthetic image is one 256 x 512 tile (it
    was a 576 px tile, 2.25x its pixels) and the 512 px AMI image, averaged to 256 px, one
    256 px tile (5x). A batch of both runs one pass per shape and gives each job the sources
    it gets alone."""
    assert isinstance(app, OnnxDetector)
    assert app.model.manifest.input.size_multiple == 8
    caplog.set_level(logging.INFO, logger="test.detector")
    alone = [run(path, tmp_path / f"alone{i}") for i, path in enumerate((SYNTHETIC, AMI))]
    assert "1 tile(s) of 256x512 px" in caplog.text and "1 tile(s) of 256x256 px" in caplog.text
    together = app.run_batch(
        [_request(p, tmp_path, f"b{i}") for i, p in enumerate((SYNTHETIC, AMI))]
    )
    for one, out in zip(alone, together, strict=True):
        assert not isinstance(out, BaseException) and out.catalogue is not None
        table = out.catalogue.table
        assert len(table) == len(one)
        np.testing.assert_allclose(np.asarray(table["x"]), np.asarray(one["x"]), atol=1e-6)
        np.testing.assert_allclose(
            np.asarray(table["peak_flux"]), np.asarray(one["peak_flux"]), rtol=1e-5
        )


def test_sized_tiles_find_what_full_tiles_find(tmp_path: Path) -> None:
    """The network sees the same pixels, less the padding: on a held-out field of 600 px (two
    tiles a side, 576 px fixed, 336 px sized) the two tilings give the same sources within a
    pixel and the same fluxes, but for at most one at the threshold."""
    image, _ = sim.write_field(tmp_path / "f", *sim.HELDOUT_BOX[:2], 600, seed=14)
    folder = tmp_path / "radio-detector" / "2.0"
    shutil.copytree(SHIPPED_MODELS / "radio-detector" / "2.0", folder)
    manifest = folder / "manifest.toml"
    manifest.write_text(manifest.read_text().replace("size_multiple = 8\n", ""))
    from astro_otf.models.manifest import load_manifest

    fixed_app = OnnxDetector(load_manifest(manifest), RuntimeConfig(intra_op_threads=1))
    assert fixed_app.model.manifest.input.size_multiple is None
    fixed_out = fixed_app.run(_request(image, tmp_path, "fixed")).catalogue
    assert fixed_out is not None
    fixed = fixed_out.table
    sized = run(image, tmp_path)
    a = np.c_[np.asarray(fixed["x"]), np.asarray(fixed["y"])]
    b = np.c_[np.asarray(sized["x"]), np.asarray(sized["y"])]
    distance = np.hypot(*(a[:, None, :] - b[None, :, :]).transpose(2, 0, 1))
    near = distance.min(axis=1) <= 1.0
    assert near.sum() >= len(a) - 1 and abs(len(a) - len(b)) <= 1
    ratio = (
        np.asarray(sized["peak_flux"])[distance.argmin(axis=1)[near]]
        / np.asarray(fixed["peak_flux"])[near]
    )
    assert np.median(np.abs(ratio - 1)) < 1e-3
