"""The data folder's lock: one server (or one set of PostgreSQL replicas) per data folder.

A server that recovers jobs at start-up (re-queues those left EXECUTING, removes orphan
folders) must be the only one working in the folder. It takes an ``flock`` on
``<data_dir>/server.lock`` before it touches anything, and keeps it for its whole life; the
kernel frees it when the process ends, however it ends (kill -9 included), so there is no
stale lock to clean up.

- SQLite (the default): the lock is exclusive. A second server on the same folder (a second
  ``make run``, with the port taken or not) refuses to start, naming the folder and the
  first server's pid, before it has recovered, migrated or changed anything.
- PostgreSQL: several replicas share one data folder and one database by design; which of
  them runs jobs (and recovers) is decided by the leader's advisory lock in the database
  (:mod:`astro_otf.service.replicas`). They take the lock shared: replicas start side by
  side, while a SQLite server cannot start on a folder that replicas serve, nor the reverse.

On a file system without ``flock`` support the server says so in its log and runs without
the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import ClassVar

__all__ = ["DataFolderBusy", "DataFolderLock"]

log = logging.getLogger(__name__)

LOCK_NAME = "server.lock"


class DataFolderBusy(Exception):
    """Another server holds the data folder."""


class DataFolderLock:
    """An ``flock`` on the data folder's lock file, exclusive or shared."""

    #: locks held by this process, by folder: create_app's lifespan reuses the one that
    #: run_server took before starting uvicorn (a second flock of the same file from the same
    #: process would conflict with the first)
    _held: ClassVar[dict[Path, DataFolderLock]] = {}

    def __init__(self, data_dir: Path, *, shared: bool) -> None:
        self.data_dir = data_dir.resolve()
        self.path = self.data_dir / LOCK_NAME
        self.shared = shared
        self._fd: int | None = None
        self._users = 0

    @classmethod
    def acquire(cls, data_dir: Path, *, shared: bool) -> DataFolderLock:
        """Take the lock (or, when this process holds it already, share that hold).
        Raises DataFolderBusy, with one line naming the folder and the other server."""
        key = data_dir.resolve()
        held = cls._held.get(key)
        if held is None:
            held = cls(key, shared=shared)
            held._take()
            cls._held[key] = held
        held._users += 1
        return held

    @property
    def exclusive(self) -> bool:
        """Whether this process holds the folder alone (an exclusive flock is held)."""
        return self._fd is not None and not self.shared

    def release(self) -> None:
        """Give up this hold. When the process's last user of the lock releases it, the
        flock is freed (an exclusive holder first empties the file of its pid)."""
        self._users -= 1
        if self._users > 0:
            return
        self._held.pop(self.data_dir, None)
        if self._fd is not None:
            if not self.shared:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)
            os.close(self._fd)  # frees the flock
            self._fd = None

    def _take(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataFolderBusy(self._busy_message(holder)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log.warning(
                "the file system of %s does not support flock (%s): this server runs without "
                "the data folder's lock; make sure no other server uses the folder",
                self.data_dir,
                exc,
            )
            os.close(fd)
            return
        # Only an exclusive holder writes who it is; shared holders (replicas) wipe what a
        # killed exclusive holder left, so the file never names a server that is gone.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            if not self.shared:
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def _busy_message(self, holder: tuple[int, str] | None) -> str:
        if holder is not None:
            pid, host = holder
            who = f"another astro-otf server (pid {pid} on {host}) already serves"
        else:
            who = "other astro-otf servers (replicas on PostgreSQL) already serve"
        alone = " alone (on SQLite)" if self.shared and holder is not None else ""
        return (
            f"{who} the data folder {self.data_dir}{alone}: this server did not start and "
            "changed nothing. Stop the other server first, or give this one another "
            "OTF_DATA_DIR."
        )


def _read_holder(fd: int) -> tuple[int, str] | None:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
        return (int(text[0]), text[1] if len(text) > 1 else "?") if text else None
    except (OSError, ValueError):
        return None
