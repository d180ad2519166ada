"""What an image is, from its header (astro_otf.imaging.identity), on generated FITS files
of the shapes radio images come in, and the cleaning of clients' file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from astro_otf.data import __file__ as data_init
from astro_otf.imaging.identity import describe_image, sanitise_filename

SAMPLE = Path(data_init).parent / "sample.fits"


def write(path: Path, *hdus: fits.hdu.base._BaseHDU) -> Path:
    fits.HDUList(list(hdus)).writeto(path)
    return path


def celestial(header: fits.Header, lon: int, lat: int, frame: str = "equatorial") -> None:
    names = ("RA---SIN", "DEC--SIN") if frame == "equatorial" else ("GLON-CAR", "GLAT-CAR")
    for axis, ctype, crval in ((lon, names[0], 150.0), (lat, names[1], 2.0)):
        header[f"CTYPE{axis}"] = ctype
        header[f"CRVAL{axis}"] = crval
        header[f"CRPIX{axis}"] = 1.0
        header[f"CDELT{axis}"] = 0.001


def test_sample_image() -> None:
    assert describe_image(SAMPLE) == {
        "object": None,
        "telescope": None,
        "frequency_hz": None,
        "shape": [256, 512],
    }


def test_radio_cube_with_freq_and_stokes_axes(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.zeros((1, 1, 40, 60), dtype=np.float32))
    celestial(hdu.header, 1, 2)
    hdu.header["CTYPE3"], hdu.header["CRVAL3"], hdu.header["CUNIT3"] = "FREQ", 887.5, "MHz"
    hdu.header["CRPIX3"], hdu.header["CDELT3"] = 1.0, 1.0
    hdu.header["CTYPE4"], hdu.header["CRVAL4"] = "STOKES", 1.0
    hdu.header["OBJECT"] = "  NGC1234  "
    hdu.header["TELESCOP"] = "ASKAP"
    hdu.header["RESTFRQ"] = 1.4e9  # the pixels' own axis wins over a rest frequency
    info = describe_image(write(tmp_path / "cube.fits", hdu))
    assert info == {
        "object": "NGC1234",
        "telescope": "ASKAP",
        "frequency_hz": pytest.approx(8.875e8),
        "shape": [40, 60],
    }


def test_frequency_of_the_first_plane_and_units(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.zeros((3, 20, 30), dtype=np.float32))
    celestial(hdu.header, 1, 2)
    hdu.header["CTYPE3"], hdu.header["CUNIT3"] = "FREQ-LSR", "GHz"
    hdu.header["CRVAL3"], hdu.header["CRPIX3"], hdu.header["CDELT3"] = 1.5, 2.0, 0.1
    assert describe_image(write(tmp_path / "a.fits", hdu))["frequency_hz"] == pytest.approx(1.4e9)

    hdu.header["CUNIT3"] = "parsec"  # not a frequency: the keywords are used instead
    hdu.header["RESTFREQ"] = 1.42e9
    assert describe_image(write(tmp_path / "b.fits", hdu))["frequency_hz"] == 1.42e9

    del hdu.header["CUNIT3"]  # no unit: Hz
    hdu.header["CRVAL3"], hdu.header["CDELT3"] = 3.0e9, 1e6
    assert describe_image(write(tmp_path / "c.fits", hdu))["frequency_hz"] == pytest.approx(2.999e9)


def test_frequency_from_keywords(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.zeros((8, 8), dtype=np.float32))
    hdu.header["FREQ"] = 1.4e9
    assert describe_image(write(tmp_path / "freq.fits", hdu))["frequency_hz"] == 1.4e9
    hdu.header["RESTFRQ"] = 1.3e9  # RESTFRQ, RESTFREQ, FREQ in that order
    assert describe_image(write(tmp_path / "rest.fits", hdu))["frequency_hz"] == 1.3e9
    hdu.header["RESTFRQ"] = "unknown"
    hdu.header["FREQ"] = -5.0
    assert describe_image(write(tmp_path / "bad.fits", hdu))["frequency_hz"] is None


def test_galactic_axes_after_a_spectral_axis(tmp_path: Path) -> None:
    # FITS axes: 1 FREQ (1), 2 GLON (50), 3 GLAT (70); numpy shape is reversed
    hdu = fits.PrimaryHDU(np.zeros((70, 50, 1), dtype=np.float32))
    celestial(hdu.header, 2, 3, frame="galactic")
    hdu.header["CTYPE1"], hdu.header["CRVAL1"] = "FREQ", 1.4e9
    info = describe_image(write(tmp_path / "gal.fits", hdu))
    assert info["shape"] == [70, 50]
    assert info["frequency_hz"] == 1.4e9


def test_latitude_before_longitude(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.zeros((30, 20), dtype=np.float32))  # NAXIS1=20 DEC, NAXIS2=30 RA
    celestial(hdu.header, 2, 1)
    assert describe_image(write(tmp_path / "swapped.fits", hdu))["shape"] == [30, 20]


def test_missing_cards(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.zeros((1, 12, 10), dtype=np.int16))  # no WCS at all
    hdu.header["OBJECT"] = ""
    hdu.header["TELESCOP"] = 42  # a number where a name belongs: kept as text
    info = describe_image(write(tmp_path / "bare.fits", hdu))
    assert info == {"object": None, "telescope": "42", "frequency_hz": None, "shape": [12, 10]}

    one_axis = fits.PrimaryHDU(np.zeros(16, dtype=np.float32))
    assert describe_image(write(tmp_path / "line.fits", one_axis))["shape"] == [1, 16]


def test_image_in_an_extension_after_a_table(tmp_path: Path) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.ones(3))])
    image = fits.ImageHDU(np.zeros((9, 11), dtype=np.float32), name="SCI")
    celestial(image.header, 1, 2)
    image.header["OBJECT"] = "M31"
    path = write(tmp_path / "ext.fits", fits.PrimaryHDU(), table, image)
    assert describe_image(path) == {
        "object": "M31",
        "telescope": None,
        "frequency_hz": None,
        "shape": [9, 11],
    }


def test_tile_compressed_image(tmp_path: Path) -> None:
    image = fits.CompImageHDU(np.arange(24 * 32, dtype=np.float32).reshape(24, 32))
    image.header["TELESCOP"] = "VLA"
    path = write(tmp_path / "comp.fits", fits.PrimaryHDU(), image)
    info = describe_image(path)
    assert info["shape"] == [24, 32] and info["telescope"] == "VLA"


def test_pixels_are_not_read(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(np.zeros((400, 500), dtype=np.float64))
    celestial(hdu.header, 1, 2)
    path = write(tmp_path / "whole.fits", hdu)
    cut = tmp_path / "truncated.fits"
    cut.write_bytes(path.read_bytes()[: 2880 + 1000])  # the header and a few pixels only
    assert describe_image(cut)["shape"] == [400, 500]


def test_not_an_image(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(ValueError, match="not a FITS file"):
        describe_image(png)
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.ones(3))])
    with pytest.raises(ValueError, match="no image"):
        describe_image(write(tmp_path / "table.fits", fits.PrimaryHDU(), table))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ngc1234.fits", "ngc1234.fits"),
        ("/home/me/data/ngc1234.fits", "ngc1234.fits"),
        ("C:\\Users\\me\\M 31.fits", "M 31.fits"),
        ("../../etc/passwd", "passwd"),
        ("bad\x00name\r\n.fits", "badname.fits"),
        ("..", "image.fits"),
        ("", "image.fits"),
        ("dir/", "image.fits"),
        ("\x1b\x07", "image.fits"),
        ("  .hidden.fits ", "hidden.fits"),
        ("Ωmega.fits", "Ωmega.fits"),
    ],
)
def test_sanitise_filename(name: str, expected: str) -> None:
    assert sanitise_filename(name) == expected


def test_long_filename_keeps_its_extension() -> None:
    name = "a" * 300 + ".fits.gz"
    clean = sanitise_filename(name)
    assert len(clean) == 200 and clean.endswith("a.fits.gz")
    assert len(sanitise_filename("b" * 500)) == 200
