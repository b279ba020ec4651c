"""jobs.detached: a job that outlives its server (issue 15)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01

A detached job runs under a small POSIX-sh keeper in a session of its own, which records its
true end in the spool directory; its server's watchdog and shutdown leave it running, and a later
server adopts it. The flag is what they go by.

A column added in place with a constant default (``ALTER TABLE ... ADD COLUMN``): ``jobs`` is not
rebuilt, so its rowids and the search index's triggers stay as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("detached", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("jobs", "detached")
