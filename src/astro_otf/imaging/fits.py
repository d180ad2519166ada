"""FITS image loading and cut-outs for the apps.

Every app needs the same thing from an upload: one 2-D plane of pixels, its celestial WCS, the
beam and the brightness unit. Radio images arrive in many shapes (primary or extension HDU,
4-D cubes with degenerate FREQ/STOKES axes, scaled integers with BLANK pixels, Galactic
frames), and a bad upload must fail with a message a scientist can act on rather than a
traceback. This module is the one place that turns a FITS file into a :class:`SkyImage` and
that cuts a region of interest out of it; pixel data stay memory-mapped wherever astropy
allows, so a large image is not read whole before it is needed.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import math
import os
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import BaseCoordinateFrame, SkyCoord
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales, wcs_to_celestial_frame

from astro_otf.domain.errors import JobFailure
from astro_otf.domain.parameters import Extent, Roi

__all__ = [
    "Beam",
    "DeclaredImage",
    "Region",
    "SkyImage",
    "UploadRefused",
    "check_upload",
    "cut",
    "cutout",
    "declared_image",
    "inflate_upload",
    "load_image",
    "region_of",
    "stream_compression",
]

#: FWHM of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

_IMAGE_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


@dataclass(frozen=True)
class Beam:
    """The restoring beam from BMAJ/BMIN/BPA: FWHM axes and position angle, in degrees."""

    major_deg: float
    minor_deg: float
    pa_deg: float


@dataclass(frozen=True)
class SkyImage:
    """One 2-D image plane with its celestial WCS.

    ``data`` is indexed ``[y, x]`` and is a memory-mapped view of the file when the pixels
    are stored as unscaled floats. ``header`` is the header of the HDU that was read, as
    read: for a squeezed cube or a cut-out its WCS keywords describe the file's full image, so
    use ``wcs`` for coordinates. ``origin`` is the (x, y) pixel of this image's ``[0, 0]`` in
    the image that was loaded (non-zero for a cut-out).
    """

    data: np.ndarray
    wcs: WCS
    header: fits.Header
    hdu_index: int
    origin: tuple[int, int] = (0, 0)

    @property
    def shape(self) -> tuple[int, int]:
        """The plane's (rows, columns): (ny, nx) in pixels."""
        ny, nx = self.data.shape
        return int(ny), int(nx)

    @property
    def frame(self) -> BaseCoordinateFrame:
        """The celestial frame of the WCS (ICRS, FK5, Galactic, ...)."""
        return wcs_to_celestial_frame(self.wcs)

    @property
    def pixel_scales_arcsec(self) -> tuple[float, float]:
        """Pixel size along x and y on the sky, in arcsec."""
        sx, sy = proj_plane_pixel_scales(self.wcs)
        return float(abs(sx)) * 3600.0, float(abs(sy)) * 3600.0

    @property
    def pixel_scale_arcsec(self) -> float:
        """Geometric mean pixel size on the sky, in arcsec."""
        sx, sy = self.pixel_scales_arcsec
        return math.sqrt(sx * sy)

    @property
    def beam(self) -> Beam | None:
        """The beam from BMAJ/BMIN (degrees; BPA 0 when absent), or None when not given."""
        try:
            bmaj = float(self.header["BMAJ"])
            bmin = float(self.header["BMIN"])
        except (KeyError, TypeError, ValueError):
            return None
        if not (math.isfinite(bmaj) and math.isfinite(bmin)) or bmaj <= 0 or bmin <= 0:
            return None
        try:
            bpa = float(self.header.get("BPA", 0.0))
        except (TypeError, ValueError):
            bpa = 0.0
        return Beam(bmaj, bmin, bpa if math.isfinite(bpa) else 0.0)

    @property
    def bmaj_deg(self) -> float | None:
        """The beam's major axis (FWHM) in degrees, or None without a beam."""
        beam = self.beam
        return beam.major_deg if beam else None

    @property
    def bmin_deg(self) -> float | None:
        """The beam's minor axis (FWHM) in degrees, or None without a beam."""
        beam = self.beam
        return beam.minor_deg if beam else None

    @property
    def bpa_deg(self) -> float | None:
        """The beam's position angle in degrees (BPA, 0 when absent), or None without a beam."""
        beam = self.beam
        return beam.pa_deg if beam else None

    @property
    def beam_major_pix(self) -> float | None:
        """The beam's major axis (FWHM) in pixels, or None without a beam."""
        beam = self.beam
        if beam is None:
            return None
        return beam.major_deg * 3600.0 / self.pixel_scale_arcsec

    @property
    def beam_area_pix(self) -> float | None:
        """Area of the Gaussian beam in pixels, pi/(4 ln 2) BMAJ BMIN / pixel area: the factor
        from a sum of Jy/beam pixels to Jy. None without a beam."""
        beam = self.beam
        if beam is None:
            return None
        sx, sy = self.pixel_scales_arcsec
        area_arcsec2 = math.pi / (4.0 * math.log(2.0)) * beam.major_deg * beam.minor_deg * 3600.0**2
        return area_arcsec2 / (sx * sy)

    @property
    def bunit(self) -> str | None:
        """BUNIT as written in the header, or None when absent or blank."""
        value = self.header.get("BUNIT")
        if value is None:
            return None
        text = str(value).strip()
        return text or None


# --------------------------------------------------------------------------- uploads

#: Byte-stream compressions astropy opens transparently, by their magic bytes (the same
#: prefixes astropy tests: a file starting with "BZ" is read as bzip2).
STREAM_COMPRESSIONS = (
    (b"\x1f\x8b", "gzip"),
    (b"\x1f\x9d", "Unix compress (.Z)"),
    (b"PK\x03\x04", "zip"),
    (b"BZ", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)
#: The ones an upload may use: they are inflated at upload, under the upload limit.
_INFLATED = ("gzip", "bzip2", "xz")
#: HDUs read, at most, looking for the image of an upload.
MAX_HDUS_SCANNED = 1000
_CHUNK = 1024 * 1024


class UploadRefused(ValueError):
    """An uploaded file that cannot be accepted; the message says why and what to do.
    ``too_large`` marks a file over one of the service's size limits (413)."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


@dataclass(frozen=True)
class DeclaredImage:
    """What the header of an upload's image HDU declares, read without its data."""

    hdu_index: int
    #: the axis lengths in FITS order (NAXIS1, NAXIS2, ...; ZNAXISn when tile-compressed)
    axes: tuple[int, ...]
    bitpix: int
    tile_compressed: bool
    #: where the HDU's data start in the file, and how many bytes the header says they take
    data_offset: int
    data_bytes: int

    @property
    def pixels(self) -> int:
        """The pixel count the header declares (all axes, planes included)."""
        return math.prod(self.axes)

    @property
    def shape_text(self) -> str:
        """The axis lengths for a message, in FITS order: ``4096 x 4096 x 1``."""
        return " x ".join(str(n) for n in self.axes)


def stream_compression(path: Path) -> str | None:
    """The byte-stream compression of a file (gzip, bzip2, ...), from its first bytes, or
    None for an uncompressed file."""
    with open(path, "rb") as f:
        head = f.read(8)
    return next((name for magic, name in STREAM_COMPRESSIONS if head.startswith(magic)), None)


def inflate_upload(path: Path, max_bytes: int) -> str | None:
    """Replace a gzip, bzip2 or xz upload by the file it holds, refusing it (413) as soon
    as that passes ``max_bytes``, the upload limit: a compressed upload is held to the limit
    of an uncompressed one. Returns the compression undone, or None for a plain file.
    Raises :class:`UploadRefused` for a compression that is not inflated (zip, .Z) or a
    damaged stream."""
    kind = stream_compression(path)
    if kind is None:
        return None
    if kind not in _INFLATED:
        raise UploadRefused(
            f"the upload is {kind}-compressed, which this service does not inflate: upload "
            "the uncompressed FITS file (or gzip it)"
        )
    target = path.with_name(path.name + ".inflating")
    written = 0
    try:
        with _inflating(kind, path) as source, open(target, "wb") as out:
            while True:
                try:
                    chunk = source.read(_CHUNK)
                except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:  # bad stream
                    raise UploadRefused(
                        f"the upload starts like a {kind} stream but cannot be inflated "
                        f"({_first_line(exc)}): upload the uncompressed FITS file"
                    ) from None
                if not chunk:
                    break
                written += len(chunk)
                if written > max_bytes:
                    raise UploadRefused(
                        f"the {kind}-compressed upload inflates to more than this service's "
                        f"upload limit of {max_bytes} bytes ({max_bytes / 1024**2:.1f} MiB): "
                        "cut a region of the image, or ask the operators",
                        too_large=True,
                    )
                out.write(chunk)
        os.replace(target, path)
    finally:
        target.unlink(missing_ok=True)
    return kind


def _inflating(kind: str, path: Path) -> io.BufferedIOBase:
    """The file that ``path`` holds, read through its ``kind`` of stream compression."""
    if kind == "gzip":
        return gzip.GzipFile(path, "rb")
    if kind == "bzip2":
        return bz2.BZ2File(path, "rb")
    return lzma.LZMAFile(path, "rb")


def declared_image(path: Path) -> DeclaredImage | None:
    """The header of the HDU :func:`load_image` would read (the primary HDU when it holds
    pixels, else the first image extension), read without its data and without inflating a
    tile-compressed image. None when the file cannot be read as FITS or holds no image:
    :func:`load_image` then says why, in the job's error. Raises :class:`UploadRefused` when
    no image lies among the first :data:`MAX_HDUS_SCANNED` HDUs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hdul = fits.open(path, memmap=True, lazy_load_hdus=True, disable_image_compression=True)
        except Exception:
            return None
        try:
            for index in range(MAX_HDUS_SCANNED):
                try:
                    hdu = hdul[index]
                except Exception:  # IndexError past the last HDU, or an unreadable header
                    return None
                try:
                    found = _declared(index, hdu)
                except Exception:  # a header whose keywords cannot describe an image
                    return None
                if found is not None:
                    return found
        finally:
            hdul.close()
    raise UploadRefused(
        f"no image HDU among the first {MAX_HDUS_SCANNED} HDUs of the file: put the image in "
        "the primary HDU or an early extension"
    )


def _declared(index: int, hdu: fits.hdu.base._BaseHDU) -> DeclaredImage | None:
    header = hdu.header
    compressed = isinstance(hdu, fits.BinTableHDU) and header.get("ZIMAGE") is True
    if compressed:
        prefix, bitpix = "ZNAXIS", int(header["ZBITPIX"])
    elif isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)) and not isinstance(hdu, fits.GroupsHDU):
        prefix, bitpix = "NAXIS", int(header["BITPIX"])
    else:
        return None
    ndim = int(header[prefix])
    axes = tuple(int(header[f"{prefix}{k}"]) for k in range(1, ndim + 1))
    if ndim == 0 or any(n <= 0 for n in axes):
        return None  # no pixels: load_image looks further, as this does
    # the bytes the HDU's data take on disk (FITS 4.0, eq. 2; a compressed image is a table)
    naxis = [int(header[f"NAXIS{k}"]) for k in range(1, int(header["NAXIS"]) + 1)]
    gcount, pcount = int(header.get("GCOUNT", 1)), int(header.get("PCOUNT", 0))
    data_bytes = abs(int(header["BITPIX"])) // 8 * gcount * (pcount + math.prod(naxis))
    return DeclaredImage(
        hdu_index=index,
        axes=axes,
        bitpix=bitpix,
        tile_compressed=compressed,
        data_offset=int(hdu.fileinfo()["datLoc"]),
        data_bytes=data_bytes,
    )


def check_upload(path: Path, *, max_pixels: int, max_bytes: int) -> None:
    """Accept or refuse an uploaded image before its job exists, from its header alone.

    A gzip/bzip2/xz upload is first inflated in place under ``max_bytes`` (see
    :func:`inflate_upload`). Then the image HDU's declared size must not pass ``max_pixels``
    (413) and its declared data must lie in the file (400): a small file whose header
    claims a huge image is refused here rather than planned, queued and read. A file that is
    not FITS at all passes: its job fails with the reason, as any unreadable image does.
    """
    inflate_upload(path, max_bytes)
    image = declared_image(path)
    if image is None:
        return
    what = "tile-compressed image" if image.tile_compressed else "image"
    if image.pixels > max_pixels:
        raise UploadRefused(
            f"the {what} is {image.shape_text} pixels ({image.pixels} in all), more than this "
            f"service's limit of {max_pixels} pixels (max_image_pixels): cut a region out of "
            "it, or ask the operators",
            too_large=True,
        )
    have = path.stat().st_size - image.data_offset
    if image.data_bytes > have:
        raise UploadRefused(
            f"the header of HDU {image.hdu_index} declares a {image.shape_text} {what} "
            f"(BITPIX {image.bitpix}) whose data take {image.data_bytes} bytes, but the file "
            f"holds only {max(have, 0)} bytes after that header: the file is truncated or its "
            "header is wrong; upload the complete file"
        )


def load_image(path: Path) -> SkyImage:
    """Read the image plane of a FITS file, or raise :class:`JobFailure` saying why it cannot.

    The primary HDU is used when it holds an image, otherwise the first image extension
    (``ImageHDU`` or ``CompImageHDU``). Axes other than the two celestial ones must have
    length 1 (radio cubes with one frequency and one Stokes plane) and are dropped, with the
    WCS reduced to its celestial part. Scaled integer images become floats with BLANK pixels
    as NaN; float images keep their NaNs.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise JobFailure(f"the image file cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise JobFailure("the upload is empty (0 bytes): send a FITS image")
    try:
        compression = stream_compression(path)
    except OSError as exc:
        raise JobFailure(f"the image file cannot be read: {exc.strerror or exc}") from None
    if compression is not None:  # astropy would inflate it whole, past any limit
        raise JobFailure(
            f"the image is {compression}-compressed: upload the uncompressed FITS file"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # memmap=None: memory-map where the pixels allow it; astropy reads scaled
            # integers (BSCALE/BZERO/BLANK) into floats, which memmap=True would refuse.
            hdul = fits.open(path, memmap=None, uint=False, lazy_load_hdus=True)
        except Exception as exc:  # astropy raises OSError, ValueError, ... on non-FITS bytes
            raise JobFailure(f"the upload is not a FITS file: {_first_line(exc)}") from None
        try:
            image = _read_image(hdul)
        except (JobFailure, MemoryError):
            raise
        except Exception as exc:  # a damaged header or extension further into the file
            raise JobFailure(
                f"the FITS file cannot be read: {_first_line(exc)}; check the file is complete "
                "and valid (e.g. with fitsverify)"
            ) from None
        finally:
            hdul.close()
        for warning in caught:
            text = str(warning.message)
            if "truncated" in text.lower():
                raise JobFailure(
                    f"the FITS file is truncated ({text.rstrip('.')}); upload the complete file"
                )
    return image


@dataclass(frozen=True)
class _Layout:
    """What an image HDU's header says of its pixels: which HDU, its header, its shape
    (numpy order), its WCS and which FITS axes are the celestial ones (0-based)."""

    index: int
    header: fits.Header
    shape: tuple[int, ...]
    wcs: WCS
    lng: int
    lat: int

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(rows, columns) of the celestial plane."""
        ndim = len(self.shape)
        return (
            self.shape[ndim - 1 - max(self.lng, self.lat)],
            self.shape[ndim - 1 - min(self.lng, self.lat)],
        )

    def celestial_wcs(self) -> WCS:
        # A sub-WCS of the celestial axes in file order keeps pixel axis 0 on the last
        # numpy axis.
        return self.wcs.sub(sorted([self.lng + 1, self.lat + 1]))


def read_header_image(path: Path) -> SkyImage:
    """The image plane of a FITS file as its header describes it, without reading a pixel:
    the shape, WCS, beam and units are those :func:`load_image` gives, and ``data`` is a
    read-only view of one NaN broadcast to the plane's shape (no memory). For planning work
    on an image (its tiles) from its header alone. Raises :class:`JobFailure` as
    :func:`load_image` does for a header it cannot use; whether the WCS gives positions is
    not checked (:func:`region_of` says so when a region needs one)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # of the data (truncated, ...): not read here
            with fits.open(Path(path), memmap=True, lazy_load_hdus=True) as hdul:
                layout = _layout(hdul)
    except (JobFailure, MemoryError):
        raise
    except Exception as exc:
        raise JobFailure(f"the FITS header cannot be read: {_first_line(exc)}") from None
    ny, nx = layout.plane_shape
    return SkyImage(
        data=np.broadcast_to(np.float32(np.nan), (ny, nx)),
        wcs=layout.celestial_wcs(),
        header=layout.header,
        hdu_index=layout.index,
    )


def _layout(hdul: fits.HDUList) -> _Layout:
    """The image HDU's layout (see :class:`_Layout`), or JobFailure saying why it has none a
    source finder can use."""
    index = _select_image_hdu(hdul)
    hdu = hdul[index]
    header = hdu.header.copy()
    shape = tuple(int(n) for n in hdu.shape)  # numpy order, from the header: no data read
    ndim = len(shape)

    wcs = _full_wcs(header, hdul)
    if not wcs.has_celestial:
        ctypes = " / ".join(repr(str(header.get(f"CTYPE{k}", ""))) for k in (1, 2))
        raise JobFailure(
            f"the image header has no celestial WCS: CTYPE1/CTYPE2 are {ctypes}; source "
            "positions cannot be given on the sky. Add RA/Dec (or GLON/GLAT) CTYPE, CRVAL, "
            "CRPIX and CDELT (or CD) keywords"
        )
    lng, lat = int(wcs.wcs.lng), int(wcs.wcs.lat)  # 0-based FITS axis numbers
    if max(lng, lat) >= ndim:
        raise JobFailure(
            f"the celestial axes of the WCS (FITS axes {lng + 1} and {lat + 1}) are not among "
            f"the image's {ndim} data axes; the header does not describe this image"
        )
    for fits_axis in range(ndim):
        if fits_axis in (lng, lat):
            continue
        length = shape[ndim - 1 - fits_axis]
        if length != 1:
            ctype = str(header.get(f"CTYPE{fits_axis + 1}", "")).strip() or "no CTYPE"
            raise JobFailure(
                f"the image is a cube: axis {fits_axis + 1} ({ctype}) has {length} planes; "
                "send one plane (a 2-D image, or a cube whose other axes all have length 1)"
            )
    nx, ny = shape[ndim - 1 - min(lng, lat)], shape[ndim - 1 - max(lng, lat)]
    if nx < 2 or ny < 2:
        raise JobFailure(f"the image is {nx} x {ny} pixels; a 2-D image is needed")
    return _Layout(index, header, shape, wcs, lng, lat)


def _read_image(hdul: fits.HDUList) -> SkyImage:
    layout = _layout(hdul)
    hdu = hdul[layout.index]
    header, shape, lng, lat = layout.header, layout.shape, layout.lng, layout.lat
    ndim = len(shape)
    try:
        raw = hdu.data
    except Exception as exc:
        raise JobFailure(
            f"the image data cannot be read (is the file truncated?): {_first_line(exc)}"
        ) from None
    if raw is None or tuple(raw.shape) != shape:
        raise JobFailure(
            "the image data cannot be read: the file holds fewer pixels than its "
            "header declares (is it truncated?)"
        )
    # Keep the two celestial axes, take plane 0 of the others: a view, still memory-mapped.
    keep = {ndim - 1 - lng, ndim - 1 - lat}
    plane = raw[tuple(slice(None) if axis in keep else 0 for axis in range(ndim))]
    plane = _as_float(plane, header)
    image = SkyImage(data=plane, wcs=layout.celestial_wcs(), header=header, hdu_index=layout.index)
    _check_wcs(image)
    return image


def _select_image_hdu(hdul: fits.HDUList) -> int:
    seen: list[str] = []
    for index, hdu in enumerate(hdul):
        is_image = isinstance(hdu, _IMAGE_HDUS) and not isinstance(hdu, fits.GroupsHDU)
        if is_image and _has_pixels(hdu):
            return index
        seen.append(_describe_hdu(hdu))
    listing = ", ".join(seen) or "none"
    advice = (
        "the file looks damaged or non-standard: check it (e.g. with fitsverify) and upload "
        "it again"
        if any(text.startswith("unreadable") for text in seen)
        else "send a FITS image, not a table"
    )
    raise JobFailure(f"the FITS file has no image HDU (HDUs: {listing}); {advice}")


def _has_pixels(hdu: fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU) -> bool:
    return int(hdu.header.get("NAXIS", 0)) > 0 and all(int(n) > 0 for n in hdu.shape)


def _describe_hdu(hdu: fits.hdu.base._BaseHDU) -> str:
    kind = type(hdu).__name__
    if kind.startswith("_"):  # astropy's stand-ins (_CorruptedHDU, _ValidHDU) for an HDU
        # whose header is unreadable or of no known type
        return f"unreadable HDU {hdu.name!r}" if hdu.name else "unreadable HDU"
    if isinstance(hdu, fits.GroupsHDU):
        return f"{kind} (random groups, not an image)"
    if isinstance(hdu, _IMAGE_HDUS):
        label = hdu.name or kind
        return f"{label} (no data)"
    return f"{kind} {hdu.name!r}" if hdu.name else kind


def _full_wcs(header: fits.Header, hdul: fits.HDUList) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            return WCS(header, fobj=hdul)
        except Exception as exc:  # wcslib reports inconsistent keywords in many ways
            raise JobFailure(
                f"the image WCS cannot be read: {_first_line(exc)}; fix the WCS keywords"
            ) from None


def _as_float(plane: np.ndarray, header: fits.Header) -> np.ndarray:
    """Integers that astropy did not scale (no BSCALE/BZERO) become floats, BLANK as NaN.
    Scaled integers were already turned into floats by astropy, BLANK included."""
    if plane.dtype.kind not in "iub":
        return plane
    dtype = np.float32 if plane.dtype.itemsize <= 2 else np.float64
    out = plane.astype(dtype)
    blank = header.get("BLANK")
    if isinstance(blank, int):
        out[plane == blank] = np.nan
    return out


def _check_wcs(image: SkyImage) -> None:
    try:
        frame = image.frame
    except ValueError as exc:
        raise JobFailure(
            f"the celestial frame of the image is not recognised: {_first_line(exc)}"
        ) from None
    ny, nx = image.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centre = image.wcs.pixel_to_world((nx - 1) / 2.0, (ny - 1) / 2.0)
    lon = centre.spherical.lon.deg
    lat = centre.spherical.lat.deg
    if not (np.isfinite(lon) and np.isfinite(lat)):
        raise JobFailure(
            f"the image WCS ({frame.name}) gives no sky position at the image centre; check "
            "CRVAL, CRPIX and the projection in the header"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------- cut-outs


@dataclass(frozen=True)
class Region:
    """Where a region of interest lies on an image's pixel grid.

    ``centre`` is the (x, y) pixel of the asked centre; ``requested`` the asked width and
    height in pixels (before clipping); ``box`` the searched pixels ``(x0, y0, x1, y1)``,
    ``x0 <= x < x1``, in the image that was loaded: the asked box clipped at the image edges.
    """

    centre: tuple[float, float]
    requested: tuple[int, int]
    box: tuple[int, int, int, int]
    pixel_scales_arcsec: tuple[float, float]

    @property
    def width(self) -> int:
        """The searched box's width in pixels (after clipping at the image edge)."""
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        """The searched box's height in pixels (after clipping at the image edge)."""
        return self.box[3] - self.box[1]

    @property
    def clipped(self) -> bool:
        """True when the image edge cut the asked box (the search covers less)."""
        return (self.width, self.height) != self.requested

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which pixel positions (in the loaded image's pixels) fall in the searched box."""
        x0, y0, x1, y1 = self.box
        xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        return (xs >= x0 - 0.5) & (xs < x1 - 0.5) & (ys >= y0 - 0.5) & (ys < y1 - 0.5)

    def padded(
        self, margin: int, shape: tuple[int, int], grid: int = 1
    ) -> tuple[int, int, int, int]:
        """The box grown by ``margin`` pixels on every side, its edges moved out to multiples
        of ``grid`` (so a mesh of ``grid``-pixel boxes falls as on the whole image), and
        clipped to an image of ``shape``."""
        ny, nx = shape
        grid = max(1, grid)
        x0, y0, x1, y1 = self.box
        gx0 = max(0, (x0 - margin) // grid * grid)
        gy0 = max(0, (y0 - margin) // grid * grid)
        gx1 = min(nx, -(-(x1 + margin) // grid) * grid)
        gy1 = min(ny, -(-(y1 + margin) // grid) * grid)
        return gx0, gy0, gx1, gy1

    def info(self) -> dict[str, object]:
        """The job-info entries that say what was asked and what was searched."""
        sx, sy = self.pixel_scales_arcsec
        rw, rh = self.requested
        return {
            "region_clipped": self.clipped,
            "region_requested_pix": f"{rw} x {rh}",
            "region_searched_pix": f"{self.width} x {self.height}",
            "region_requested_arcsec": f"{rw * sx:.4g} x {rh * sy:.4g}",
            "region_searched_arcsec": f"{self.width * sx:.4g} x {self.height * sy:.4g}",
        }

    def describe_clipping(self) -> str:
        """One sentence for the job log, saying how the image edge cut the region."""
        sx, sy = self.pixel_scales_arcsec
        rw, rh = self.requested
        return (
            f"the region of interest reaches past the image edge: asked {rw} x {rh} pixels "
            f"({rw * sx / 60:.4g} x {rh * sy / 60:.4g} arcmin), searched {self.width} x "
            f"{self.height} pixels ({self.width * sx / 60:.4g} x {self.height * sy / 60:.4g} "
            f"arcmin) from pixel x={self.box[0]}, y={self.box[1]}"
        )


def region_of(image: SkyImage, roi: Roi) -> Region:
    """Place ``roi`` on the pixels of ``image``, or raise :class:`JobFailure` when its centre
    does not fall on them.

    The centre is ICRS degrees, transformed into the image's frame (FK5, Galactic, ...) and
    to a pixel through the WCS: inside means on the pixel grid (-0.5 to n - 0.5 on each
    axis), whatever RA/Dec ranges the image's corners span (a rotated or strongly projected
    image is no RA/Dec rectangle). A missing width or height means the image's full extent.
    """
    ny, nx = image.shape
    centre = SkyCoord(roi.ra * u.deg, roi.dec * u.deg, frame="icrs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = (float(v) for v in image.wcs.world_to_pixel(centre))
    if not (math.isfinite(x) and math.isfinite(y)):
        raise JobFailure(
            f"the region of interest centred on RA={roi.ra:.6g}, Dec={roi.dec:.6g} (ICRS deg) "
            f"lies outside the image: its projection gives that point no pixel; "
            f"the image covers {_coverage(image)}; give a centre inside it"
        )
    off = _outside(x, nx, "left", "right") or _outside(y, ny, "bottom", "top")
    if off:
        near_x, near_y = min(max(x, 0.0), nx - 1.0), min(max(y, 0.0), ny - 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            near = image.wcs.pixel_to_world(near_x, near_y).icrs
        raise JobFailure(
            f"the region of interest centred on RA={roi.ra:.6g}, Dec={roi.dec:.6g} (ICRS deg) "
            f"lies outside the image: it falls at pixel x={x:.2f}, y={y:.2f} (0-based) of the "
            f"{nx} x {ny} pixel image, "
            f"{off}: the centre must fall on the image's pixels (x and y from -0.5 to "
            f"{nx - 0.5:g} and {ny - 0.5:g}); the nearest pixel of the image, x={near_x:.0f}, "
            f"y={near_y:.0f}, is at RA={near.ra.deg:.6f}, Dec={near.dec.deg:.6f}"
        )
    sx, sy = image.pixel_scales_arcsec
    width, height = _size_pixels(roi.width, nx, sx), _size_pixels(roi.height, ny, sy)
    # as astropy's Cutout2D places a box of an even or odd size around a position
    x0, y0 = math.ceil(x - width / 2.0), math.ceil(y - height / 2.0)
    box = (max(0, x0), max(0, y0), min(nx, x0 + width), min(ny, y0 + height))
    requested = (
        width if roi.width is not None else box[2] - box[0],
        height if roi.height is not None else box[3] - box[1],
    )
    return Region((x, y), requested, box, (sx, sy))


def _outside(position: float, n: int, low: str, high: str) -> str:
    """How far a pixel position lies off an axis of ``n`` pixels, or '' when on it."""
    if position < -0.5:
        return f"{-0.5 - position:.2f} pixels beyond the {low} edge"
    if position >= n - 0.5:
        return f"{position - (n - 0.5):.2f} pixels beyond the {high} edge"
    return ""


def cut(image: SkyImage, box: tuple[int, int, int, int]) -> SkyImage:
    """The pixels ``box`` = (x0, y0, x1, y1) of ``image`` (a view, memory-mapped when the
    image is), with the WCS shifted to them and ``origin`` in the pixels originally loaded."""
    x0, y0, x1, y1 = box
    ny, nx = image.shape
    if not (0 <= x0 < x1 <= nx and 0 <= y0 < y1 <= ny):
        raise JobFailure(f"the region of interest {box} cannot be cut out of {nx} x {ny} pixels")
    return SkyImage(
        data=image.data[y0:y1, x0:x1],
        wcs=image.wcs.slice((slice(y0, y1), slice(x0, x1))),
        header=image.header,
        hdu_index=image.hdu_index,
        origin=(image.origin[0] + x0, image.origin[1] + y0),
    )


def cutout(image: SkyImage, roi: Roi) -> SkyImage:
    """The part of ``image`` inside ``roi``, trimmed at the image edges, with its own WCS
    (see :func:`region_of`). The result's ``origin`` is in the pixels of the image
    originally loaded."""
    return cut(image, region_of(image, roi).box)


def _size_pixels(extent: Extent | None, full: int, scale_arcsec: float) -> int:
    if extent is None:
        return 2 * full + 1  # covers the whole axis from any centre inside; trimmed
    if extent.is_pixels:
        return max(1, int(extent.value))
    return max(1, round(extent.arcsec / scale_arcsec))


def _coverage(image: SkyImage) -> str:
    """RA and Dec ranges (ICRS) of the image's edges, for error messages."""
    ny, nx = image.shape
    xs = np.array([-0.5, (nx - 1) / 2.0, nx - 0.5])
    gx, gy = np.meshgrid(xs, np.array([-0.5, (ny - 1) / 2.0, ny - 0.5]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        world = image.wcs.pixel_to_world(gx.ravel(), gy.ravel()).icrs
    ra = np.asarray(world.ra.deg)
    dec = np.asarray(world.dec.deg)
    good = np.isfinite(ra) & np.isfinite(dec)
    ra, dec = ra[good], dec[good]
    if ra.size == 0:
        return "no position on the sky that its WCS can give"
    if ra.max() - ra.min() > 180.0:  # the image straddles RA 0
        ra = np.where(ra > 180.0, ra - 360.0, ra)
    return (
        f"RA {ra.min() % 360.0:.4f} to {ra.max() % 360.0:.4f} deg, "
        f"Dec {dec.min():.4f} to {dec.max():.4f} deg"
    )
