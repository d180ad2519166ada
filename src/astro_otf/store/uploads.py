"""The uploads table and every read and write of it.

An upload record says that an owner holds a stored file: the file itself is named by the
sha256 of its content and shared by every record of that content (two owners uploading the
same image store it once). A record is unique per (owner, content), so that uploading the
same bytes again finds the first record instead of adding one, and so that an owner's quota
counts each content once. ``owner`` is the empty string for the anonymous service (a unique
constraint treats NULLs as distinct; the empty string is not). All functions are blocking
Core statements: the service runs them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CursorResult,
    Engine,
    Index,
    Row,
    String,
    Table,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from astro_otf.store.tables import Base, UTCDateTime

__all__ = [
    "NO_OWNER",
    "Holding",
    "UploadRecord",
    "all_contents",
    "content_in_use",
    "delete_upload",
    "expired_ids",
    "extend_expiry",
    "find_content",
    "get_upload",
    "holding",
    "insert_upload",
    "list_uploads",
    "set_times",
]

#: The owner column's value when the service has no owners (anonymous mode).
NO_OWNER = ""


class UploadRow(Base):
    """The ``uploads`` table: one row per owner's upload of one content (an owner holds a
    content once), its file found by ``sha256``."""

    __tablename__ = "uploads"
    __table_args__ = (
        UniqueConstraint("owner", "sha256", name="uq_uploads_owner_sha256"),
        Index("ix_uploads_sha256", "sha256"),
        Index("ix_uploads_expires", "expires"),
    )

    upload_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    expires: Mapped[datetime] = mapped_column(UTCDateTime())
    header: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


UPLOADS = cast(Table, UploadRow.__table__)


@dataclass(frozen=True)
class UploadRecord:
    """One row, as plain data. ``owner`` is :data:`NO_OWNER` in anonymous mode."""

    upload_id: str
    owner: str
    sha256: str
    filename: str
    bytes: int
    created: datetime
    expires: datetime
    header: dict[str, Any]


def _record(row: Row[Any]) -> UploadRecord:
    return UploadRecord(
        upload_id=row.upload_id,
        owner=row.owner,
        sha256=row.sha256,
        filename=row.filename,
        bytes=int(row.bytes),
        created=row.created,
        expires=row.expires,
        header=dict(row.header or {}),
    )


def insert_upload(engine: Engine, record: UploadRecord) -> bool:
    """Add a record; False (and nothing added) when the owner already holds that content."""
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(UPLOADS).values(
                    upload_id=record.upload_id,
                    owner=record.owner,
                    sha256=record.sha256,
                    filename=record.filename,
                    bytes=record.bytes,
                    created=record.created,
                    expires=record.expires,
                    header=record.header,
                )
            )
    except IntegrityError:
        return False
    return True


def get_upload(engine: Engine, upload_id: str) -> UploadRecord | None:
    """The record of ``upload_id``, whoever owns it and expired or not; None if none."""
    with engine.connect() as conn:
        row = conn.execute(select(UPLOADS).where(UPLOADS.c.upload_id == upload_id)).first()
    return None if row is None else _record(row)


def find_content(engine: Engine, owner: str, sha256: str) -> UploadRecord | None:
    """The owner's record of this content, if any."""
    with engine.connect() as conn:
        row = conn.execute(
            select(UPLOADS).where(UPLOADS.c.owner == owner, UPLOADS.c.sha256 == sha256)
        ).first()
    return None if row is None else _record(row)


def list_uploads(engine: Engine, owner: str) -> list[UploadRecord]:
    """The owner's records, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(UPLOADS)
            .where(UPLOADS.c.owner == owner)
            .order_by(UPLOADS.c.created.desc(), UPLOADS.c.upload_id)
        ).all()
    return [_record(row) for row in rows]


@dataclass(frozen=True)
class Holding:
    """What an owner holds: bytes of all their records, how many, and the largest one."""

    bytes: int
    count: int
    largest: int


def holding(engine: Engine, owner: str) -> Holding:
    """What ``owner`` holds now, over all its records (expired ones not yet removed included)."""
    with engine.connect() as conn:
        total, count, largest = conn.execute(
            select(
                func.coalesce(func.sum(UPLOADS.c.bytes), 0),
                func.count(),
                func.coalesce(func.max(UPLOADS.c.bytes), 0),
            ).where(UPLOADS.c.owner == owner)
        ).one()
    return Holding(int(total), int(count), int(largest))


def extend_expiry(engine: Engine, upload_id: str, expires: datetime) -> datetime | None:
    """Move the record's expiry to ``expires`` unless it is later already; returns the
    record's expiry now, or None when the record is gone."""
    with engine.begin() as conn:
        conn.execute(
            update(UPLOADS)
            .where(UPLOADS.c.upload_id == upload_id, UPLOADS.c.expires < expires)
            .values(expires=expires)
        )
        value = conn.execute(
            select(UPLOADS.c.expires).where(UPLOADS.c.upload_id == upload_id)
        ).scalar_one_or_none()
    return value


def set_times(engine: Engine, upload_id: str, *, created: datetime, expires: datetime) -> bool:
    """Set a record's times (operators and tests); False when there is no such record."""
    with engine.begin() as conn:
        result = conn.execute(
            update(UPLOADS)
            .where(UPLOADS.c.upload_id == upload_id)
            .values(created=created, expires=expires)
        )
    return cast(CursorResult[Any], result).rowcount > 0


def delete_upload(engine: Engine, upload_id: str) -> str | None:
    """Remove a record; returns the sha256 it named, or None when there was none."""
    with engine.begin() as conn:
        sha256 = conn.execute(
            select(UPLOADS.c.sha256).where(UPLOADS.c.upload_id == upload_id)
        ).scalar_one_or_none()
        if sha256 is None:
            return None
        conn.execute(delete(UPLOADS).where(UPLOADS.c.upload_id == upload_id))
    return str(sha256)


def expired_ids(engine: Engine, now: datetime, limit: int = 1000) -> list[str]:
    """Records whose expiry has passed, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(UPLOADS.c.upload_id)
            .where(UPLOADS.c.expires <= now)
            .order_by(UPLOADS.c.expires)
            .limit(limit)
        ).all()
    return [row.upload_id for row in rows]


def content_in_use(engine: Engine, sha256: str) -> bool:
    """Whether any record still names this content."""
    with engine.connect() as conn:
        row = conn.execute(
            select(UPLOADS.c.upload_id).where(UPLOADS.c.sha256 == sha256).limit(1)
        ).first()
    return row is not None


def all_contents(engine: Engine) -> set[str]:
    """Every content some record names (to find stored files no record names)."""
    with engine.connect() as conn:
        return {row.sha256 for row in conn.execute(select(UPLOADS.c.sha256).distinct())}
