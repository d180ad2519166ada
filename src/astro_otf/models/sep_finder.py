"""``sep``: a classical source finder (SExtractor's algorithm, via the ``sep`` library).

It is the service's reference app: it needs no trained model, runs in well under a second on
the test images, and gives the catalogue that learned detectors are compared against. The
recipe is the usual radio one (as in PyBDSF and Aegean): a box background and rms map, an
island (flood) threshold in units of the local rms, deblending of islands into components,
and a seed threshold that the peak of each kept source must reach. Positions, fluxes and
shapes are converted to sky quantities with the image's WCS and beam, in the service's
standard catalogue columns.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
import sep
from astropy.table import Column, Table

from astro_otf.domain.errors import JobFailure
from astro_otf.domain.parameters import Extent, ParamSpec
from astro_otf.imaging.facts import image_facts
from astro_otf.imaging.fits import FWHM_PER_SIGMA, Region, SkyImage, cut, load_image, region_of
from astro_otf.imaging.stitch import position_angles
from astro_otf.models.base import AppOutput, AppRequest
from astro_otf.results.catalogue import Catalogue, conform

__all__ = ["SepFinder"]

#: Smallest image (or region) side, in pixels, that a background can be measured on.
MIN_SIDE = 8
#: Fewest valid (not NaN/BLANK) pixels worth searching.
MIN_VALID_PIXELS = 64
#: Background box in beams (major axis) when BACK_SIZE is not given.
BACK_SIZE_BEAMS = 10
#: A region of interest is searched with this many background boxes of the image around it
#: (and out to the image's box grid), so that its background, rms and islands are those of
#: the whole image's search; only the sources inside the region are kept.
REGION_PAD_BOXES = 4
#: Times the searched pixels of a region grow to hold whole the islands that meet it.
MAX_REGION_GROWTHS = 3
#: sep's pixel buffer: at least its default, at most this many pixels (~32 bytes each).
PIXSTACK_MAX = 10_000_000
SUB_OBJECT_LIMIT = 4096
_DTYPES = {"fp64": np.float64, "fp32": np.float32}
_JY_PER_BEAM = u.Jy / u.beam


@dataclass(frozen=True)
class _FluxScale:
    """How image pixel values become the catalogue's peak and integrated fluxes."""

    peak_unit: str
    peak_factor: float  # multiplies pixel values
    int_unit: str
    int_factor: float  # multiplies a sum of pixel values
    int_description: str
    note: str  # for the log and jobInfo


class SepFinder:
    """The App for ``model=sep``."""

    model_id = "sep"
    version = f"1.0 (sep {sep.__version__})"
    description = (
        "Classical source finder (SExtractor algorithm, sep library): background and rms "
        "maps, islands above THRESH x rms, deblending, sources kept when their peak reaches "
        "SEED x rms. Sizes are second-moment FWHM, not fitted Gaussians."
    )
    precisions: tuple[str, ...] = ("fp64", "fp32")
    needs_image = True
    parameters: tuple[ParamSpec, ...] = (
        ParamSpec(
            "thresh",
            "float",
            "Island (flood) threshold in units of the local background rms: connected "
            "pixels above it form a source's island.",
            default=3.0,
            minimum=0.5,
            maximum=1000.0,
        ),
        ParamSpec(
            "seed",
            "float",
            "Seed threshold in units of the local background rms: a source is kept only if "
            "its peak reaches it.",
            default=5.0,
            minimum=0.5,
            maximum=1000.0,
        ),
        ParamSpec(
            "minarea",
            "int",
            "Smallest island kept, in pixels. Default: half the beam area (at least 3 "
            "pixels), or 5 pixels when the header has no beam.",
            minimum=1,
            maximum=1_000_000,
            unit="pix",
        ),
        ParamSpec(
            "back_size",
            "angle-or-pixels",
            "Side of the boxes in which background and rms are measured: pixels (64) or an "
            f"angle (5 arcmin). Default: {BACK_SIZE_BEAMS} beams (64 pixels without a beam), "
            "at most a quarter of the image side and at least 8 pixels.",
        ),
        ParamSpec(
            "deblend_cont",
            "float",
            "Deblending contrast: a branch of an island becomes a separate source when it "
            "holds at least this fraction of the island's flux. 1 turns deblending off.",
            default=0.005,
            minimum=0.0,
            maximum=1.0,
        ),
        ParamSpec(
            "filter",
            "bool",
            "Smooth with a Gaussian of the beam's size before detection (a matched filter): "
            "finds fainter extended emission but merges close pairs. Radio images are "
            "already convolved with the beam, so it is off by default. Without a beam in the "
            "header, a 3 x 3 pixel kernel is used.",
            default=False,
        ),
    )

    def run(self, request: AppRequest) -> AppOutput:
        """Find the sources of the job's image (or region) with sep and return them as the
        standard catalogue."""
        log = request.log
        values = request.values
        started = time.perf_counter()
        thresh = float(values.get("thresh", 3.0))
        seed = float(values.get("seed", 5.0))
        deblend_cont = float(values.get("deblend_cont", 0.005))
        use_filter = bool(values.get("filter", False))
        precision = str(values.get("precision", self.precisions[0]))
        if precision not in _DTYPES:
            raise JobFailure(f"precision {precision!r} is not offered by sep; use fp64 or fp32")

        if request.image_path is None:
            raise JobFailure("no image was given: upload the FITS image as the IMAGE file part")
        request.progress("reading")
        image = load_image(request.image_path)
        beam = image.beam
        ny, nx = full_shape = image.shape
        log.info(
            "read HDU %d: %d x %d pixels, pixel %.4g arcsec, beam %s, BUNIT %s, frame %s",
            image.hdu_index,
            nx,
            ny,
            image.pixel_scale_arcsec,
            f"{beam.major_deg * 3600:.3g} x {beam.minor_deg * 3600:.3g} arcsec" if beam else "none",
            image.bunit or "none",
            image.frame.name,
        )
        where = "image"
        region: Region | None = None
        region_image = image
        full: SkyImage | None = None
        box = _background_box(image, values.get("back_size"))
        if request.roi is not None:
            full = image
            region = region_of(image, request.roi)
            region_image = cut(image, region.box)
            if region.clipped:
                log.warning("%s", region.describe_clipping())
            searched = region.padded(REGION_PAD_BOXES * box, image.shape, grid=box)
            image = cut(image, searched)
            ny, nx = image.shape
            where = "region of interest"
            log.info(
                "region of interest: %d x %d pixels from pixel x=%d, y=%d, searched with a "
                "margin of background boxes: %d x %d pixels from pixel x=%d, y=%d",
                region.width,
                region.height,
                *region.box[:2],
                nx,
                ny,
                *image.origin,
            )
            box = int(max(2, min(box, nx, ny)))
        flux = _flux_scale(image)
        if flux.note:
            log.warning("%s", flux.note)

        if region is not None:  # the asked region itself, not its margin, must be searchable
            _check_searchable(region_image.data, where)
        if nx < MIN_SIDE or ny < MIN_SIDE:
            raise JobFailure(
                f"the {where} is only {nx} x {ny} pixels; sep needs at least "
                f"{MIN_SIDE} x {MIN_SIDE} to measure a background: give a larger WIDTH/HEIGHT"
            )
        minarea = _minarea(image, values.get("minarea"))
        log.info(
            "background boxes of %d pixels; island %.3g sigma, seed %.3g sigma, "
            "minarea %d pixels, deblend_cont %g, filter %s, %s",
            box,
            thresh,
            seed,
            minarea,
            deblend_cont,
            use_filter,
            precision,
        )
        request.progress("inference")
        kernel = _kernel(image) if use_filter else None
        settings = _Settings(precision, box, thresh, minarea, deblend_cont, kernel, where)
        objects, rms, global_rms = _search(image, settings, log)
        for _ in range(MAX_REGION_GROWTHS if region is not None else 0):
            assert region is not None and full is not None
            grown = _grown(region, objects, image, full.shape, REGION_PAD_BOXES * box, box)
            if grown is None:
                break
            image = cut(full, grown)
            ny, nx = image.shape
            log.info(
                "islands of the region reach the edge of the searched pixels: searching %d x "
                "%d pixels from pixel x=%d, y=%d",
                nx,
                ny,
                *image.origin,
            )
            objects, rms, global_rms = _search(image, settings, log)
        if region is not None:  # the margin only served the background and the islands
            ox, oy = image.origin
            objects = objects[region.contains(objects["x"] + ox, objects["y"] + oy)]
            x0, y0, x1, y1 = region.box
            inside = rms[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
            global_rms = float(np.median(inside))
            log.info("background rms %.4g (median over the region of interest)", global_rms)
        x_peak = np.clip(objects["xpeak"], 0, nx - 1)
        y_peak = np.clip(objects["ypeak"], 0, ny - 1)
        local_rms = rms[y_peak, x_peak].astype(np.float64)
        peak = objects["peak"].astype(np.float64)
        keep = peak >= seed * local_rms
        objects, peak, local_rms = objects[keep], peak[keep], local_rms[keep]
        order = np.argsort(-peak, kind="stable")
        objects, peak, local_rms = objects[order], peak[order], local_rms[order]
        log.info(
            "%d islands and components above %.3g sigma, %d with a peak above %.3g sigma",
            int(keep.size),
            thresh,
            len(objects),
            seed,
        )

        request.progress("fitting")
        table = _catalogue(image, objects, peak, local_rms, flux)
        infos = {
            "image_hdu": str(image.hdu_index),
            "background_rms": f"{global_rms * flux.peak_factor:.6g} {flux.peak_unit}",
            "flux_note": flux.note or "none",
        }
        elapsed = time.perf_counter() - started
        log.info("found %d sources in %.2f s", len(table), elapsed)
        return AppOutput(
            catalogue=Catalogue(
                table,
                facts=image_facts(
                    region_image,
                    full_shape=full_shape,
                    rms=global_rms * flux.peak_factor,
                    rms_unit=flux.peak_unit,
                    region=region,
                ),
                infos=infos,
                description=f"Sources found by sep {sep.__version__} in job {request.job_id}.",
            ),
            image=region_image,
            info={
                "n_sources": len(table),
                "background_rms": global_rms * flux.peak_factor,
                "flux_unit": flux.peak_unit,
                "background_box_pix": box,
                "minarea_pix": minarea,
                "region_shape_pix": f"{region_image.shape[1]} x {region_image.shape[0]}",
                "region_origin_pix": f"{region_image.origin[0]} {region_image.origin[1]}",
                "flux_note": flux.note or "none",
                **(region.info() if region is not None else {}),
            },
        )


# --------------------------------------------------------------------------- helpers


def _extract(
    data: np.ndarray,
    rms: np.ndarray,
    mask: np.ndarray,
    thresh: float,
    minarea: int,
    deblend_cont: float,
    kernel: np.ndarray | None,
    where: str,
) -> np.ndarray:
    n_valid = int(data.size - np.count_nonzero(mask))
    sep.set_extract_pixstack(int(min(max(300_000, n_valid), PIXSTACK_MAX)))
    sep.set_sub_object_limit(SUB_OBJECT_LIMIT)
    try:
        objects: np.ndarray = sep.extract(
            data,
            thresh,
            err=rms,
            mask=mask,
            minarea=minarea,
            filter_kernel=kernel,
            filter_type="matched",
            # deblend_cont 1 keeps islands whole: then skip the 32-level deblending pass.
            deblend_nthresh=1 if deblend_cont >= 1.0 else 32,
            deblend_cont=deblend_cont,
            clean=True,
        )
    except MemoryError:
        raise
    except Exception as exc:  # sep raises bare Exception with its C library's message
        raise JobFailure(
            f"sep could not extract sources from the {where}: {str(exc).rstrip('. ')}. Raise "
            "THRESH, or search a smaller region (RA, DEC, WIDTH, HEIGHT)"
        ) from None
    return objects


@dataclass(frozen=True)
class _Settings:
    """How :func:`_search` measures the background and extracts sources."""

    precision: str
    box: int
    thresh: float
    minarea: int
    deblend_cont: float
    kernel: np.ndarray | None
    where: str


def _search(image: SkyImage, settings: _Settings, log: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """sep's objects in ``image`` (pixels of ``image``), its rms map and its global rms."""
    where = settings.where
    data = np.array(image.data, dtype=_DTYPES[settings.precision], order="C")  # native order
    mask = ~np.isfinite(data)
    n_valid = int(data.size - np.count_nonzero(mask))
    _check_valid(n_valid, where)
    data[mask] = 0.0
    box = settings.box
    try:
        bkg = sep.Background(data, mask=mask, bw=box, bh=box, fw=3, fh=3)
        bkg.subfrom(data)
        rms = bkg.rms()
    except MemoryError:
        raise
    except Exception as exc:  # sep raises bare Exception with its C library's message
        raise JobFailure(
            f"sep could not measure the background of the {where}: {str(exc).rstrip('. ')}"
        ) from None
    global_rms = float(bkg.globalrms)
    if not math.isfinite(global_rms) or global_rms <= 0.0:
        raise JobFailure(
            f"the {where} has no noise (background rms {global_rms:g}): thresholds in "
            "units of the rms cannot be set. Is this a noiseless model image?"
        )
    data[mask] = 0.0
    rms[~(rms > 0.0)] = global_rms  # boxes with too few valid pixels
    log.info("background rms %.4g (global)", global_rms)
    objects = _extract(
        data,
        rms,
        mask,
        settings.thresh,
        settings.minarea,
        settings.deblend_cont,
        settings.kernel,
        where,
    )
    return objects, rms, global_rms


def _grown(
    region: Region,
    objects: np.ndarray,
    image: SkyImage,
    full_shape: tuple[int, int],
    margin: int,
    grid: int,
) -> tuple[int, int, int, int] | None:
    """The searched pixels grown to hold, with ``margin`` around them, the sources that meet
    the region yet reach the edge of the searched pixels (an island cut there is deblended
    otherwise than in the whole image); None when no such source reaches it."""
    ox, oy = image.origin
    ny, nx = image.shape
    fny, fnx = full_shape
    x0 = objects["xmin"].astype(np.int64) + ox
    x1 = objects["xmax"].astype(np.int64) + ox + 1
    y0 = objects["ymin"].astype(np.int64) + oy
    y1 = objects["ymax"].astype(np.int64) + oy + 1
    bx0, by0, bx1, by1 = region.box
    meets = (x0 < bx1) & (bx0 < x1) & (y0 < by1) & (by0 < y1)
    cut_off = (
        ((x0 <= ox) & (ox > 0))
        | ((x1 >= ox + nx) & (ox + nx < fnx))
        | ((y0 <= oy) & (oy > 0))
        | ((y1 >= oy + ny) & (oy + ny < fny))
    )
    chosen = meets & cut_off
    if not chosen.any():
        return None
    gx0 = max(0, (min(ox, int(x0[chosen].min())) - margin) // grid * grid)
    gy0 = max(0, (min(oy, int(y0[chosen].min())) - margin) // grid * grid)
    gx1 = min(fnx, -(-(max(ox + nx, int(x1[chosen].max())) + margin) // grid) * grid)
    gy1 = min(fny, -(-(max(oy + ny, int(y1[chosen].max())) + margin) // grid) * grid)
    if (gx0, gy0, gx1, gy1) == (ox, oy, ox + nx, oy + ny):
        return None
    return gx0, gy0, gx1, gy1


def _check_searchable(pixels: np.ndarray, where: str) -> None:
    """Refuse a region too small for a background, or with too few valid pixels."""
    ny, nx = pixels.shape
    if nx < MIN_SIDE or ny < MIN_SIDE:
        raise JobFailure(
            f"the {where} is only {nx} x {ny} pixels; sep needs at least "
            f"{MIN_SIDE} x {MIN_SIDE} to measure a background: give a larger WIDTH/HEIGHT"
        )
    n_valid = int(np.count_nonzero(np.isfinite(pixels)))
    _check_valid(n_valid, where)


def _check_valid(n_valid: int, where: str) -> None:
    """Refuse a searched area with no, or too few, valid pixels (JobFailure says which)."""
    if n_valid == 0:
        raise JobFailure(
            f"every pixel of the {where} is blank (NaN or BLANK): there is nothing to search"
        )
    if n_valid < MIN_VALID_PIXELS:
        raise JobFailure(
            f"only {n_valid} pixels of the {where} are valid (the rest are NaN or BLANK); "
            f"at least {MIN_VALID_PIXELS} are needed: choose a region with data"
        )


def _background_box(image: SkyImage, back_size: Extent | None) -> int:
    ny, nx = image.shape
    side = min(nx, ny)
    if back_size is None:
        beam_pix = image.beam_major_pix
        box = 64 if beam_pix is None else round(BACK_SIZE_BEAMS * beam_pix)
        return int(max(MIN_SIDE, min(box, max(MIN_SIDE, side // 4))))
    if back_size.is_pixels:
        box = round(back_size.value)
    else:
        box = round(back_size.arcsec / image.pixel_scale_arcsec)
    return int(max(2, min(box, side)))


def _minarea(image: SkyImage, minarea: Any) -> int:
    if minarea is not None:
        return int(minarea)
    area = image.beam_area_pix
    return 5 if area is None else max(3, round(0.5 * area))


def _kernel(image: SkyImage) -> np.ndarray:
    """A circular Gaussian with the beam's mean FWHM in pixels; sep's 3x3 without a beam."""
    beam = image.beam
    if beam is None:
        return np.asarray(sep.default_kernel, dtype=np.float32)
    fwhm_pix = math.sqrt(beam.major_deg * beam.minor_deg) * 3600.0 / image.pixel_scale_arcsec
    sigma = max(fwhm_pix / FWHM_PER_SIGMA, 0.5)
    half = max(1, math.ceil(3.0 * sigma))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2))
    return np.asarray(kernel / kernel.sum(), dtype=np.float32)


def _parse_bunit(text: str) -> u.UnitBase | None:
    """BUNIT as an astropy unit, accepting the usual upper-case radio spellings (JY/BEAM)."""
    fixed = re.sub(r"(?i)jy", "Jy", text.strip())
    fixed = re.sub(r"(?i)beam", "beam", fixed)
    fixed = re.sub(r"(?i)pixel|pix", "pix", fixed)
    for candidate in (text.strip(), fixed):
        for fmt in ("fits", "vounit", "generic"):
            try:
                unit = u.Unit(candidate, format=fmt)
            except (ValueError, TypeError):
                continue
            if isinstance(unit, u.UnitBase):
                return unit
    return None


def _flux_scale(image: SkyImage) -> _FluxScale:
    area = image.beam_area_pix
    bunit = image.bunit
    note = ""
    if bunit is None:
        unit: u.UnitBase = _JY_PER_BEAM
        note = "the image has no BUNIT; its pixel values are taken to be Jy/beam"
    else:
        parsed = _parse_bunit(bunit)
        if parsed is None:
            raise JobFailure(
                f"the image unit BUNIT={bunit!r} is not a unit that can be read; fix BUNIT in "
                "the header (for example 'Jy/beam')"
            )
        unit = parsed
    if unit.is_equivalent(_JY_PER_BEAM):
        factor = float(unit.to(_JY_PER_BEAM))
        if area is not None:
            return _FluxScale(
                "Jy/beam",
                factor,
                "Jy",
                factor / area,
                "Integrated flux density: sum of the background-subtracted pixels of the "
                "source's isophotal footprint divided by the beam area in pixels.",
                note,
            )
        no_beam = "the header has no beam (BMAJ/BMIN), so integrated fluxes are not in Jy"
        return _FluxScale(
            "Jy/beam",
            factor,
            "Jy/beam",
            factor,
            "Sum of the background-subtracted pixel values (Jy/beam) of the source's "
            "isophotal footprint; not converted to Jy because the header has no beam.",
            f"{note}; {no_beam}" if note else no_beam,
        )
    unit_text = unit.to_string("vounit")
    int_unit = unit * u.pix
    if int_unit.is_equivalent(u.Jy):
        return _FluxScale(
            unit_text,
            1.0,
            "Jy",
            float(int_unit.to(u.Jy)),
            "Integrated flux density: sum of the background-subtracted pixels of the "
            "source's isophotal footprint.",
            note,
        )
    other = f"the image unit is {bunit}, not Jy/beam: fluxes are given in that unit"
    return _FluxScale(
        unit_text,
        1.0,
        unit_text,
        1.0,
        f"Sum of the background-subtracted pixel values ({bunit}) of the source's isophotal "
        "footprint, in the image unit.",
        other,
    )


def _catalogue(
    image: SkyImage,
    objects: np.ndarray,
    peak: np.ndarray,
    local_rms: np.ndarray,
    flux: _FluxScale,
) -> Table:
    n = len(objects)
    x = objects["x"].astype(np.float64)
    y = objects["y"].astype(np.float64)
    theta = objects["theta"].astype(np.float64)
    ra = np.empty(n)
    dec = np.empty(n)
    pa = np.empty(n)
    if n:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            centre = image.wcs.pixel_to_world(x, y).icrs
        ra = np.asarray(centre.ra.deg, dtype=np.float64)
        dec = np.asarray(centre.dec.deg, dtype=np.float64)
        pa = position_angles(image.wcs, x, y, theta)
    sx, sy = image.pixel_scales_arcsec
    scale = image.pixel_scale_arcsec
    x0, y0 = image.origin
    found = Table(
        {
            "id": np.arange(1, n + 1, dtype=np.int32),
            "ra": ra,
            "dec": dec,
            # sep's barycentre variances (pixel^2) along the pixel axes, taken as RA and Dec
            "ra_err": np.sqrt(np.abs(objects["errx2"].astype(np.float64))) * sx,
            "dec_err": np.sqrt(np.abs(objects["erry2"].astype(np.float64))) * sy,
            "peak_flux": peak * flux.peak_factor,
            "peak_flux_err": local_rms * flux.peak_factor,
            "int_flux": objects["flux"].astype(np.float64) * flux.int_factor,
            "maj": FWHM_PER_SIGMA * objects["a"].astype(np.float64) * scale,
            "min": FWHM_PER_SIGMA * objects["b"].astype(np.float64) * scale,
            "pa": pa,
            "score": peak / local_rms,
            "x": x + x0,
            "y": y + y0,
        }
    )
    found["local_rms"] = Column(
        local_rms * flux.peak_factor,
        unit=flux.peak_unit,
        description="Background rms at the peak pixel.",
        meta={"ucd": "stat.stdev;phot.flux.density"},
    )
    found["flag"] = Column(
        objects["flag"].astype(np.int16),
        unit="",
        description="sep flags, summed: 1 deblended from a larger island, 2 truncated at the "
        "image edge, 4 deblending overflow, 8 singular moments.",
        meta={"ucd": "meta.code"},
    )
    return conform(
        found,
        peak_unit=flux.peak_unit,
        int_unit=flux.int_unit,
        descriptions={
            "id": "Source number, in order of decreasing peak flux.",
            "ra": "Right ascension (ICRS) of the flux-weighted centroid.",
            "dec": "Declination (ICRS) of the flux-weighted centroid.",
            "ra_err": "1-sigma error of the centroid along the image x axis (from sep).",
            "dec_err": "1-sigma error of the centroid along the image y axis (from sep).",
            "peak_flux": "Peak pixel value above the local background.",
            "peak_flux_err": "1-sigma error of peak_flux: the background rms at the peak.",
            "int_flux": flux.int_description,
            "int_flux_err": "Not measured by sep (the noise of a sum over correlated pixels).",
            "maj": "Major-axis FWHM of the second-moment ellipse (2.3548 sigma); not deconvolved.",
            "min": "Minor-axis FWHM of the second-moment ellipse (2.3548 sigma); not deconvolved.",
            "pa": "Position angle of the major axis, degrees East of North (ICRS), 0 to 180.",
            "score": "Signal-to-noise ratio: peak_flux / local_rms.",
            "class": "Not given by sep.",
            "tile": "Not used: sep searches the whole image at once.",
        },
    )
