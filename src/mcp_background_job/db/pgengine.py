"""Engines for a PostgreSQL database (psycopg 3), and what differs there when migrating.

Times are stored as naive UTC (as in SQLite), so every session runs in UTC: ``now()`` in the
views and any ``timestamp`` arithmetic then agree with what the server wrote. Read Committed
is enough for the store: every status change is a guarded ``UPDATE ... WHERE status IN (...)``,
which PostgreSQL re-checks on the row it locked (two servers cannot both win it).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, create_engine, inspect

from .target import engine_url

#: As ``engine.BUSY_TIMEOUT_MS`` (not imported: ``engine`` imports this module).
BUSY_TIMEOUT_MS = 10_000

#: ``pg_advisory_xact_lock`` key taken while migrating: servers starting together migrate one at
#: a time (the others then find the schema current). An arbitrary constant ("mbj" + 1).
MIGRATION_LOCK = 0x6D626A01


def make_pg_engine(url: str, *, pool_size: int = 5) -> Engine:
    return create_engine(
        engine_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,  # a server restarted under us: reconnect instead of failing once
        connect_args={
            # A row another server holds locked is waited for as long as SQLite's busy timeout.
            "options": f"-c timezone=UTC -c lock_timeout={BUSY_TIMEOUT_MS}",
            "application_name": "mcp-background-job",
        },
    )


def table_names(conn: Connection) -> set[str]:
    """The tables of the connection's current schema."""
    return set(inspect(conn).get_table_names())


def lock_for_migration(conn: Connection) -> None:
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
