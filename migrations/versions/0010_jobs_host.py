"""jobs.host: the machine a job runs on (or is queued for)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

With a PostgreSQL database several machines share one history and one queue: each job names
the host it runs on (the ``host`` setting, default the machine's hostname), so a server claims,
reconciles and judges by pid only its own host's jobs, and ``list`` filters by host. Jobs
written before are given their owner server's hostname (NULL where the owner is unknown: such
jobs are treated as before, by whichever server reconciles them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (nullable, no default) on both engines: no table rebuild, so the
    # search index's triggers and rowids stay as they are on SQLite.
    op.add_column("jobs", sa.Column("host", sa.String(), nullable=True))
    op.execute(
        "UPDATE jobs SET host = (SELECT hostname FROM servers WHERE servers.id = jobs.owner_id)"
    )
    op.create_index(op.f("ix_jobs_host_created_at"), "jobs", ["host", "created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_host_created_at"), table_name="jobs")
    op.drop_column("jobs", "host")
