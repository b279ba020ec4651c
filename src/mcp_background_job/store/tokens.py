"""Bearer tokens (``api_tokens``): plain functions of a ``Connection``; only hashes are stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..db import ApiTokenRow
from ..errors import InvalidRequest
from ..tokens import ApiToken, check_scope

_t = ApiTokenRow
_COLUMNS = (_t.name, _t.scope, _t.sha256, _t.created_at, _t.expires_at, _t.revoked_at)


def _of(row: Row[Any] | Any) -> ApiToken:
    return ApiToken(
        name=row.name,
        scope=check_scope(row.scope),
        sha256=row.sha256,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def insert_token(conn: Connection, token: ApiToken) -> None:
    exists = conn.execute(select(ApiTokenRow.name).where(ApiTokenRow.name == token.name)).first()
    if exists is not None:
        raise InvalidRequest(
            f"A token named {token.name!r} exists already: pick another name, or revoke it "
            "and use another name (names stay in the audit log, so they are not reused)."
        )
    try:
        conn.execute(
            insert(ApiTokenRow),
            {
                "name": token.name,
                "scope": token.scope,
                "sha256": token.sha256,
                "created_at": token.created_at,
                "expires_at": token.expires_at,
                "revoked_at": token.revoked_at,
            },
        )
    except IntegrityError as exc:  # the same hash: a 256-bit collision, i.e. a bug
        raise InvalidRequest("Token not stored (duplicate); create it again.") from exc


def list_tokens(conn: Connection) -> list[ApiToken]:
    rows = conn.execute(select(*_COLUMNS).order_by(_t.created_at, _t.name)).all()
    return [_of(r) for r in rows]


def find_token(conn: Connection, sha256: str) -> ApiToken | None:
    row = conn.execute(select(*_COLUMNS).where(_t.sha256 == sha256)).first()
    return _of(row) if row is not None else None


def revoke_token(conn: Connection, name: str, at: datetime) -> bool:
    """False when no token has that name; revoking twice keeps the first time."""
    t = ApiTokenRow
    found = conn.execute(select(t.name).where(t.name == name)).first()
    if found is None:
        return False
    conn.execute(update(t).where(t.name == name, t.revoked_at.is_(None)).values(revoked_at=at))
    return True
