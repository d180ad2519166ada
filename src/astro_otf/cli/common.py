"""What the command line and the terminal dashboard show the same way: the colour of each
UWS phase, how a job's progress reads, and the local file name a downloaded result gets."""

from __future__ import annotations

import math
import mimetypes
import re
from collections.abc import Mapping
from datetime import datetime

from astro_otf.client import Progress, ResultRef

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


def format_duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s`` or ``2h03m`` ("-" when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def progress_fraction(phase: str, progress: Progress | None) -> float:
    """How much of a job's bar is filled: its ``fraction`` while it runs, all of it once
    it has ended, nothing before."""
    if phase in ("COMPLETED", "ERROR", "ABORTED", "ARCHIVED"):
        return 1.0
    if progress is not None and progress.fraction is not None and not progress.is_queued:
        return progress.fraction
    return 0.0


def progress_text(phase: str, progress: Progress | None, now: datetime | None = None) -> str:
    """A job's state in a few words: ``queued 3/12``, ``inference 33% tiles 40/120
    ETA 12.0s``, or the phase in lower case when the service reports no progress."""
    if progress is None or phase not in ("QUEUED", "EXECUTING"):
        return phase.lower()
    words: list[str] = []
    if progress.is_queued:
        words.append("queued")
        if progress.position is not None:
            words.append(
                f"{progress.position}/{progress.of}" if progress.of else str(progress.position)
            )
    else:
        words.append(progress.stage)
        if progress.fraction is not None:
            words.append(f"{100 * progress.fraction:.0f}%")
        if progress.tiles_total:
            words.append(f"tiles {progress.tiles_done or 0}/{progress.tiles_total}")
    eta = progress.eta_seconds(now)
    if eta is not None:
        words.append(f"ETA {format_duration(eta)}")
    return " ".join(words)
