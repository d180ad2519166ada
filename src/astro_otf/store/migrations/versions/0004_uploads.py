"""Stored uploads (POST /uploads): one row per owner and content, the file named by sha256.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from astro_otf.store.tables import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("upload_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=False),
        sa.Column("expires", UTCDateTime(), nullable=False),
        sa.Column("header", sa.JSON(), nullable=False),
        sa.UniqueConstraint("owner", "sha256", name="uq_uploads_owner_sha256"),
    )
    op.create_index("ix_uploads_sha256", "uploads", ["sha256"])
    op.create_index("ix_uploads_expires", "uploads", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_uploads_expires", table_name="uploads")
    op.drop_index("ix_uploads_sha256", table_name="uploads")
    op.drop_table("uploads")
