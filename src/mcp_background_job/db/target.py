"""The SQLAlchemy side of a PostgreSQL URL (``dburl`` tells paths and URLs apart): the engine
URL (the libpq form means psycopg 3) and connection failures said plainly."""

from __future__ import annotations

import re

from sqlalchemy import URL, make_url

from ..dburl import DbTarget, check_url, describe, is_url, looks_like_url
from ..errors import StorageError

__all__ = [
    "DbTarget",
    "check_url",
    "describe",
    "engine_url",
    "is_url",
    "looks_like_url",
    "pg_error",
]

_POSTGRES = re.compile(r"^(postgresql|postgres)(\+psycopg)?://", re.IGNORECASE)


def engine_url(value: str) -> URL:
    """The SQLAlchemy URL of a PostgreSQL ``value`` (the libpq form means psycopg 3)."""
    return make_url(_POSTGRES.sub("postgresql+psycopg://", value, count=1))


def pg_error(error: BaseException, target: str) -> StorageError | None:
    """A PostgreSQL connection failure said plainly (None: not one)."""
    text = str(getattr(error, "orig", None) or error)
    if "connection" in text and ("failed" in text or "refused" in text):
        return StorageError(
            f"Cannot connect to the PostgreSQL database {describe(target)}: "
            f"{text.strip().splitlines()[-1]}. Check that the server runs and the URL is right.",
            kind="cannot_open",
        )
    return None
