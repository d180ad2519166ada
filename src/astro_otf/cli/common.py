"""What the command line and the terminal dashboard show the same way: the colour of each
UWS phase, and the local file name a downloaded result gets."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Mapping

from astro_otf.client import ResultRef

#: Colour of each UWS phase.
PHASE_STYLES: Mapping[str, str] = {
    "PENDING": "yellow",
    "QUEUED": "cyan",
    "EXECUTING": "blue",
    "COMPLETED": "green",
    "ERROR": "red",
    "ABORTED": "magenta",
}

#: File names of the results the service documents (README, "A completed job lists");
#: any other result is saved as ``<result id><extension of its media type>``.
RESULT_FILES: Mapping[str, str] = {
    "result": "catalogue.xml",
    "csv": "catalogue.csv",
    "json": "catalogue.json",
    "ds9": "catalogue.reg",
    "preview": "preview.png",
    "provenance": "provenance.json",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(text: str, fallback: str) -> str:
    """``text`` as one local path component: letters, digits, ``. _ -``, no leading dot."""
    return _UNSAFE.sub("_", text).lstrip(".") or fallback


def result_filename(result: ResultRef) -> str:
    """A safe local file name for one result."""
    name = RESULT_FILES.get(result.id)
    if name is None:
        ext = mimetypes.guess_extension(result.mime_type or "") or ""
        name = f"{result.id}{ext}"
    return safe_name(name, "result")
