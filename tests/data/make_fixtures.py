"""Write the small FITS fixtures of the unit tests into this folder.

Real images (../shared/data/real) cover real-world content; these files cover the shapes and
defects of uploads that the real set lacks: a 4-D cube with degenerate FREQ/STOKES axes,
scaled integers with BLANK, an image in an extension HDU, a compressed image, axes in an
unusual order, and the inputs that must be refused (no WCS, only a table, not FITS, a cube
with several planes, only blank pixels). Every file is well under 100 KB and its content is
deterministic (only the gzip time stamps inside ``compressed_image.fits`` change between runs).

Run ``python tests/data/make_fixtures.py`` after changing it, and commit the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

HERE = Path(__file__).resolve().parent

#: Image geometry shared by the fixtures: 64 x 64 pixels of 2", a 6" circular beam.
SHAPE = (64, 64)
CENTRE = (150.0, 2.0)  # RA, Dec of the reference pixel, deg
PIXEL_DEG = 2.0 / 3600.0
BEAM_DEG = 6.0 / 3600.0
NOISE = 1.0e-3  # Jy/beam
#: Point sources: 0-based pixel x, y and peak in Jy/beam (20 to 100 sigma).
SOURCES = ((16.0, 20.0, 0.05), (45.0, 40.0, 0.1), (30.0, 50.0, 0.02))
#: FITS reference pixel (1-based) of the celestial axes.
CRPIX = (32.5, 32.5)


def sky_plane(seed: int = 1) -> np.ndarray:
    """Gaussian noise plus beam-shaped point sources at SOURCES, as float32."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    yy, xx = np.mgrid[0:ny, 0:nx]
    sigma = BEAM_DEG / PIXEL_DEG / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    image = rng.normal(0.0, NOISE, SHAPE)
    for x, y, peak in SOURCES:
        image += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2.0 * sigma**2))
    return image.astype(np.float32)


def celestial_cards(header: fits.Header, lon_axis: int = 1, lat_axis: int = 2) -> None:
    """Put a RA---SIN/DEC--SIN WCS on FITS axes ``lon_axis`` and ``lat_axis``, and the beam."""
    for axis, ctype, crval, crpix, cdelt in (
        (lon_axis, "RA---SIN", CENTRE[0], CRPIX[0], -PIXEL_DEG),
        (lat_axis, "DEC--SIN", CENTRE[1], CRPIX[1], PIXEL_DEG),
    ):
        header[f"CTYPE{axis}"] = ctype
        header[f"CRVAL{axis}"] = crval
        header[f"CRPIX{axis}"] = crpix
        header[f"CDELT{axis}"] = cdelt
        header[f"CUNIT{axis}"] = "deg"
    header["RADESYS"] = "ICRS"
    header["BMAJ"] = BEAM_DEG
    header["BMIN"] = BEAM_DEG
    header["BPA"] = 0.0
    header["BUNIT"] = "JY/BEAM"


def spectral_cards(header: fits.Header, axis: int, ctype: str, crval: float, cdelt: float) -> None:
    header[f"CTYPE{axis}"] = ctype
    header[f"CRVAL{axis}"] = crval
    header[f"CRPIX{axis}"] = 1.0
    header[f"CDELT{axis}"] = cdelt
    header[f"CUNIT{axis}"] = "Hz" if ctype == "FREQ" else ""


def write(hdul: fits.HDUList | fits.PrimaryHDU, name: str, outdir: Path) -> Path:
    path = outdir / name
    hdul.writeto(path, overwrite=True)
    return path


def make_all(outdir: Path = HERE) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    plane = sky_plane()
    written: list[Path] = []

    # A plain 2-D image: the reference the other shapes are compared with.
    hdu = fits.PrimaryHDU(plane)
    celestial_cards(hdu.header)
    written.append(write(hdu, "image2d.fits", outdir))

    # 4-D radio cube (NAXIS4=STOKES, NAXIS3=FREQ, both of length 1), as CASA writes them.
    hdu = fits.PrimaryHDU(plane[np.newaxis, np.newaxis])
    celestial_cards(hdu.header)
    spectral_cards(hdu.header, 3, "FREQ", 1.4e9, 1.0e6)
    spectral_cards(hdu.header, 4, "STOKES", 1.0, 1.0)
    written.append(write(hdu, "cube4d_degenerate.fits", outdir))

    # Scaled 16-bit integers with BLANK pixels (a 6x6 blank patch and one blank row).
    bscale, bzero, blank = 5.0e-6, 1.0e-3, -32768
    raw = np.round((plane - bzero) / bscale).astype(np.int16)
    raw[5:11, 50:56] = blank
    raw[60, :] = blank
    hdu = fits.PrimaryHDU(raw)
    # Cards set after construction are written as they are, with the raw integers.
    hdu.header["BSCALE"] = bscale
    hdu.header["BZERO"] = bzero
    hdu.header["BLANK"] = blank
    celestial_cards(hdu.header)
    written.append(write(hdu, "int16_bscale_blank.fits", outdir))

    # Unscaled 16-bit integers (counts) with BLANK: astropy leaves them as integers.
    counts = np.round(plane / NOISE).astype(np.int16)
    counts[0:4, 0:4] = -999
    hdu = fits.PrimaryHDU(counts)
    hdu.header["BLANK"] = -999
    celestial_cards(hdu.header)
    hdu.header["BUNIT"] = "mJy/beam"
    written.append(write(hdu, "int16_blank_unscaled.fits", outdir))

    # The image in the first extension, with an empty primary HDU.
    ext = fits.ImageHDU(plane, name="SKY")
    celestial_cards(ext.header)
    written.append(write(fits.HDUList([fits.PrimaryHDU(), ext]), "extension_image.fits", outdir))

    # A tile-compressed image (GZIP without quantisation: lossless, pixel values exact).
    comp = fits.CompImageHDU(
        plane, compression_type="GZIP_1", quantize_level=0.0, name="COMPRESSED"
    )
    celestial_cards(comp.header)
    written.append(write(fits.HDUList([fits.PrimaryHDU(), comp]), "compressed_image.fits", outdir))

    # Axes in an unusual order: FITS axis 1 is a degenerate FREQ, then RA, then DEC.
    hdu = fits.PrimaryHDU(plane[:, :, np.newaxis])
    celestial_cards(hdu.header, lon_axis=2, lat_axis=3)
    spectral_cards(hdu.header, 1, "FREQ", 1.4e9, 1.0e6)
    written.append(write(hdu, "cube_freq_first.fits", outdir))

    # --- inputs that must be refused -------------------------------------------------------
    # A 3-D cube with 4 frequency planes.
    small = plane[16:48, 16:48]
    hdu = fits.PrimaryHDU(np.stack([small] * 4))
    celestial_cards(hdu.header)
    hdu.header["CRPIX1"] = CRPIX[0] - 16
    hdu.header["CRPIX2"] = CRPIX[1] - 16
    spectral_cards(hdu.header, 3, "FREQ", 1.4e9, 1.0e6)
    written.append(write(hdu, "cube3d_4planes.fits", outdir))

    # An image with no WCS keywords at all.
    written.append(write(fits.PrimaryHDU(plane), "no_wcs.fits", outdir))

    # A FITS file with only a binary table.
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="ra", format="D", unit="deg", array=np.array([150.0, 150.01])),
            fits.Column(name="dec", format="D", unit="deg", array=np.array([2.0, 2.01])),
        ],
        name="CATALOG",
    )
    written.append(write(fits.HDUList([fits.PrimaryHDU(), table]), "table_only.fits", outdir))

    # An image whose every pixel is NaN.
    hdu = fits.PrimaryHDU(np.full((32, 32), np.nan, dtype=np.float32))
    celestial_cards(hdu.header)
    written.append(write(hdu, "all_nan.fits", outdir))

    # Not FITS at all.
    text = outdir / "not_fits.txt"
    text.write_text("ra,dec\n150.0,2.0\nThis is a CSV catalogue, not a FITS image.\n")
    written.append(text)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in make_all(target):
        print(f"{path.stat().st_size:>7d}  {path.name}")
