"""Engines with the SQLite settings this project depends on (pragmas, ``BEGIN IMMEDIATE``)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import URL, Connection, Engine, create_engine, event

from .pgengine import make_pg_engine

BUSY_TIMEOUT_MS = 10_000


#: How a connection opens the file: ``rw`` as usual; ``ro`` read-only (SQLite's ``mode=ro``);
#: ``immutable``: read-only and trusting that nobody changes the file (no locks, no -shm file),
#: the only way SQLite reads a WAL database on a read-only file system without its -shm file.
Access = Literal["rw", "ro", "immutable"]


def _configure(
    engine: Engine,
    *,
    writer: bool,
    manual_checkpoints: bool = False,
    access: Access = "rw",
) -> None:
    """Per-connection pragmas, and transactions begun by us instead of the legacy driver logic.

    ``BEGIN IMMEDIATE`` for writers takes the write lock up front so the busy timeout applies; a
    deferred ``BEGIN`` that later upgrades to a write fails at once with "database is locked".
    A read-only connection sets nothing that could write (``journal_mode=WAL`` would convert a
    database in another mode).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if manual_checkpoints:
            # Checkpoints copy the WAL into the file and fsync it: the costliest part of storing
            # output. The owner runs them when output has been stored, not after every commit.
            cur.execute("PRAGMA wal_autocheckpoint=0")
        if access != "rw":
            pragmas: tuple[str, ...] = (f"busy_timeout={BUSY_TIMEOUT_MS}", "query_only=ON")
        elif not writer:
            # Readers change nothing in the file: WAL mode is the writer's to set (it is
            # persistent), and a reader may be looking at a file that is not ours at all.
            pragmas = (f"busy_timeout={BUSY_TIMEOUT_MS}", "foreign_keys=ON")
        else:
            pragmas = (
                # Big output rows are written ~1.7x faster with 64 KiB pages than with 4 KiB
                # ones; it only applies to a new database (before its first table).
                "page_size=65536",
                "journal_mode=WAL",
                "synchronous=NORMAL",
                f"busy_timeout={BUSY_TIMEOUT_MS}",
                "foreign_keys=ON",
                f"journal_size_limit={64 * 1024 * 1024}",
            )
        for pragma in pragmas:
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    begin = "BEGIN IMMEDIATE" if writer and access == "rw" else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


def lower_thread_priority(nice: int) -> int:
    """Raise the calling thread's nice value (Linux threads have their own); returns it."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    return os.getpriority(os.PRIO_PROCESS, tid)


def make_sync_engine(
    path: Path | str,
    *,
    writer: bool = True,
    pool_size: int = 5,
    manual_checkpoints: bool = False,
    access: Access = "rw",
) -> Engine:
    """A plain sqlite3 engine: the store's writer and readers (run in threads), Alembic's
    command line. ``access`` other than ``rw``: a reader that never writes (see ``Access``).
    A ``str`` is a PostgreSQL URL (``db.target``): the SQLite settings do not apply there."""
    if isinstance(path, str):
        return make_pg_engine(path, pool_size=pool_size)
    if access == "rw":
        url = URL.create("sqlite", database=str(path))
    else:
        # A file: URI (percent-escaped: the path may hold '?', '#' or '%').
        query = {"uri": "true", "mode": "ro"}
        if access == "immutable":
            query["immutable"] = "1"
        url = URL.create("sqlite", database="file:" + quote(str(path)), query=query)
    engine = create_engine(url, pool_size=pool_size, max_overflow=0)
    _configure(engine, writer=writer, manual_checkpoints=manual_checkpoints, access=access)
    return engine
