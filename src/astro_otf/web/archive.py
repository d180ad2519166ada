"""A zip of a job's result files, written as it is sent: no temporary file, and only about
one chunk of a file in memory at a time (a ZIP written to a stream that cannot seek puts
each member's sizes after its data)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

#: Already compressed: stored as they are.
STORED_SUFFIXES = frozenset({".png", ".gz", ".zip", ".fz", ".jpg", ".jpeg"})
CHUNK = 1024 * 1024


class _Collector(io.RawIOBase):
    """A write-only, non-seekable file that keeps what is written until it is taken."""

    def __init__(self) -> None:
        super().__init__()
        self._held = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._held += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._held)
        self._held.clear()
        return out


def zip_stream(members: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """The bytes of a zip holding each ``(name in the zip, file)``, in pieces."""
    sink = _Collector()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in members:
            info = zipfile.ZipInfo.from_file(path, name)
            stored = path.suffix.lower() in STORED_SUFFIXES
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            large = info.file_size > 1024**3  # sizes past 4 GiB need ZIP64 fields up front
            with path.open("rb") as source, archive.open(info, "w", force_zip64=large) as out:
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                    piece = sink.take()
                    if piece:
                        yield piece
            piece = sink.take()
            if piece:
                yield piece
    yield sink.take()
