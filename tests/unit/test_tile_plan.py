"""One tile plan: the tiles the batch former budgets for a job (``count_tiles``, from the
header alone) are the tiles its worker runs (``prepare``), for the whole image and for
regions of interest in pixels, as angles, on a Galactic image and on an image that is
block-averaged first. The former read WIDTH/HEIGHT with ``isdigit()``, so a "3 arcmin" region
was budgeted as the whole image, and it ignored block averaging."""

from __future__ import annotations

import logging
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from astro_otf.domain.parameters import roi_from, validate
from astro_otf.models.base import AppRequest
from astro_otf.models.onnx_detector import OnnxDetector
from astro_otf.models.registry import build_registry
from tests.conftest import REAL_DATA
from tests.unit.test_upload_checks import _job as job_of

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")

SCORPIO = REAL_DATA / "caesar" / "ScorpioS17Field.fits"


@pytest.fixture(scope="module")
def app() -> OnnxDetector:
    found = build_registry().get("radio-detector")
    assert isinstance(found, OnnxDetector)
    return found


def synthetic(
    path: Path, n: int, *, galactic: bool = False, beam_arcsec: float = 6.0, pixel: float = 1.5
) -> Path:
    """An n x n noise image with a celestial WCS (Galactic when asked) and a beam."""
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = (
        ("GLON-SIN", "GLAT-SIN")
        if galactic
        else (
            "RA---SIN",
            "DEC--SIN",
        )
    )
    header["CRVAL1"], header["CRVAL2"] = (10.5, 0.1) if galactic else (150.0, -30.0)
    header["CRPIX1"] = header["CRPIX2"] = n / 2 + 0.5
    header["CDELT1"], header["CDELT2"] = -pixel / 3600, pixel / 3600
    header["BMAJ"] = header["BMIN"] = beam_arcsec / 3600
    header["BPA"] = 0.0
    header["BUNIT"] = "JY/BEAM"
    rng = np.random.default_rng(5)
    data = rng.normal(0.0, 1e-4, (n, n)).astype(np.float32)
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def budget_and_run(
    app: OnnxDetector, image: Path, tmp_path: Path, **params: str
) -> tuple[int, int]:
    """(tiles the former budgets, tiles the worker runs) for a job on ``image``."""
    job = job_of(**params)
    budget = app.count_tiles(str(image), job)
    checked = validate(
        job.parameter_values(),
        ["image"],
        app.parameters,
        precisions=app.precisions,
        model_id=app.model_id,
        image_required=True,
    )
    request = AppRequest(
        job_id=job.job_id,
        image_path=image,
        values=checked.values,
        roi=roi_from(checked.values),
        staging_dir=tmp_path,
        log=logging.getLogger("test_tile_plan"),
    )
    return budget, len(app.prepare(request).specs)


def icrs(glon: float, glat: float) -> tuple[str, str]:
    centre = SkyCoord(glon * u.deg, glat * u.deg, frame="galactic").icrs
    return f"{centre.ra.deg:.6f}", f"{centre.dec.deg:.6f}"


def test_whole_image_and_regions_in_pixels_and_angles(app: OnnxDetector, tmp_path: Path) -> None:
    wcs = WCS(fits.getheader(SCORPIO)).celestial
    sky = wcs.pixel_to_world(250, 260).icrs  # inside one tile core of the 2 x 2
    centre = f"{sky.ra.deg:.6f}", f"{sky.dec.deg:.6f}"
    off = wcs.pixel_to_world(700, 260).icrs
    whole, run = budget_and_run(app, SCORPIO, tmp_path)
    assert whole == run > 1
    for size in ("40", "1 arcmin", "90 arcsec", "0.02 deg"):
        budget, run = budget_and_run(
            app, SCORPIO, tmp_path, ra=centre[0], dec=centre[1], width=size, height=size
        )
        assert budget == run, size
        assert budget < whole, size  # the old count took an angle for the whole image
    # a rectangle, one side in pixels and one as an angle, off the centre
    budget, run = budget_and_run(
        app,
        SCORPIO,
        tmp_path,
        ra=f"{off.ra.deg:.6f}",
        dec=f"{off.dec.deg:.6f}",
        width="300",
        height="4 arcmin",
    )
    assert budget == run


def test_a_galactic_image(app: OnnxDetector, tmp_path: Path) -> None:
    image = synthetic(tmp_path / "galactic.fits", 1400, galactic=True)
    whole, run = budget_and_run(app, image, tmp_path)
    assert whole == run == 9
    ra, dec = icrs(10.45, 0.12)  # RA/DEC are ICRS; the image is Galactic
    budget, run = budget_and_run(app, image, tmp_path, ra=ra, dec=dec, width="2 arcmin")
    assert budget == run < whole


def test_an_image_averaged_in_blocks(app: OnnxDetector, tmp_path: Path) -> None:
    """A beam wider than the model's widest: the worker averages 2 x 2 pixel blocks, so the
    image runs as 4 tiles, not the 9 its own size needs."""
    max_beam = app.model.manifest.input.max_beam_pix
    assert max_beam is not None
    image = synthetic(tmp_path / "wide-beam.fits", 1300, beam_arcsec=1.5 * max_beam * 1.5)
    whole, run = budget_and_run(app, image, tmp_path)
    assert whole == run == 4
    for size in ("200", "3 arcmin"):
        budget, run = budget_and_run(
            app, image, tmp_path, ra="150.0", dec="-30.0", width=size, height=size
        )
        assert budget == run, size
