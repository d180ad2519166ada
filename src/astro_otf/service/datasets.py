"""Datasets: images an operator keeps on the server's disk, which jobs name instead of
uploading them (``IMAGE=dataset:<name>/<path>``).

An operator declares each dataset in the configuration (a name, a folder or a glob, a
description). This module lists a dataset's images with what their headers say (shape, beam,
frequency, object, telescope: read once per file version, cached by path, size and mtime),
and turns a job's reference into a file on disk, refusing anything that would reach outside
the dataset: an absolute path, ``..``, a symbolic link leading out, a file the dataset's glob
does not match. It also says whether a file is complete, so that a job waiting for a file
still being copied in (:mod:`astro_otf.service.held`) does not take half of it.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astro_otf.config import DatasetConfig
from astro_otf.domain.errors import NotFound, ParameterError
from astro_otf.imaging.fits import UploadRefused, declared_image, stream_compression
from astro_otf.imaging.identity import _image_header, describe_header

__all__ = ["DATASET_PREFIX", "Dataset", "DatasetFile", "Datasets", "glob_regex", "incomplete"]

log = logging.getLogger(__name__)

#: What a folder dataset offers: its files with these endings, in every subfolder.
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")
#: Header facts kept in memory, at most (one entry per file version).
FACTS_CACHE = 20_000
#: Images listed per request, at most (the listing says when it was cut).
MAX_LISTED = 10_000
#: The reference's prefix in IMAGE.
DATASET_PREFIX = "dataset:"


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regular expression for a relative glob: ``*`` and ``?`` within one path segment,
    ``[...]`` a class, ``**/`` any number of folders (none included)."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def _split_glob(path: str) -> tuple[Path, str | None]:
    """The folder a configured path names and the glob under it (None: a plain folder)."""
    if not glob.has_magic(path):
        return Path(path).expanduser(), None
    parts = Path(path).expanduser().parts
    first = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    folder = Path(*parts[:first]) if first else Path(".")
    return folder, "/".join(parts[first:])


@dataclass(frozen=True)
class Dataset:
    """One configured dataset: its files are those under ``root`` that ``pattern`` matches
    (every FITS file when it has none)."""

    name: str
    root: Path
    pattern: str | None
    description: str
    configured: str

    @classmethod
    def from_config(cls, config: DatasetConfig) -> Dataset:
        """The dataset an operator declared: its path split into the folder (resolved,
        links followed) and the glob under it."""
        folder, pattern = _split_glob(config.path)
        return cls(
            config.name,
            Path(os.path.realpath(folder)),
            pattern,
            config.description,
            config.path,
        )

    def matches(self, relative: str) -> bool:
        """Whether a path relative to ``root`` (``/``-separated) is one of the dataset's
        files by name: it fits the glob, or is a FITS file when there is none."""
        if self.pattern is None:
            return relative.lower().endswith(FITS_SUFFIXES)
        return _regex(self.pattern).fullmatch(relative) is not None

    def inside(self, real: str) -> bool:
        """Whether a resolved path (links followed) lies under ``root``: a link must not
        lead a job out of the dataset."""
        root = str(self.root)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def files(self) -> Iterator[tuple[str, Path]]:
        """(relative path, path) of each of the dataset's files now on disk, in name order;
        links leading outside the dataset are left out."""
        for folder, dirs, names in os.walk(self.root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder) / name
                relative = path.relative_to(self.root).as_posix()
                if not self.matches(relative):
                    continue
                if path.is_symlink() and not self.inside(os.path.realpath(path)):
                    continue
                if path.is_file():
                    yield relative, path


_REGEXES: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    found = _REGEXES.get(pattern)
    if found is None:
        found = _REGEXES[pattern] = glob_regex(pattern)
    return found


@dataclass(frozen=True)
class DatasetFile:
    """A file a job names in a dataset; it may not exist yet."""

    dataset: Dataset
    relative: str
    path: Path

    @property
    def ref(self) -> str:
        """The reference a job gives as IMAGE: ``dataset:<name>/<relative path>``."""
        return f"{DATASET_PREFIX}{self.dataset.name}/{self.relative}"


def incomplete(path: Path) -> str | None:
    """Why the file at ``path`` cannot be taken yet (missing, empty, a FITS header not yet
    whole, fewer bytes than its header declares), or None when it is complete. A compressed
    file, or one that is not an image at all, is taken as it is: its job says what is
    wrong with it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "the file is not there yet"
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror or exc})"
    if not path.is_file():
        return "it is not a regular file"
    if size == 0:
        return "the file is empty so far"
    try:
        if stream_compression(path) is not None:
            return None
        image = declared_image(path)
    except UploadRefused:
        return None
    except OSError as exc:
        return f"the file cannot be read ({exc.strerror or exc})"
    if image is None:
        return f"its {size} bytes do not hold a whole FITS header yet"
    need = image.data_offset + image.data_bytes
    if size < need:
        return f"it holds {size} of the {need} bytes its header declares"
    return None


def image_facts(path: Path) -> dict[str, Any]:
    """Object, telescope, frequency, shape and beam from the image header of ``path``
    (pixels never read); ValueError when it is not a FITS image."""
    import warnings

    from astropy.io import fits

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            hdul = fits.open(path, memmap=True, lazy_load_hdus=True)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"not a FITS file: {first}") from None
        try:
            header = _image_header(hdul)
            if header is None:
                raise ValueError("the FITS file holds no image HDU")
            facts = describe_header(header)
            facts["beam"] = _beam(header)
        finally:
            hdul.close()
    return facts


def _beam(header: Any) -> dict[str, float] | None:
    """The restoring beam (BMAJ, BMIN in degrees; BPA), in arcseconds and degrees."""
    try:
        major, minor = float(header["BMAJ"]), float(header["BMIN"])
    except (KeyError, TypeError, ValueError):
        return None
    try:
        pa = float(header.get("BPA", 0.0))
    except (TypeError, ValueError):
        pa = 0.0
    return {
        "major_arcsec": round(major * 3600.0, 6),
        "minor_arcsec": round(minor * 3600.0, 6),
        "pa_deg": round(pa, 6),
    }


class Datasets:
    """The configured datasets, their images and the references jobs make to them."""

    def __init__(self, configs: list[DatasetConfig]) -> None:
        self.by_name = {c.name: Dataset.from_config(c) for c in configs}
        self._facts: OrderedDict[tuple[str, int, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        for d in self.by_name.values():
            if not d.root.is_dir():
                log.warning("dataset %s: folder %s does not exist (yet)", d.name, d.root)

    def get(self, name: str) -> Dataset:
        """The dataset called ``name``; NotFound (listing the known ones) otherwise."""
        found = self.by_name.get(name)
        if found is None:
            raise NotFound(f"no dataset named {name[:64]!r}; datasets: {self._known()}")
        return found

    def _known(self) -> str:
        return ", ".join(sorted(self.by_name)) or "none (the operators have declared none)"

    def facts(self, path: Path) -> dict[str, Any]:
        """:func:`image_facts` of the file, read once per (path, size, mtime)."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            found = self._facts.get(key)
            if found is not None:
                self._facts.move_to_end(key)
                return found
        try:
            found = image_facts(path)
        except (ValueError, OSError) as exc:
            found = {"error": str(exc)}
        with self._lock:
            self._facts[key] = found
            if len(self._facts) > FACTS_CACHE:
                self._facts.popitem(last=False)
        return found

    def images(self, name: str) -> tuple[list[dict[str, Any]], bool]:
        """The dataset's images with their sizes and header facts, and whether the list was
        cut at :data:`MAX_LISTED`."""
        dataset = self.get(name)
        out: list[dict[str, Any]] = []
        for relative, path in dataset.files():
            if len(out) >= MAX_LISTED:
                return out, True
            try:
                st = path.stat()
            except OSError:
                continue
            why = incomplete(path)
            entry: dict[str, Any] = {
                "path": relative,
                "ref": f"{DATASET_PREFIX}{name}/{relative}",
                "bytes": st.st_size,
                "complete": why is None,
            }
            if why is None:
                entry.update(self.facts(path))
            else:
                entry["incomplete"] = why
            out.append(entry)
        return out, False

    def resolve(self, ref: str) -> DatasetFile:
        """The file ``dataset:<name>/<path>`` names, which need not exist yet. Raises
        ParameterError (IMAGE) for an unknown dataset, an absolute path, ``..``, a link
        leading outside the dataset, a path the dataset's glob does not match, or a folder."""
        shown = ref if len(ref) <= 120 else ref[:120] + "..."
        body = ref.strip()
        if body.lower().startswith(DATASET_PREFIX):
            body = body[len(DATASET_PREFIX) :]
        name, sep, relative = body.partition("/")
        if not sep or not name or not relative:
            raise ParameterError(
                "image", f"{shown!r}: name a file as dataset:<dataset>/<path in the dataset>"
            )
        dataset = self.by_name.get(name)
        if dataset is None:
            raise ParameterError(
                "image", f"{shown!r}: no dataset named {name[:64]!r}; datasets: {self._known()}"
            )
        if any(ord(c) < 32 for c in relative) or "\x7f" in relative:
            raise ParameterError("image", f"{shown!r}: the path holds control characters")
        if relative.startswith(("/", "\\", "~")):
            raise ParameterError(
                "image", f"{shown!r}: the path must be relative to the dataset, not absolute"
            )
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ParameterError("image", f"{shown!r}: '..' is not allowed in a dataset path")
        if not parts:
            raise ParameterError("image", f"{shown!r}: name a file in dataset {name!r}")
        clean = "/".join(parts)
        if not dataset.matches(clean):
            wanted = dataset.pattern or "a FITS file (" + ", ".join(FITS_SUFFIXES) + ")"
            raise ParameterError(
                "image", f"{shown!r}: dataset {name!r} holds only {wanted}; {clean!r} is not one"
            )
        path = dataset.root / clean
        if not dataset.inside(os.path.realpath(path)):
            raise ParameterError(
                "image", f"{shown!r}: the path leads outside dataset {name!r} (a symbolic link)"
            )
        if path.is_dir():
            raise ParameterError("image", f"{shown!r} is a folder; name a file in it")
        return DatasetFile(dataset, clean, path)
