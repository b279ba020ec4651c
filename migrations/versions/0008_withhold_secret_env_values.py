"""jobs.env: secret values are no longer stored

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

``jobs.env`` kept the values of every variable a caller gave a job, tokens included, in clear:
anyone who could read the file (a backup, a ``sqlite3`` user, a job when the state was not
hidden from it) could read them. A server now stores ``"\\u0000withheld"`` in place of the value
of a variable with a secret-like name (``*TOKEN*``, ``*SECRET*``, ``*PASSW*``, ``*KEY*``, ...) or
a value that looks like a token or a URL with credentials, and keeps the real one in memory for
as long as it needs it; ``rerun`` asks for it again. This migration scrubs the rows written
before: the same name rule, and the common token formats for values (the rules here are a copy,
frozen with the migration).

Downgrade: the values are gone. An older server cannot start a job with a NUL in its
environment, so a withheld value becomes the empty string.
"""

import json
import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WITHHELD = "\0withheld"
_SECRET_NAME = re.compile(
    r"(?i)(TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|CREDENTIAL|AUTH|PRIVATE"
    r"|(^|_)KEYS?(_|$))"
)
_SECRET_VALUE = re.compile(
    r"(gh[oprsu]|github_pat)_[A-Za-z0-9_]{20,}|(AKIA|ASIA)[0-9A-Z]{16}|sk-[A-Za-z0-9_-]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|glpat-[A-Za-z0-9_-]{20}|npm_[A-Za-z0-9]{36}"
    r"|pypi-[A-Za-z0-9_-]{50,}|hf_[A-Za-z0-9]{30,}|AIza[0-9A-Za-z_-]{35}"
    r"|[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}"
)


def _rewrite(change: Callable[[dict[str, str]], dict[str, str] | None]) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, env FROM jobs WHERE env NOT IN ('{}', '')")).all()
    for job_id, text in rows:
        try:
            env = json.loads(text)
        except ValueError:
            continue  # not written by a server: leave it as it is
        if not isinstance(env, dict):
            continue
        new = change(env)
        if new is not None:
            bind.execute(
                sa.text("UPDATE jobs SET env = :env WHERE id = :id"),
                {"env": json.dumps(new), "id": job_id},
            )


def _withhold(env: dict[str, str]) -> dict[str, str] | None:
    secret = {
        k
        for k, v in env.items()
        if isinstance(v, str)
        and v != WITHHELD
        and (_SECRET_NAME.search(k) or _SECRET_VALUE.search(v))
    }
    return {k: WITHHELD if k in secret else v for k, v in env.items()} if secret else None


def _empty(env: dict[str, str]) -> dict[str, str] | None:
    if WITHHELD not in env.values():
        return None
    return {k: "" if v == WITHHELD else v for k, v in env.items()}


def upgrade() -> None:
    _rewrite(_withhold)


def downgrade() -> None:
    _rewrite(_empty)
