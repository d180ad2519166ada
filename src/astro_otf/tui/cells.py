"""How the dashboard's tables and detail panel show a job: phase colours, local times,
sizes, run times and the progress bar.

Kept apart from the Textual app so the app reads as layout and behaviour, and so these
small rules (shared in spirit with :mod:`astro_otf.cli.common`, whose phase colours and
progress text they use) can be read and tested on their own.
"""

from __future__ import annotations

from datetime import UTC, datetime

from rich.text import Text

from astro_otf.cli.common import PHASE_STYLES, progress_fraction, progress_text
from astro_otf.client import Job, Progress

#: Width of the text bar in the progress column.
_BAR = 10


def phase_text(phase: str) -> Text:
    """The phase in its colour."""
    return Text(phase, style=PHASE_STYLES.get(phase, ""))


def format_time(value: datetime | None) -> str:
    """A time in the local zone, to the second ("-" when unknown)."""
    if value is None:
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_size(size: int | None) -> str:
    """A byte count for people ("?" when unknown)."""
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def run_seconds(job: Job | None, now: datetime | None = None) -> float | None:
    """How long the job ran (so far, while it still runs)."""
    if job is None or job.start_time is None:
        return None
    end = job.end_time or (now or datetime.now(UTC))
    return (end - job.start_time).total_seconds()


def progress_cell(phase: str, progress: Progress | None, now: datetime | None = None) -> Text:
    """The progress column: a small bar and the stage, percentage and ETA of an active job
    (``queued 2/5`` while it waits); empty once it has ended."""
    if phase not in ("QUEUED", "EXECUTING"):
        return Text("")
    filled = round(_BAR * progress_fraction(phase, progress))
    text = Text("█" * filled, style=PHASE_STYLES.get(phase, ""))
    text.append("░" * (_BAR - filled), style="dim")
    text.append(" " + progress_text(phase, progress, now))
    return text
