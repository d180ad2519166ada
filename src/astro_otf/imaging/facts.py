"""What a searched image was, as the facts every catalogue carries about it.

Each app (the trained detector, sep, a command app) reports the same image-level facts with
its catalogue: the region it searched, the pixel scale and frame, the region of interest that
was asked and whether the image edge clipped it, the restoring beam and the noise. They are
facts about the image, worked out from what :mod:`astro_otf.imaging.fits` read, so they live
here, where an app can build them without importing the result writers that later print them
(as VOTable PARAMs, CSV and DS9 header lines, JSON).
"""

from __future__ import annotations

from dataclasses import dataclass

from astro_otf.imaging.fits import Region, SkyImage

__all__ = ["ImageFact", "image_facts"]


@dataclass(frozen=True)
class ImageFact:
    """One image-level fact, written as a VOTable PARAM (and a header line elsewhere)."""

    name: str
    value: float | int | str
    unit: str
    ucd: str
    description: str


def image_facts(
    image: SkyImage,
    *,
    full_shape: tuple[int, int] | None = None,
    rms: float | None = None,
    rms_unit: str = "",
    region: Region | None = None,
) -> list[ImageFact]:
    """The image-level PARAMs of a catalogue: the searched region, beam, pixel scale, rms.
    With the ``region`` of interest that was asked, also whether the image edge clipped it
    and the size that was asked."""
    ny, nx = image.shape
    facts = [
        ImageFact(
            "region_x0",
            image.origin[0],
            "pix",
            "pos.cartesian.x;instr.pixel",
            "0-based pixel column of the searched region's first pixel.",
        ),
        ImageFact(
            "region_y0",
            image.origin[1],
            "pix",
            "pos.cartesian.y;instr.pixel",
            "0-based pixel row of the searched region's first pixel.",
        ),
        ImageFact(
            "region_width",
            nx,
            "pix",
            "meta.number;instr.pixel",
            "Width of the searched region (the whole image when no ROI was asked).",
        ),
        ImageFact(
            "region_height", ny, "pix", "meta.number;instr.pixel", "Height of the searched region."
        ),
        ImageFact(
            "pixel_scale",
            round(image.pixel_scale_arcsec, 6),
            "arcsec",
            "instr.scale;instr.pixel",
            "Pixel size on the sky (geometric mean).",
        ),
        ImageFact("frame", image.frame.name, "", "pos.frame", "Celestial frame of the image."),
    ]
    if region is not None:
        sx, sy = region.pixel_scales_arcsec
        rw, rh = region.requested
        facts += [
            ImageFact(
                "region_clipped",
                "true" if region.clipped else "false",
                "",
                "meta.code",
                "true when the region of interest reached past the image edge and was clipped "
                "to it (the searched region is smaller than the one asked).",
            ),
            ImageFact(
                "region_requested_width",
                rw,
                "pix",
                "meta.number;instr.pixel",
                f"Width of the region of interest asked ({rw * sx:.4g} arcsec).",
            ),
            ImageFact(
                "region_requested_height",
                rh,
                "pix",
                "meta.number;instr.pixel",
                f"Height of the region of interest asked ({rh * sy:.4g} arcsec).",
            ),
            ImageFact(
                "region_angular_width",
                round(nx * sx, 4),
                "arcsec",
                "pos.angDistance",
                "Width of the searched region on the sky (pixels times the pixel size).",
            ),
            ImageFact(
                "region_angular_height",
                round(ny * sy, 4),
                "arcsec",
                "pos.angDistance",
                "Height of the searched region on the sky.",
            ),
        ]
    if full_shape is not None:
        facts += [
            ImageFact(
                "image_width",
                full_shape[1],
                "pix",
                "meta.number;instr.pixel",
                "Width of the uploaded image.",
            ),
            ImageFact(
                "image_height",
                full_shape[0],
                "pix",
                "meta.number;instr.pixel",
                "Height of the uploaded image.",
            ),
        ]
    beam = image.beam
    if beam is not None:
        facts += [
            ImageFact(
                "beam_major",
                round(beam.major_deg * 3600, 6),
                "arcsec",
                "phys.angSize.smajAxis;instr.beam",
                "Restoring beam FWHM, major axis.",
            ),
            ImageFact(
                "beam_minor",
                round(beam.minor_deg * 3600, 6),
                "arcsec",
                "phys.angSize.sminAxis;instr.beam",
                "Restoring beam FWHM, minor axis.",
            ),
            ImageFact(
                "beam_pa",
                round(beam.pa_deg, 6),
                "deg",
                "pos.posAng;instr.beam",
                "Restoring beam position angle.",
            ),
        ]
    if rms is not None:
        facts.append(
            ImageFact(
                "rms",
                float(f"{rms:.6g}"),
                rms_unit,
                "stat.stdev;phot.flux.density",
                "Background noise (rms) of the searched region.",
            )
        )
    return facts
