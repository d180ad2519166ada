"""UploadService: the policy of stored uploads (POST /uploads), which jobs name instead of
sending the same image again (``IMAGE=upload:<id>`` or ``IMAGE=sha256:<hex>``).

* Content-addressed: a file is stored once, at ``data_dir/uploads/<sha256[:2]>/<sha256>``,
  however many owners upload it; each owner's upload of it is one record, and the file is
  removed when the last record naming it goes. The sha256 is that of the FITS file as stored:
  of the bytes sent, or, for a gzip/bzip2/xz upload, of the file it inflates to.
* Checked once, at upload, from the header: a file that is not a FITS image (a PNG, a FITS
  table) is refused with a 400 naming the field, not found out by a job later.
* Streamed: the file part goes to a temporary file in ``uploads/.incoming`` (the same file
  system, so that it is renamed into place) while a thread hashes it; the upload limit and the
  owner's quota are enforced as it arrives (413). Header checks run in a thread as well.
* Owner-scoped in token mode (another owner's upload is answered like an unknown one).
* Kept ``upload_days`` from its last use: storing the same content again, or a job naming the
  upload (:meth:`UploadService.resolve`), moves its expiry to ``upload_days`` from then. Reading
  or listing it does not. Expired uploads are removed by :meth:`UploadService.expire` (the
  reaper's pass), and are answered as unknown from the moment they expire.

A record is written before its file is renamed into place, and a file is removed only once no
record names it, so that a deletion racing an upload of the same content never leaves a record
without its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import queue
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

import sqlalchemy
from astropy.io import fits

from astro_otf.config import Settings
from astro_otf.domain.errors import NotFound, ParameterError, ParameterTooLarge
from astro_otf.domain.forms import Form, Sink
from astro_otf.domain.job import is_job_id, new_job_id
from astro_otf.imaging.fits import (
    STREAM_COMPRESSIONS,
    UploadRefused,
    check_upload,
    declared_image,
    stream_compression,
)
from astro_otf.imaging.identity import describe_image, sanitise_filename
from astro_otf.service.threads import in_thread
from astro_otf.store import uploads as store
from astro_otf.store.uploads import Holding, UploadRecord

__all__ = ["StoredUpload", "UnknownUpload", "UploadService"]

log = logging.getLogger(__name__)

#: The multipart file fields an upload's file may come in.
FILE_FIELDS = ("file", "image")
#: Text fields an upload may carry besides its file (the web page's CSRF token).
TEXT_FIELDS = ("csrf_token",)
#: Folder under ``data_dir/uploads`` where files stream in before they are named.
INCOMING = ".incoming"
#: Slack on the request body's size over the file and text limits: multipart boundaries.
BODY_SLACK = 64 * 1024
#: Chunks an upload's hashing thread may lag behind the network before a write waits.
HASH_QUEUE_CHUNKS = 64
#: A file left in ``.incoming`` (an upload cut short by a crash), or a stored file no record
#: names, is removed once it has not changed for this long.
STALE_AFTER_S = 3600.0
#: Seconds between two sweeps of the upload folders for such files.
SWEEP_EVERY_S = 3600.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1024 * 1024

#: What a file that is not FITS is, by its first bytes (for the error message).
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x89HDF", "an HDF5 file"),
    (b"CDF\x01", "a netCDF file"),
)


def _utcnow() -> datetime:
    """Now, as an aware UTC time (upload times are compared with the store's)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredUpload:
    """An owner's upload: its record and the path of its stored file."""

    upload_id: str
    sha256: str
    path: Path
    filename: str
    bytes: int
    created: datetime
    expires: datetime
    owner: str | None
    header: dict[str, Any]


class UnknownUpload(ParameterError):
    """A job names an upload that does not exist, expired, or is another owner's."""


def _size_text(size: int) -> str:
    return f"{size} bytes ({size / 1024**2:.1f} MiB)"


class _Incoming:
    """One file part streaming into a temporary file, hashed by a thread as it arrives
    (the event loop only hands it each chunk; it waits only if the hash falls more than
    :data:`HASH_QUEUE_CHUNKS` chunks behind the network)."""

    def __init__(
        self,
        path: Path,
        field: str,
        filename: str,
        *,
        limit: int,
        quota: int,
        held: Holding,
    ) -> None:
        self.path = path
        self.field = field
        self.filename = filename
        self.limit = limit
        self.quota = quota
        self.held = held
        self.written = 0
        self.head = b""
        self._hash = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=HASH_QUEUE_CHUNKS)
        self._file = open(path, "xb")  # noqa: SIM115 - closed by close(), from read_form
        self._thread = threading.Thread(target=self._hash_chunks, name="otf-upload-hash")
        self._thread.daemon = True
        self._thread.start()
        self._closed = False

    def _hash_chunks(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._hash.update(chunk)

    def write(self, chunk: bytes) -> int:
        self.written += len(chunk)
        if self.written > self.limit:
            raise ParameterTooLarge(
                self.field,
                f"is larger than this service's upload limit of {_size_text(self.limit)} "
                "(max_upload_bytes): cut a region of the image, or ask the operators",
            )
        if len(self.head) < 8:
            self.head = (self.head + chunk)[:8]
        self._check_quota()
        self._file.write(chunk)
        self._chunks.put(chunk)
        return len(chunk)

    def _check_quota(self) -> None:
        """Stop as soon as the file cannot fit in the owner's quota. Not while it may be a
        compressed stream (its stored size is known once inflated), nor while it may still
        be content the owner holds already (no bigger than their largest upload), which
        would be no new bytes."""
        if len(self.head) < 8 or self.written <= self.held.largest:
            return
        if self.held.bytes + self.written <= self.quota:
            return
        if any(self.head.startswith(magic) for magic, _ in STREAM_COMPRESSIONS):
            return
        raise _over_quota(self.field, self.quota, self.held, self.written, so_far=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._file.close()
        self._chunks.put(None)

    def finish(self) -> str:
        """Close the file and wait for its hash (blocking: run in a thread)."""
        self.close()
        self._thread.join()
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and remove the temporary file, if still there (blocking)."""
        self.close()
        self._thread.join()
        self.path.unlink(missing_ok=True)


def _over_quota(
    field: str, quota: int, held: Holding, size: int, *, so_far: bool
) -> ParameterTooLarge:
    """The 413 for an upload that does not fit in the owner's quota: what it holds, what
    the file takes (``so_far``: at least the bytes received until now) and what to do."""
    takes = f"takes at least {size} bytes" if so_far else f"takes {size} bytes"
    return ParameterTooLarge(
        field,
        f"does not fit in your upload quota (upload_quota_bytes) of {_size_text(quota)}: you "
        f"hold {_size_text(held.bytes)} in {held.count} upload(s) and this file {takes}; "
        "delete uploads you no longer need (DELETE /uploads/{upload_id}), or ask the operators",
    )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _not_an_image(path: Path) -> str:
    """Why a file that :func:`declared_image` found no image in is refused."""
    with open(path, "rb") as f:
        head = f.read(80)
    if not head.startswith(b"SIMPLE  ="):
        what = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
        return (
            f"is not a FITS file{f' (it is {what})' if what else ''}: send a FITS image "
            "(.fits, optionally gzip-, bzip2- or xz-compressed)"
        )
    kinds: list[str] = []
    try:
        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            for index, hdu in enumerate(hdul):
                if index >= 20:
                    kinds.append("...")
                    break
                kind = type(hdu).__name__.lstrip("_")
                kinds.append(f"{kind} {hdu.name!r}" if hdu.name else kind)
    except Exception:
        return (
            "cannot be read as a FITS file (a damaged or truncated header?): check it, e.g. "
            "with fitsverify, and upload it again"
        )
    listing = ", ".join(kinds) or "none"
    return (
        f"is a FITS file with no image in it (HDUs: {listing}): a table or an empty HDU cannot "
        "be searched for sources; send a FITS image"
    )


def _examine(
    path: Path, field: str, max_pixels: int, max_bytes: int
) -> tuple[str | None, int, dict[str, Any]]:
    """Check an upload is a FITS image (blocking: run in a thread). A compressed upload is
    inflated in place; returns the sha256 of the inflated file (None when the file was not
    compressed), the stored size and the image's description."""
    compressed = stream_compression(path) is not None
    try:
        check_upload(path, max_pixels=max_pixels, max_bytes=max_bytes)
        image = declared_image(path)
    except UploadRefused as exc:
        if exc.too_large:
            raise ParameterTooLarge(field, exc.message) from None
        raise ParameterError(field, exc.message) from None
    if image is None:
        raise ParameterError(field, _not_an_image(path))
    try:
        header = describe_image(path)
    except ValueError as exc:
        raise ParameterError(field, f"cannot be read as a FITS image: {exc}") from None
    size = path.stat().st_size
    return (_sha256_file(path) if compressed else None), size, header


class UploadService:
    """The stored uploads of every owner: receiving, checking and storing files
    (content-addressed under ``data_dir/uploads``), resolving the references jobs make to them,
    deleting and expiring them (see the module's docstring)."""

    def __init__(self, settings: Settings, engine: sqlalchemy.Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.root = Path(settings.data_dir) / "uploads"
        self._check_owner = settings.auth_mode != "anonymous"  # token and OIDC modes
        #: Record-and-file changes of this process take turns (a deletion's "is this content
        #: still named?" against an upload of that content).
        self._lock = asyncio.Lock()
        self._last_sweep: float | None = None

    # -- naming ---------------------------------------------------------------------------

    def _key(self, owner: str | None) -> str:
        """The owner column's value for this caller: everyone shares one in anonymous mode."""
        if not self._check_owner or owner is None:
            return store.NO_OWNER
        return owner

    def _path_of(self, sha256: str) -> Path:
        """Where the file of content ``sha256`` is stored (shared by every record of it)."""
        return self.root / sha256[:2] / sha256

    @property
    def _lifetime(self) -> timedelta:
        """How long an upload is kept after its last use (``upload_days``)."""
        return timedelta(days=self.settings.upload_days)

    @property
    def body_limit(self) -> int:
        """The most bytes an upload request's body may take: the file, its text fields and
        the multipart framing."""
        return self.settings.max_upload_bytes + self.settings.max_form_bytes + BODY_SLACK

    def _stored(self, record: UploadRecord) -> StoredUpload:
        return StoredUpload(
            upload_id=record.upload_id,
            sha256=record.sha256,
            path=self._path_of(record.sha256),
            filename=record.filename,
            bytes=record.bytes,
            created=record.created,
            expires=record.expires,
            owner=record.owner or None,
            header=dict(record.header),
        )

    def _visible(self, record: UploadRecord | None, owner: str | None) -> UploadRecord | None:
        if record is None or record.owner != self._key(owner) or record.expires <= _utcnow():
            return None
        return record

    # -- storing --------------------------------------------------------------------------

    def check_declared_length(self, content_length: str | None) -> None:
        """Refuse at once (413) a request whose declared body cannot hold a file under the
        upload limit."""
        text = (content_length or "").strip()
        if text.isascii() and text.isdigit() and int(text) > self.body_limit:
            raise ParameterTooLarge(
                "file",
                f"the request declares {int(text)} bytes, more than this service's upload "
                f"limit of {_size_text(self.settings.max_upload_bytes)} (max_upload_bytes) "
                "allows: cut a region of the image, or ask the operators",
            )

    async def receive(
        self,
        owner: str | None,
        read: Callable[[Sink], Awaitable[Form]],
        *,
        content_length: str | None = None,
    ) -> tuple[StoredUpload, bool]:
        """Store the file that ``read`` streams into the sink it is given (one multipart
        file field, FILE or IMAGE; ``read`` may take :attr:`body_limit` bytes). Returns the
        upload and whether it is new (False: the owner already held this content, whose
        record is returned, its expiry extended). ``content_length``: the request's header,
        refused at once when it is over the limit."""
        self.check_declared_length(content_length)
        key = self._key(owner)
        held = await in_thread(store.holding, self.engine, key)
        incoming = self.root / INCOMING
        await in_thread(incoming.mkdir, parents=True, exist_ok=True)
        parts: list[_Incoming] = []

        def sink(name: str, filename: str) -> IO[bytes] | None:
            if name not in FILE_FIELDS:
                raise ParameterError(
                    name, "is not a field of an upload: send the FITS image as the file FILE"
                )
            if parts:
                raise ParameterError(name, "an upload is one file: send one file field, FILE")
            part = _Incoming(
                incoming / f"{secrets.token_hex(8)}.part",
                name,
                sanitise_filename(filename),
                limit=self.settings.max_upload_bytes,
                quota=self.settings.upload_quota_bytes,
                held=held,
            )
            parts.append(part)
            return cast(IO[bytes], part)

        try:
            form = await read(sink)
            for name in form.fields:
                if name in FILE_FIELDS:
                    raise ParameterError(
                        name, "must be a file part (with a filename), holding the FITS image"
                    )
                if name not in TEXT_FIELDS:
                    raise ParameterError(
                        name, "is not a field of an upload: send the FITS image as the file FILE"
                    )
            if not parts:
                raise ParameterError(
                    "file", "is missing: send the FITS image as the multipart file field FILE"
                )
            part = parts[0]
            if part.written == 0:
                raise ParameterError(part.field, "is empty (0 bytes): send a FITS image")
            sha256 = await in_thread(part.finish)
            inflated, size, header = await in_thread(
                _examine,
                part.path,
                part.field,
                self.settings.max_image_pixels,
                self.settings.max_upload_bytes,
            )
            sha256 = inflated or sha256
            return await self._keep(key, part, sha256, size, header)
        finally:
            for part in parts:
                await in_thread(part.discard)

    async def _keep(
        self, key: str, part: _Incoming, sha256: str, size: int, header: dict[str, Any]
    ) -> tuple[StoredUpload, bool]:
        target = self._path_of(sha256)
        async with self._lock:
            now = _utcnow()
            existing = await in_thread(store.find_content, self.engine, key, sha256)
            if existing is None:
                held = await in_thread(store.holding, self.engine, key)
                quota = self.settings.upload_quota_bytes
                if held.bytes + size > quota:
                    raise _over_quota(part.field, quota, held, size, so_far=False)
                record = UploadRecord(
                    upload_id=new_job_id(),
                    owner=key,
                    sha256=sha256,
                    filename=part.filename,
                    bytes=size,
                    created=now,
                    expires=now + self._lifetime,
                    header=header,
                )
                if await in_thread(store.insert_upload, self.engine, record):
                    # the record first, then the file: a deletion of this content that ran
                    # meanwhile saw the record and left the file (or removed it before the
                    # rename, which puts it back)
                    await in_thread(self._place, part.path, target)
                    log.info("stored upload %s (%s, %d bytes)", record.upload_id, sha256, size)
                    return self._stored(record), True
                # a replica stored the same content for this owner meanwhile
                existing = await in_thread(store.find_content, self.engine, key, sha256)
                if existing is None:
                    raise ParameterError(part.field, "could not be stored; send it again")
            expires = await in_thread(
                store.extend_expiry, self.engine, existing.upload_id, now + self._lifetime
            )
            if not await in_thread(target.is_file):
                await in_thread(self._place, part.path, target)
            stored = self._stored(existing)
            if expires is not None:
                stored = _replace_expiry(stored, expires)
            return stored, False

    @staticmethod
    def _place(source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)

    # -- reading --------------------------------------------------------------------------

    async def get(self, owner: str | None, upload_id: str) -> StoredUpload:
        """The caller's upload ``upload_id`` (its expiry unchanged); NotFound for one that
        does not exist, has expired or is another owner's."""
        record = None
        if is_job_id(upload_id):
            record = self._visible(await in_thread(store.get_upload, self.engine, upload_id), owner)
        if record is None:
            shown = upload_id if len(upload_id) <= 64 else upload_id[:64] + "..."
            raise NotFound(f"no upload with id {shown!r}")
        return self._stored(record)

    async def list(self, owner: str | None) -> list[StoredUpload]:
        """The caller's uploads that have not expired, newest first."""
        now = _utcnow()
        records = await in_thread(store.list_uploads, self.engine, self._key(owner))
        return [self._stored(r) for r in records if r.expires > now]

    async def resolve(self, owner: str | None, ref: str) -> StoredUpload:
        """The upload a job names by ``upload:<upload_id>`` or ``sha256:<hex>``, its expiry
        moved to ``upload_days`` from now (an upload in use stays). Raises ParameterError
        (IMAGE) for a malformed reference, :class:`UnknownUpload` for an upload that does
        not exist, expired, lost its file or is another owner's."""
        kind, sep, value = ref.strip().partition(":")
        kind, value = kind.strip().lower(), value.strip()
        shown = ref if len(ref) <= 80 else ref[:80] + "..."
        record: UploadRecord | None
        if sep and kind == "upload":
            if not is_job_id(value):
                raise ParameterError(
                    "image",
                    f"{shown!r} names no upload: an upload id is {len(new_job_id())} "
                    "lower-case hex digits, as POST /uploads returns it (IMAGE=upload:<id>)",
                )
            record = await in_thread(store.get_upload, self.engine, value)
        elif sep and kind == "sha256":
            value = value.lower()
            if not _SHA256.fullmatch(value):
                raise ParameterError(
                    "image",
                    f"{shown!r} is not a sha256 reference: give the 64 hex digits of the "
                    "file's SHA-256, as POST /uploads returns them (IMAGE=sha256:<hex>)",
                )
            record = await in_thread(store.find_content, self.engine, self._key(owner), value)
        else:
            raise ParameterError(
                "image",
                f"{shown!r} is neither upload:<upload_id> nor sha256:<hex>: name a stored "
                "upload so, or send the image itself as the IMAGE file part",
            )
        record = self._visible(record, owner)
        if record is None or not await in_thread(self._path_of(record.sha256).is_file):
            raise UnknownUpload("image", f"upload {value} is unknown or expired")
        expires = await in_thread(
            store.extend_expiry, self.engine, record.upload_id, _utcnow() + self._lifetime
        )
        if expires is None:  # deleted this moment
            raise UnknownUpload("image", f"upload {value} is unknown or expired")
        return _replace_expiry(self._stored(record), expires)

    # -- removing -------------------------------------------------------------------------

    async def delete(self, owner: str | None, upload_id: str) -> None:
        """Remove the owner's upload (its file too, once no other record names it). Jobs
        that used it keep their input."""
        upload = await self.get(owner, upload_id)
        await self._remove(upload.upload_id)

    async def _remove(self, upload_id: str) -> bool:
        async with self._lock:
            sha256 = await in_thread(store.delete_upload, self.engine, upload_id)
            if sha256 is None:
                return False
            if not await in_thread(store.content_in_use, self.engine, sha256):
                await in_thread(self._unlink, self._path_of(sha256))
        return True

    @staticmethod
    def _unlink(path: Path) -> None:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: other contents share the folder
            path.parent.rmdir()

    async def set_times(self, upload_id: str, *, created: datetime, expires: datetime) -> None:
        """Set an upload's creation and expiry times (operators and tests)."""
        if not await in_thread(
            store.set_times, self.engine, upload_id, created=created, expires=expires
        ):
            raise NotFound(f"no upload with id {upload_id!r}")

    async def expire(self) -> int:
        """Remove the uploads whose expiry has passed, records and files; returns how many.
        Every :data:`SWEEP_EVERY_S`, also removes files that crashes left behind."""
        removed = 0
        while True:
            ids = await in_thread(store.expired_ids, self.engine, _utcnow())
            for upload_id in ids:
                removed += await self._remove(upload_id)
            if len(ids) < 1000:
                break
        if removed:
            log.info("removed %d expired upload(s)", removed)
        now = time.monotonic()
        if self._last_sweep is None or now - self._last_sweep >= SWEEP_EVERY_S:
            self._last_sweep = now
            async with self._lock:
                await in_thread(self._sweep)
        return removed

    def _sweep(self) -> None:
        """Remove partial files of uploads cut short, and stored files no record names (a
        deletion cut between its record and its file), untouched for :data:`STALE_AFTER_S`
        (blocking)."""
        if not self.root.is_dir():
            return
        cutoff = time.time() - STALE_AFTER_S
        named = store.all_contents(self.engine)
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                try:
                    stale = path.stat().st_mtime < cutoff
                except OSError:
                    continue
                orphan = folder.name == INCOMING or path.name not in named
                if stale and orphan and path.is_file():
                    log.info("removing %s, which no upload names", path)
                    path.unlink(missing_ok=True)


def _replace_expiry(upload: StoredUpload, expires: datetime) -> StoredUpload:
    return replace(upload, expires=expires)
