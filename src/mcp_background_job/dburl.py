"""Where the database is: an SQLite file (a path) or a PostgreSQL server (a URL), told apart and
checked without the storage layer (settings are read before anything else is imported).

A URL is the plain libpq form (``postgresql://user@host/dbname``, ``postgres://``,
``?host=/socket/dir`` for a Unix socket) or SQLAlchemy's ``postgresql+psycopg://``: psycopg 3
is the one driver. Everything about a file (its mode, owner, WAL, locks held by other programs)
applies to paths only.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

#: A database: an SQLite file, or the URL of a PostgreSQL database (a ``str``).
DbTarget = Path | str

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
POSTGRES = re.compile(r"^(postgresql|postgres)(\+psycopg)?://", re.IGNORECASE)


def is_url(target: DbTarget) -> bool:
    return isinstance(target, str)


def looks_like_url(value: str) -> bool:
    return URL.match(value) is not None


def describe(target: DbTarget) -> str:
    """For messages and logs: a path as it is, a URL without its password."""
    if isinstance(target, Path):
        return str(target)
    return re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", target)


def check_url(value: str) -> str:
    """``value`` if it is a PostgreSQL URL this version can use; ValueError saying why not."""
    if not POSTGRES.match(value):
        raise ValueError(
            f"{describe(value)!r} is a URL of a database this version does not support: pass "
            "an SQLite file path such as ~/.local/state/mcp-background-job/jobs.db, or a "
            "PostgreSQL URL (postgresql://user@host/dbname; postgresql+psycopg://... too, no "
            "other driver). A path that really starts like this can be written ./" + value
        )
    database = urlsplit(value).path.lstrip("/")
    if not database:
        raise ValueError(f"{describe(value)!r} names no database: add /dbname to the URL")
    return value
