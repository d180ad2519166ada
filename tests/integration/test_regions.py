"""A region of interest finds what the whole image finds there, with the real finders.

The default model (radio-detector) and sep run on a real ATCA image (ScorpioS17, bright
extended emission), once whole and once on 5' regions: the sources well inside a region
(two beams from its border) must be the same. The catalogue says the region it searched,
whether the image edge clipped it, and the image rms with its unit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.io.votable import parse

from astro_otf.domain.parameters import Extent, Roi
from astro_otf.imaging.fits import load_image
from astro_otf.models.base import App, AppOutput, AppRequest
from astro_otf.models.onnx_detector import RuntimeConfig
from astro_otf.models.registry import RegistryConfig, build_registry
from tests.conftest import REAL_DATA
from tests.products import write_results

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")
SCORPIO = REAL_DATA / "caesar" / "ScorpioS17Field.fits"
registry = build_registry(RegistryConfig(runtime=RuntimeConfig(intra_op_threads=1)))
#: region centres (pixels) where a region cut out on its own found other sources than the
#: whole image (its noise mesh held a few boxes of a bright field)
CENTRES = [(300, 450), (450, 300), (450, 450), (600, 600)]


def _run(app: App, roi: Roi | None, staging: Path) -> AppOutput:
    values = {p.name: p.default for p in app.parameters if p.default is not None}
    values["precision"] = app.precisions[0]
    staging.mkdir(parents=True, exist_ok=True)
    request = AppRequest("job-test", SCORPIO, values, roi, staging, logging.getLogger("test"))
    return app.run(request)


def _xy(output: AppOutput) -> np.ndarray:
    assert output.catalogue is not None
    table = output.catalogue.table
    return np.column_stack([np.asarray(table["x"]), np.asarray(table["y"])])


@pytest.mark.parametrize("model", ["radio-detector", "sep"])
def test_a_region_finds_what_the_whole_image_finds_there(model: str, tmp_path: Path) -> None:
    app = registry.get(model)
    image = load_image(SCORPIO)
    beam = image.beam_major_pix
    assert beam is not None
    full = _xy(_run(app, None, tmp_path / "full"))
    for cx, cy in CENTRES:
        sky = image.wcs.pixel_to_world(cx, cy).icrs
        roi = Roi(float(sky.ra.deg), float(sky.dec.deg), Extent(5, "arcmin"), Extent(5, "arcmin"))
        out = _run(app, roi, tmp_path / f"{cx}_{cy}")
        assert out.image is not None
        x0, y0 = out.image.origin
        ny, nx = out.image.shape
        found = _xy(out)
        assert np.all((found[:, 0] >= x0 - 0.5) & (found[:, 0] < x0 + nx - 0.5))
        assert np.all((found[:, 1] >= y0 - 0.5) & (found[:, 1] < y0 + ny - 0.5))

        def inner(xy: np.ndarray) -> np.ndarray:
            m = 2 * beam
            keep = (xy[:, 0] >= x0 + m) & (xy[:, 0] < x0 + nx - m)  # noqa: B023
            keep &= (xy[:, 1] >= y0 + m) & (xy[:, 1] < y0 + ny - m)  # noqa: B023
            return xy[keep]

        a, b = inner(found), inner(full)
        assert len(a) == len(b), (model, cx, cy, a.tolist(), b.tolist())
        for x, y in a:  # the same sources, within a pixel
            assert np.min(np.hypot(b[:, 0] - x, b[:, 1] - y)) < 1.0, (model, cx, cy, x, y)


@pytest.mark.parametrize("model", ["radio-detector", "sep"])
def test_a_clipped_region_is_recorded_and_rms_given(model: str, tmp_path: Path) -> None:
    app = registry.get(model)
    image = load_image(SCORPIO)
    sky = image.wcs.pixel_to_world(950.4, 500).icrs  # 5' = 200 px: 51 px past the right edge
    roi = Roi(float(sky.ra.deg), float(sky.dec.deg), Extent(5, "arcmin"), Extent(5, "arcmin"))
    out = _run(app, roi, tmp_path / "run")
    assert out.info["region_clipped"] is True
    assert out.info["region_requested_pix"] == "200 x 200"
    assert out.info["region_searched_pix"] == "149 x 200"
    assert out.info["region_requested_arcsec"] == "300 x 300"
    paths = write_results(app, out, tmp_path / "run", image_path=SCORPIO, values={})
    table = parse(str(paths["result"])).get_first_table()
    params = {p.name: p for p in table.params}
    assert str(params["region_clipped"].value) == "true"
    assert int(params["region_requested_width"].value) == 200
    assert int(params["region_width"].value) == 149
    assert float(params["region_angular_width"].value) == pytest.approx(223.5, abs=0.01)
    rms = params["rms"]
    assert str(rms.unit) == "Jy / beam"
    assert 1e-5 < float(rms.value) < 1e-2


@pytest.mark.parametrize("model", ["radio-detector", "matched-filter", "sep"])
def test_every_catalogue_gives_the_image_rms_with_its_unit(model: str, tmp_path: Path) -> None:
    """The README promises an ``rms`` PARAM: the noise the finder measured over the searched
    region (radio-detector: the median of its local noise map), in the image's unit."""
    app = registry.get(model)
    magpis = REAL_DATA / "astroquery" / "magpis_G10.5+0.0.fits"
    values = {p.name: p.default for p in app.parameters if p.default is not None}
    values["precision"] = app.precisions[0]
    request = AppRequest("job-test", magpis, values, None, tmp_path, logging.getLogger("test"))
    out = app.run(request)
    paths = write_results(app, out, tmp_path, image_path=magpis, values=values)
    params = {p.name: p for p in parse(str(paths["result"])).get_first_table().params}
    assert "rms" in params, sorted(params)
    assert str(params["rms"].unit) == "Jy / beam"
    # the three agree on this image's noise (sep's box rms is 2.6e-4 Jy/beam)
    assert 1.5e-4 < float(params["rms"].value) < 4.5e-4


def test_sep_grows_a_region_until_its_islands_are_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A long ridge (a jet, a filament) that starts in the region and runs past its margin
    is one island in the whole image; cut at the margin it would be deblended otherwise, and
    the region would report a source the whole image does not have."""
    from astropy.io import fits
    from astropy.wcs import WCS

    n = 700
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:n, 0:n]
    pixels = rng.normal(0, 1e-4, (n, n))
    pixels += (
        np.exp(-0.5 * ((yy - 350) / 2.5) ** 2) * (xx >= 250) * (1e-3 + 4e-3 * (xx - 250) / 440)
    )
    for knot, amplitude in ((270, 2e-3), (300, 1.5e-3), (330, 3e-3), (600, 3e-2)):
        pixels += amplitude * np.exp(-0.5 * ((xx - knot) ** 2 + (yy - 350) ** 2) / 1.3**2)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [350.0, 350.0]
    wcs.wcs.cdelt = [-1 / 3600, 1 / 3600]
    header = wcs.to_header()
    header.update(BMAJ=3 / 3600, BMIN=3 / 3600, BPA=0.0, BUNIT="JY/BEAM")
    path = tmp_path / "ridge.fits"
    fits.writeto(path, pixels.astype("f4"), header)

    app = registry.get("sep")
    values = {p.name: p.default for p in app.parameters if p.default is not None}
    values["precision"] = "fp64"

    def run(roi: Roi | None) -> AppOutput:
        request = AppRequest("job-test", path, values, roi, tmp_path, logging.getLogger("t"))
        return app.run(request)

    full = _xy(run(None))
    centre = wcs.pixel_to_world(300, 350).icrs
    roi = Roi(float(centre.ra.deg), float(centre.dec.deg), Extent(100, "pix"), Extent(100, "pix"))
    with caplog.at_level(logging.INFO, logger="t"):
        region = _xy(run(roi))
    inside = (full[:, 0] >= 249.5) & (full[:, 0] < 349.5) & (full[:, 1] >= 299.5)
    inside &= full[:, 1] < 399.5
    assert sorted(map(tuple, np.round(region, 3))) == sorted(map(tuple, np.round(full[inside], 3)))
    assert "islands of the region reach the edge of the searched pixels" in caplog.text
