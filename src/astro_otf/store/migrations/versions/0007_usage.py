"""The accounting ledger (``usage``): one row per job that reached a final phase, kept after
the job is destroyed, so that what an owner used over a period does not shrink as jobs
expire. Jobs already final when this migration runs are entered with what their rows say
(their CPU time was not measured then: 0).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from astro_otf.store.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FINAL = ("COMPLETED", "ERROR", "ABORTED", "ARCHIVED")


def upgrade() -> None:
    usage = op.create_table(
        "usage",
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("creation_time", UTCDateTime(), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=True),
        sa.Column("end_time", UTCDateTime(), nullable=False),
        sa.Column("wall_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("cpu_seconds", sa.Float(), nullable=False, server_default="0"),
        sa.Column("bytes_stored", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index("ix_usage_owner", "usage", ["owner"])
    op.create_index("ix_usage_end_time", "usage", ["end_time"])
    _backfill(usage)


def _backfill(usage: sa.Table) -> None:
    """A ledger row for every job already final, from its row and its results' sizes."""
    from astro_otf.store.usage import input_bytes, seconds_between

    conn = op.get_bind()
    jobs = sa.table(
        "jobs",
        sa.column("job_id"),
        sa.column("owner"),
        sa.column("model_id"),
        sa.column("phase"),
        sa.column("creation_time", UTCDateTime()),
        sa.column("start_time", UTCDateTime()),
        sa.column("end_time", UTCDateTime()),
        sa.column("info", sa.JSON()),
    )
    results = sa.table("job_results", sa.column("job_id"), sa.column("size", sa.BigInteger()))
    query = sa.select(results.c.job_id, sa.func.sum(results.c.size)).group_by(results.c.job_id)
    sizes = {job_id: total for job_id, total in conn.execute(query)}
    rows: list[dict[str, Any]] = []
    for job in conn.execute(sa.select(jobs).where(jobs.c.phase.in_(FINAL))):
        end = job.end_time or job.start_time or job.creation_time
        rows.append(
            {
                "job_id": job.job_id,
                "owner": job.owner,
                "model_id": job.model_id,
                "phase": job.phase,
                "creation_time": job.creation_time,
                "start_time": job.start_time,
                "end_time": end,
                "wall_seconds": seconds_between(job.start_time, end),
                "cpu_seconds": 0.0,
                "bytes_stored": int(sizes.get(job.job_id) or 0) + input_bytes(job.info),
            }
        )
        if len(rows) >= 1000:
            op.bulk_insert(usage, rows)
            rows = []
    if rows:
        op.bulk_insert(usage, rows)


def downgrade() -> None:
    op.drop_index("ix_usage_end_time", table_name="usage")
    op.drop_index("ix_usage_owner", table_name="usage")
    op.drop_table("usage")
