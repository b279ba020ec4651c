"""The store's connections: one writer thread (group commit) and a pool of reader threads.

All writes of a process go through one connection owned by one thread (``Writer``), which
commits the writes waiting at the same moment together (``BEGIN IMMEDIATE``): SQLite has one
writer anyway, and a single writer path keeps commit latency flat. Reads run in a small pool of
reader threads, each read in one trip and one short transaction, so a read never holds the WAL
open. Either way a call costs one thread hop, not one per statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection

from .. import db
from ..errors import StorageError
from .upkeep import driver_sql
from .writer import Writer

T = TypeVar("T")


def _read_schema(conn: Connection) -> None:
    conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").all()


class Connections:
    """Opens the database file (creating or migrating it), then runs work on it: writes on the
    writer thread, reads on a reader thread."""

    def __init__(self, path: Path | str, *, read_pool: int = 4, writer_nice: int = 0) -> None:
        self.path = path
        self._read_pool_size = read_pool
        self._write_engine = db.make_sync_engine(path, pool_size=1, manual_checkpoints=True)
        # Most writes are output; a nicer writer thread leaves the CPU to the jobs producing it.
        self._writer = Writer(self._write_engine, nice=writer_nice, path=path)
        self._sync_reader = db.make_sync_engine(path, writer=False, pool_size=read_pool)
        self._read_pool = ThreadPoolExecutor(read_pool, "db-read")
        #: Why this store cannot write (opened for reading a database it may not change).
        self.no_writes: StorageError | None = None

    async def open(self, *, create: bool, reading: bool) -> None:
        """See ``Store.open``."""
        if isinstance(self.path, str):
            await self._open_server(create=create, reading=reading)
            return
        path = self.path
        check = db.inspect_file if reading else db.check_for_writing
        if not await asyncio.to_thread(check, path):
            if not create:
                raise db.no_database(path)
            await asyncio.to_thread(db.create_database, path)
        if reading and not (db.writable(path) and db.is_owned(path)):
            await self._open_read_only()
        try:
            revision = await self.query(lambda conn: db.schema_revision(conn, path))
        except StorageError as error:
            # A full disk leaves no room for the -shm file SQLite needs to read a WAL database
            # (measured: a 3-byte -shm, "disk full" for every read): read it read-only.
            if not reading or self.no_writes is not None or error.kind != "disk_full":
                raise
            await self._open_read_only(error)
            revision = await self.query(lambda conn: db.schema_revision(conn, path))
        if revision == db.head_revision():
            if not reading:
                self._writer.start()
            return
        if self.no_writes is not None:
            raise StorageError(
                f"The database {path} is at schema revision {revision or 'none'}, older than "
                f"this version's ({db.head_revision()}), and cannot be upgraded here: "
                f"{self.no_writes}",
                kind=self.no_writes.kind,
            )
        if reading and revision is None:
            raise StorageError(
                f"{path} holds no mcp-background-job history (an SQLite database without "
                "tables). Pass --db PATH (or set MCP_BACKGROUND_JOB_DB) to the database your "
                "MCP server uses.",
                kind="not_a_database",
            )
        await self._writer.run(db.upgrade_to_head, transaction=False)

    async def _open_server(self, *, create: bool, reading: bool) -> None:
        """A PostgreSQL database: it exists already (a server's databases are made by its
        administrator); an empty one is migrated (``create``), one at an older schema too."""
        url = self.path
        revision = await self.query(lambda conn: db.schema_revision(conn, url))
        if revision == db.head_revision():
            if not reading:
                self._writer.start()
            return
        if revision is None and not create:
            raise StorageError(
                f"{db.describe(url)} holds no mcp-background-job history (no tables). {db.DB_HINT}",
                kind="not_a_database",
            )
        await self._writer.run(db.upgrade_to_head, transaction=False)

    async def _open_read_only(self, why: StorageError | None = None) -> None:
        """Readers that never write: SQLite's ``mode=ro``, or ``immutable`` where that cannot
        open a WAL database (a read-only mount, or a full disk, without the -shm file; measured
        on 3.40). An immutable reader ignores a -wal file, so it is used only when there is
        none (then no server has the database open: a server's connections keep a -wal)."""
        path = self.path
        assert isinstance(path, Path), "a PostgreSQL database is never opened read-only"
        if why is None and not db.writable(path):
            why = db.read_only(path)
        self.no_writes = why or StorageError(
            f"The database {path} belongs to another user: it is only read here.",
            kind="not_owned",
        )
        self._sync_reader.dispose()
        modes: tuple[db.Access, ...] = ("ro", "immutable")
        for access in modes:
            self._sync_reader = db.make_sync_engine(
                path, writer=False, pool_size=self._read_pool_size, access=access
            )
            try:
                await self.query(_read_schema)
                return
            except StorageError as error:
                self._sync_reader.dispose()
                wal = path.with_name(path.name + "-wal")
                if error.kind not in ("cannot_open", "read_only", "disk_full"):
                    raise
                if access == "immutable" or (wal.exists() and wal.stat().st_size > 0):
                    raise

    async def close(self) -> None:
        await self._writer.close()
        self._write_engine.dispose()
        self._read_pool.shutdown(wait=True)
        self._sync_reader.dispose()

    def wal_bytes(self) -> int:
        if isinstance(self.path, str):
            return 0  # PostgreSQL: its WAL is the server's business
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file (without waiting for readers), on the writer
        connection: a second connection checkpointing while this one writes can hit a WAL-reset
        bug in SQLite < 3.51.3. Nothing to do on PostgreSQL."""
        if isinstance(self.path, str):
            return
        await self.write(
            lambda conn: driver_sql(conn, "PRAGMA wal_checkpoint(PASSIVE)"), transaction=False
        )

    async def write(self, work: Callable[[Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` in a write transaction (maybe shared with other writes: group commit),
        or alone outside one (``transaction=False``, see ``Writer.run``)."""
        if self.no_writes is not None:
            raise StorageError(str(self.no_writes), kind=self.no_writes.kind)
        return await self._writer.run(work, transaction=transaction)

    async def query(self, work: Callable[[Connection], T]) -> T:
        """Run a read in one trip to a reader thread (a plain sqlite3 connection).

        A thread hop per statement (as through aiosqlite) is slow; under CPU load each hop waits
        for a time slice. One hop per read made ``status`` ~5x faster (2.4 -> 0.5 ms in-process).
        """
        return await asyncio.get_running_loop().run_in_executor(
            self._read_pool, self._run_query, work
        )

    def _run_query(self, work: Callable[[Connection], T]) -> T:
        try:
            with self._sync_reader.begin() as conn:
                return work(conn)
        except Exception as exc:
            described = db.storage_error(exc, self.path)
            if described is None or described is exc:
                raise
            raise described from exc
