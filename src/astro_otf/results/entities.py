"""A file as the provenance names it: its role, name, sha256, size and media type.

Apps describe the model files that ran (ONNX file, manifest, a command app's program and
environment) and the result writers describe the input image and every output the same way;
the provenance record lists them all. The description lives apart from the PROV writer
(:mod:`astro_otf.results.provenance`) so that an app can make one without importing the
writers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FileEntity", "file_entity"]


@dataclass(frozen=True)
class FileEntity:
    """A file the job used or generated.

    ``role`` says what it was for ("image", "model", "result", ...); ``attributes`` holds
    facts worth keeping with it: key FITS header cards (TELESCOP, BUNIT, BMAJ, CTYPE1,
    CRVAL1, NAXIS1, ...) for an input image, the manifest facts (format, precision, tile
    size, ...) for a model file. Each becomes an ``otf:meta.<key>`` attribute (a key with
    characters other than ASCII letters, digits, ``_ . -`` is cleaned and gets a hash
    suffix, e.g. ``HIERARCH ESO X`` -> ``otf:meta.HIERARCH_ESO_X-dc59ccb1``).
    """

    role: str
    name: str
    sha256: str
    size: int
    mime_type: str
    attributes: Mapping[str, str] = field(default_factory=dict)


def file_entity(
    role: str,
    path: Path,
    mime_type: str,
    attributes: Mapping[str, str] | None = None,
    *,
    sha256: str | None = None,
) -> FileEntity:
    """A file's provenance entity: its name, sha256 and size. ``sha256`` is given when the
    bytes were already checked against it (a model file, verified when its session loaded),
    so the file is not read again for every job."""
    if sha256 is None:
        with path.open("rb") as fh:
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
    return FileEntity(
        role=role,
        name=path.name,
        sha256=sha256,
        size=path.stat().st_size,
        mime_type=mime_type,
        attributes=dict(attributes or {}),
    )
