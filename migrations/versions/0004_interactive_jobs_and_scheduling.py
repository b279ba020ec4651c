"""interactive jobs and scheduling: pty, terminal size, priority, idle timeout, dependencies, rerun

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("pty", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("term_rows", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("term_cols", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("idle_timeout_s", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("run_anyway", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("rerun_of", sa.String(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_rerun_of_jobs"), "jobs", ["rerun_of"], ["id"], ondelete="SET NULL"
        )

    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("depends_on", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["depends_on"],
            ["jobs.id"],
            name=op.f("fk_job_dependencies_depends_on_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_dependencies_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "depends_on", name=op.f("pk_job_dependencies")),
    )
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_job_dependencies_depends_on"), ["depends_on"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_dependencies_depends_on"))

    op.drop_table("job_dependencies")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_rerun_of_jobs"), type_="foreignkey")
        batch_op.drop_column("rerun_of")
        batch_op.drop_column("run_anyway")
        batch_op.drop_column("idle_timeout_s")
        batch_op.drop_column("priority")
        batch_op.drop_column("term_cols")
        batch_op.drop_column("term_rows")
        batch_op.drop_column("pty")
