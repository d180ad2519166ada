"""Job folders: ``<data_dir>/jobs/<job_id>/{inputs,results,logs}``, and
``staging/<run token>/`` where one run of the job writes its results before the service moves
them into ``results/`` (only while that run still owns the job).

Every path is built here from a server-made job id and server-chosen file names; nothing a
client sends becomes part of a path.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["JobFolders"]

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
        """The job's folder (ValueError for a job id unfit to be a file name)."""
        return self.root / _check(job_id)

    def create(self, job_id: str) -> Path:
        """Make the job's folder with its ``inputs``, ``results`` and ``logs``; the folder."""
        base = self.job_dir(job_id)
        for sub in ("inputs", "results", "logs"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        return base

    def inputs(self, job_id: str) -> Path:
        """Where the job's input files are (the image it was given)."""
        return self.job_dir(job_id) / "inputs"

    def results(self, job_id: str) -> Path:
        """Where the job's published results are."""
        return self.job_dir(job_id) / "results"

    def logs(self, job_id: str) -> Path:
        """Where the job's log (``job.log``) is kept."""
        return self.job_dir(job_id) / "logs"

    def staging(self, job_id: str, run_token: str | None = None) -> Path:
        """Where a run writes its results before they are moved into results/: one folder
        per run (``run_token``), under the job's ``staging/``."""
        base = self.job_dir(job_id) / "staging"
        return base if run_token is None else base / _check(run_token)

    def input_file(self, job_id: str, name: str) -> Path:
        """The path of input file ``name`` (ValueError for an unsafe name)."""
        return self.inputs(job_id) / _check(name)

    def result_file(self, job_id: str, name: str) -> Path:
        """The path of result file ``name`` (ValueError for an unsafe name)."""
        return self.results(job_id) / _check(name)

    def remove(self, job_id: str) -> None:
        """Delete the job's folder and everything in it (a missing one is no error)."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def publish(self, job_id: str, run_token: str, filenames: Iterable[str]) -> None:
        """Move a run's result files from its staging folder into results/ (each rename is
        atomic; results/ is emptied first of anything an earlier run left). Raises OSError
        (FileNotFoundError for a missing file) without having listed anything partial: the
        caller's transaction is then not committed."""
        staging, final = self.staging(job_id, run_token), self.results(job_id)
        names = [_check(n) for n in filenames]
        missing = [n for n in names if not (staging / n).is_file()]
        if missing:
            raise FileNotFoundError(f"run {run_token} did not leave {', '.join(missing)}")
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
        for name in names:
            os.replace(staging / name, final / name)
        # this run owns the job: whatever any run left in staging/ is of no more use
        shutil.rmtree(self.staging(job_id), ignore_errors=True)

    def discard_run(self, job_id: str, run_token: str) -> None:
        """Forget what one run wrote (its staging folder, and ``staging/`` once empty)."""
        shutil.rmtree(self.staging(job_id, run_token), ignore_errors=True)
        with contextlib.suppress(OSError):  # not empty: another run is writing there
            self.staging(job_id).rmdir()

    def idle_folders(self, min_age_s: float) -> list[str]:
        """Names of job folders in which nothing changed for ``min_age_s`` seconds (the
        folder, its subfolders and the files of ``inputs/``: an upload streaming in keeps
        its folder young). Names that are not job ids are left out."""
        now = time.time()
        idle = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if not entry.is_dir(follow_symlinks=False) or not _SAFE_NAME.match(entry.name):
                    continue
                if now - _newest_change(Path(entry.path)) >= min_age_s:
                    idle.append(entry.name)
        return idle

    def clear_results(self, job_id: str) -> None:
        """Remove the job's results and every run's staging, leaving ``results/`` empty
        (after a failed publish or reuse: the job serves nothing partial); the folder of a
        deleted job is not made again."""
        for sub in (self.results(job_id), self.staging(job_id)):
            shutil.rmtree(sub, ignore_errors=True)
        # a deleted job's folder stays deleted (its batch may end after the DELETE)
        with contextlib.suppress(FileNotFoundError):
            self.results(job_id).mkdir(exist_ok=True)


def _newest_change(folder: Path) -> float:
    """The latest modification time of the folder, its direct subfolders and their files."""
    newest = 0.0
    with contextlib.suppress(FileNotFoundError):
        newest = folder.stat().st_mtime
        for sub in os.scandir(folder):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, sub.stat(follow_symlinks=False).st_mtime)
                if sub.is_dir(follow_symlinks=False):
                    for item in os.scandir(sub.path):
                        with contextlib.suppress(FileNotFoundError):
                            newest = max(newest, item.stat(follow_symlinks=False).st_mtime)
    return newest
