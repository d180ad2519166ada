"""What a job ran on, for people and for reuse: the input's file name (listed and filtered
on) and the key of its computation (input sha256, model, version, precision, parameters),
which finds a completed job with the same results.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("image_name", sa.String(255), nullable=True))
        batch.add_column(sa.Column("cache_key", sa.String(64), nullable=True))
        batch.create_index("ix_jobs_image_name", ["image_name"])
        batch.create_index("ix_jobs_cache_key", ["cache_key"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_cache_key")
        batch.drop_index("ix_jobs_image_name")
        batch.drop_column("cache_key")
        batch.drop_column("image_name")
