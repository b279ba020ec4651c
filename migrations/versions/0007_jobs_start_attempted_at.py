"""jobs.start_attempted_at: the intent to start a job, committed before its process is spawned

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A server that died between spawning a job and recording it ``running`` left the job ``queued``,
and the next server ran it again: 28 of 174 jobs ran twice in a fault-injection run (SIGKILL of
the server while 8 jobs started). The runner now commits this column before it spawns; a queued
job with it set may have run, so no server starts it again (see ``runner.py``).

A nullable column added in place (``ALTER TABLE ... ADD COLUMN``; the downgrade drops it the same
way): ``jobs`` is not rebuilt, so its rowids and the search index's triggers stay as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("start_attempted_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "start_attempted_at")
