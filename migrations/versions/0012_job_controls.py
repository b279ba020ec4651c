"""job_controls, and servers.heartbeat_at

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

``kill`` and ``interact`` on a job another host runs go through the database: the caller writes
a control row (``job_controls``) for the job's host; the server that owns the job takes it by a
compare-and-set on ``taken_by``, applies it, and writes the answer (or the error) into the row,
which the caller reads and deletes. On PostgreSQL both ends are woken by NOTIFY.

``servers.heartbeat_at``: when a server last said it was alive (every few seconds). A host none of
whose servers did for ``host_dead_after_s`` is declared dead by a server of another host (its
servers marked stopped, its running jobs failed). NULL for servers written before: their
``started_at`` counts.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_controls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("taken_by", sa.String(), nullable=True),
        sa.Column("answered_at", sa.DateTime(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('kill', 'interact')", name=op.f("ck_job_controls_kind")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_controls_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_controls")),
    )
    op.create_index(op.f("ix_job_controls_host_taken_by"), "job_controls", ["host", "taken_by"])
    op.create_index(op.f("ix_job_controls_job_id"), "job_controls", ["job_id"])
    # A plain ADD COLUMN on both engines (nullable, no default): no table rebuild.
    op.add_column("servers", sa.Column("heartbeat_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
    op.drop_index(op.f("ix_job_controls_job_id"), table_name="job_controls")
    op.drop_index(op.f("ix_job_controls_host_taken_by"), table_name="job_controls")
    op.drop_table("job_controls")
