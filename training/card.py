"""The model card's generated sections, shared by the exporter and the science benchmark.

Why: MODEL_CARD.md is written by hand except for the sections the tools measure (training
facts from ``training.export``, evaluation tables from ``bench/science.py``); each lives
between ``<!-- name:begin -->`` and ``<!-- name:end -->`` lines, so a rerun replaces its own
section and nothing else.
"""

from __future__ import annotations

import platform
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def check_section(text: str, name: str) -> None:
    """Raise ValueError unless ``text`` holds the section's two marker lines, in order."""
    begin, end = markers(name)
    lines = [line.strip() for line in text.splitlines()]
    if lines.count(begin) != 1 or lines.count(end) != 1 or lines.index(begin) > lines.index(end):
        raise ValueError(f"needs one line {begin} and, after it, one line {end}")


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the lines between the section's markers replaced by ``body``."""
    check_section(text, name)
    begin, end = markers(name)
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for the figures' context."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
