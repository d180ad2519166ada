"""Jobs that wait for their data (phase HELD): until when each one waits, so that the
leading server arms every deadline with one indexed query at startup.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from astro_otf.store.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("hold_until", UTCDateTime(), nullable=True))
        batch.create_index("ix_jobs_hold_until", ["hold_until"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_hold_until")
        batch.drop_column("hold_until")
