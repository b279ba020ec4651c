"""Bearer tokens for ``serve --http``: what a token is, how one is made and how it is kept.

A token is ``mbj_`` + 32 random bytes in URL-safe base64 (256 bits: guessing is hopeless, the
rate limit only keeps the log small). Only its SHA-256 is stored: a plain hash is enough for a
random secret of that size (a slow password hash protects low-entropy secrets, and would cost
every request), and lets the lookup be an index seek. Pure: no I/O.

Import rule: the pure layer (``tests/test_layers.py``): the stdlib and ``errors`` only.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from .errors import InvalidRequest

TokenScope = Literal["read", "run"]
TOKEN_SCOPES: tuple[TokenScope, ...] = get_args(TokenScope)
PREFIX = "mbj_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token as stored (never the token itself)."""

    name: str
    scope: TokenScope
    sha256: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def state(self, now: datetime) -> Literal["active", "expired", "revoked"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @property
    def scopes(self) -> list[str]:
        """The OAuth-style scopes the token grants: ``run`` includes ``read``."""
        return ["read", "run"] if self.scope == "run" else ["read"]


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"Token name {name[:80]!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def check_scope(scope: str) -> TokenScope:
    for s in TOKEN_SCOPES:
        if scope == s:
            return s
    raise InvalidRequest(f"Token scope {scope[:40]!r} is not valid: use read or run.")


def expiry(created: datetime, lifetime: timedelta | None) -> datetime | None:
    if lifetime is None:
        return None
    if lifetime <= timedelta(0):
        raise InvalidRequest("A token's lifetime must be positive (e.g. 30d, 12h).")
    return created + lifetime
