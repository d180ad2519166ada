"""Job folders: ``<data_dir>/jobs/<job_id>/{inputs,results,logs}``.

Every path is built here from a server-made job id and server-chosen file names; nothing a
client sends becomes part of a path.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check(name: str) -> str:
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"unsafe file name {name!r}")
    return name


class JobFolders:
    """Creates, finds and removes job folders under one root."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        return self.root / _check(job_id)

    def create(self, job_id: str) -> Path:
        base = self.job_dir(job_id)
        for sub in ("inputs", "results", "logs"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        return base

    def inputs(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "inputs"

    def results(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "results"

    def logs(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "logs"

    def staging(self, job_id: str) -> Path:
        """Where a run writes its results before they are moved into results/."""
        return self.job_dir(job_id) / "staging"

    def input_file(self, job_id: str, name: str) -> Path:
        return self.inputs(job_id) / _check(name)

    def result_file(self, job_id: str, name: str) -> Path:
        return self.results(job_id) / _check(name)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def clear_results(self, job_id: str) -> None:
        for sub in (self.results(job_id), self.staging(job_id)):
            shutil.rmtree(sub, ignore_errors=True)
        # a deleted job's folder stays deleted (its batch may end after the DELETE)
        with contextlib.suppress(FileNotFoundError):
            self.results(job_id).mkdir(exist_ok=True)
