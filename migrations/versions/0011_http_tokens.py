"""api_tokens, and the token of each audit event

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

``serve --http`` takes bearer tokens made by ``token create``: ``api_tokens`` keeps each one's name,
scope (``read`` or ``run``), times, and the SHA-256 of the token, never the token. The audit log
records which token made a request (``audit_events.token``, its name) and two new kinds:
``auth_failed`` (no, a wrong, an expired or a revoked token) and ``auth_refused`` (a ``read`` token
asked for a tool that changes things).

Downgrade: the tokens and the audit rows of the new kinds are deleted (an older server's CHECK
constraint refuses those kinds).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KINDS = "kind IN ('execute', 'kill', 'interact', 'rate_limited', 'policy_loaded')"
_NEW_KINDS = (
    "kind IN ('execute', 'kill', 'interact', 'rate_limited', 'policy_loaded', 'auth_failed', "
    "'auth_refused')"
)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("scope IN ('read', 'run')", name=op.f("ck_api_tokens_scope")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_api_tokens")),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_tokens_sha256"), ["sha256"], unique=True)
    with op.batch_alter_table("audit_events", schema=None, recreate="always") as batch_op:
        batch_op.add_column(sa.Column("token", sa.String(), nullable=True))
        batch_op.drop_constraint(batch_op.f("ck_audit_events_kind"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_audit_events_kind"), _NEW_KINDS)


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM audit_events WHERE kind IN ('auth_failed', 'auth_refused')"))
    with op.batch_alter_table("audit_events", schema=None, recreate="always") as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_audit_events_kind"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_audit_events_kind"), _OLD_KINDS)
        batch_op.drop_column("token")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_sha256"))
    op.drop_table("api_tokens")
