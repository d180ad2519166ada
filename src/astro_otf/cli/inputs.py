"""Which images an ``otf submit`` names, and what each is called.

It exists so that the one-image and the bulk paths of ``otf submit`` agree on how
arguments become sources (files, folders, glob patterns, references to files on the
service, a dataset's images) and on the name each source goes by (run ids, catalogue file
names, the summary table).
"""

from __future__ import annotations

import glob
from pathlib import Path

from astro_otf.cli.context import EXIT_HTTP, EXIT_USAGE, fail
from astro_otf.client import OTFClient, OTFClientError, image_reference

#: File name endings of the FITS images a folder argument contributes.
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


def stem(path: Path) -> str:
    """The file name without its FITS suffix (``magpis_G10.5+0.0.fits`` -> ``magpis_G10.5+0.0``)."""
    name = path.name
    for suffix in sorted(FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def expand_images(args: list[str]) -> list[Path | str]:
    """Files as given, every FITS file under a folder, the matches of glob patterns, and
    references to files on the service (``upload:ID``, ``sha256:HEX``) as strings."""
    found: list[Path | str] = []
    for arg in args:
        path = Path(arg)
        if image_reference(arg) is not None and not path.exists():
            found.append(arg)
        elif path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(FITS_SUFFIXES)
            )
            if not inside:
                fail(f"no FITS files (.fits, .fit, .fts) in folder {arg}", EXIT_USAGE)
            found += inside
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                fail(f"no file matches {arg}", EXIT_USAGE)
            found += matches
        else:
            fail(f"no such file: {arg}", EXIT_USAGE)
    unique = list(dict.fromkeys(found))
    return unique


def dataset_refs(client: OTFClient, name: str, pattern: str | None) -> list[Path | str]:
    """The references (``dataset:<name>/<path>``) of a dataset's complete images, those
    whose path or file name matches ``pattern`` when one is given."""
    import fnmatch

    try:
        images = client.dataset(name)["images"]
    except OTFClientError as exc:
        fail(exc.message, EXIT_HTTP if exc.status_code != 404 else EXIT_USAGE)
    refs: list[Path | str] = []
    for image in images:
        path = str(image.get("path", ""))
        if not image.get("complete") or not path:
            continue
        if pattern is None or any(
            fnmatch.fnmatchcase(p, pattern) for p in (path, path.rsplit("/", 1)[-1])
        ):
            refs.append(str(image.get("ref") or f"dataset:{name}/{path}"))
    if not refs:
        what = f" matching {pattern!r}" if pattern else ""
        fail(f"dataset {name} has no complete image{what}", EXIT_USAGE)
    return refs


def label_of(client: OTFClient, source: Path | str) -> str:
    """The file name a source goes by: a local file's, a dataset image's, or an upload's
    as stored."""
    if isinstance(source, Path):
        return source.name
    if source.startswith(("dataset:", "pending:")):
        return source.rsplit("/", 1)[-1].split(":", 1)[-1]
    if source.startswith("upload:"):
        try:
            return str(client.upload_info(source.removeprefix("upload:")).get("filename") or "")
        except OTFClientError:
            return ""
    return ""
