"""The service's own secret key (the web page's CSRF tokens are signed with it), kept in the
data folder so that restarts and replicas sharing the folder agree on it."""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

__all__ = ["data_secret"]

SECRET_FILE = "web-secret"
SECRET_BYTES = 32


@functools.cache
def data_secret(data_dir: Path) -> bytes:
    """The key in ``data_dir/web-secret``: 32 random bytes, made on first use (by a link of
    a complete file, so that two processes starting together agree on one)."""
    path = data_dir / SECRET_FILE
    for _ in range(5):
        try:
            value = path.read_bytes()
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(SECRET_BYTES))
            try:
                os.link(temp, path)
            except FileExistsError:
                pass
            finally:
                temp.unlink()
            continue
        if len(value) >= SECRET_BYTES:
            return value
    raise RuntimeError(f"the secret {path} could not be read")
