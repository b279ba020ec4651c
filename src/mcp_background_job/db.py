"""Tables, engines with the SQLite settings this project depends on, and migrate-to-head.

The schema is created only by Alembic migrations (``migrations/``); these models are what the
migrations must produce, which ``tests/test_migrations.py`` checks.

Timestamps are stored as UTC text, ``YYYY-MM-DD HH:MM:SS.ffffff``: ``sqlite3`` users can read and
compare them and pass them to ``datetime()``/``julianday()``, and they sort correctly as text.

Views for people using ``sqlite3`` (``VIEWS``, created by migration 0002, not models): they are
not tables, so the schema-drift check ignores them, and ``migrate_to`` keeps them valid through
batch migrations.

The command search index (``SEARCH_TABLE``, migration 0005, not a model): an FTS5 trigram index
of ``jobs.command`` (external content, keyed by the rowid of ``jobs``), kept in sync by
triggers (``TRIGGERS``). It only proposes candidates: the store checks each with ``LIKE``.
Alembic is told to ignore its tables (``include_name``). A later migration that rebuilds
``jobs`` in batch mode drops the triggers with the old table and renumbers the rowids: it must
recreate the triggers and ``'rebuild'`` the index (``tests/test_migrations.py`` checks both, and
shows how).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import pwd
import queue
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    URL,
    Boolean,
    CheckConstraint,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    false,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .errors import StorageError
from .jobs import JobStatus, Stream

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000

#: Read-only views for ``sqlite3`` users (migration 0002): one row per job with its duration and
#: output sizes; output chunks as text; each job's whole output as text.
VIEWS = ("job_summary", "output_text", "job_output")

#: The FTS5 trigram index of ``jobs.command`` (migration 0005).
SEARCH_TABLE = "jobs_fts"
#: Triggers on ``jobs`` (migration 0005): three keep ``SEARCH_TABLE`` in sync on insert, delete
#: and update of the command; one copies a changed ``created_at`` to ``job_labels``.
TRIGGERS = ("jobs_fts_insert", "jobs_fts_delete", "jobs_fts_update", "jobs_label_times")
#: The ordinary tables FTS5 keeps for ``SEARCH_TABLE`` (no ``_content``: the text is in ``jobs``).
SEARCH_SHADOW_TABLES = tuple(f"{SEARCH_TABLE}_{s}" for s in ("data", "idx", "docsize", "config"))


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter for schema comparison: the search index is not a model (its virtual
    table and shadow tables would otherwise show up as tables to drop)."""
    return not (type_ == "table" and name in (SEARCH_TABLE, *SEARCH_SHADOW_TABLES))


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive UTC text in the file."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _in(values: Any) -> str:
    return ", ".join(f"'{v.value}'" for v in values)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ServerRow(Base):
    """A server process that opened the database (the owner of the jobs it starts)."""

    __tablename__ = "servers"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    pid_start: Mapped[int | None] = mapped_column(Integer)
    boot_id: Mapped[str | None] = mapped_column(String)
    hostname: Mapped[str] = mapped_column(String)
    version: Mapped[str] = mapped_column(String)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(JobStatus)})", name="status"),
        Index(None, "created_at", "id"),
        Index(None, "status", "created_at"),
        Index(None, "owner_id", "status"),
        # Deleting a job sets rerun_of to NULL in its reruns (the foreign key): without this
        # index each deleted job meant a scan of every job (migration 0006).
        Index(None, "rerun_of"),
    )
    id: Mapped[str] = mapped_column(String, primary_key=True)
    command: Mapped[str] = mapped_column(Text)
    cwd: Mapped[str] = mapped_column(Text)
    shell: Mapped[str] = mapped_column(String)
    env: Mapped[str] = mapped_column(Text, default="{}")  # JSON object of caller-added variables
    status: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[str | None] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)
    timeout_s: Mapped[float | None] = mapped_column(Float)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("servers.id", ondelete="SET NULL"))
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_start: Mapped[int | None] = mapped_column(Integer)
    boot_id: Mapped[str | None] = mapped_column(String)
    end_cause: Mapped[str | None] = mapped_column(String)
    stdout_bytes: Mapped[int] = mapped_column(Integer, default=0)
    stderr_bytes: Mapped[int] = mapped_column(Integer, default=0)
    stdout_stored: Mapped[int] = mapped_column(Integer, default=0)
    stderr_stored: Mapped[int] = mapped_column(Integer, default=0)
    stdout_dropped: Mapped[int] = mapped_column(Integer, default=0)
    stderr_dropped: Mapped[int] = mapped_column(Integer, default=0)
    # Interactive jobs and scheduling (migration 0004).
    pty: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    term_rows: Mapped[int | None] = mapped_column(Integer)
    term_cols: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    idle_timeout_s: Mapped[float | None] = mapped_column(Float)
    run_anyway: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    rerun_of: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # Committed before the job's process is spawned (migration 0007): a queued job with it set
    # may have run, and is never started again (see runner.py).
    start_attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobDependencyRow(Base):
    """``job_id`` stays queued until ``depends_on`` has ended (and fails if it did not complete,
    unless the job has ``run_anyway``)."""

    __tablename__ = "job_dependencies"
    __table_args__ = (Index(None, "depends_on"),)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    depends_on: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )


class JobLabelRow(Base):
    """A label of a job. ``job_created_at`` is the job's ``created_at`` (labels are set when the
    job is created and never change), copied here so that ``list --label`` walks one index in
    the list's order (newest first) instead of sorting every job with the label (migration 0005).
    """

    __tablename__ = "job_labels"
    __table_args__ = (Index(None, "label", "job_created_at", "job_id"),)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    label: Mapped[str] = mapped_column(String, primary_key=True)
    job_created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JobEventRow(Base):
    """One status transition; written in the same transaction as the status change."""

    __tablename__ = "job_events"
    __table_args__ = (Index(None, "job_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    from_status: Mapped[str | None] = mapped_column(String)
    to_status: Mapped[str] = mapped_column(String)
    reason: Mapped[str | None] = mapped_column(Text)
    server_id: Mapped[str | None] = mapped_column(String)


class OutputChunkRow(Base):
    """Bytes exactly as the job wrote them: ``data`` is bytes ``byte_offset..`` of ``stream``.

    ``seq`` orders chunks of both streams by the time they were stored.
    """

    __tablename__ = "output_chunks"
    __table_args__ = (
        CheckConstraint(f"stream IN ({_in(Stream)})", name="stream"),
        Index(None, "job_id", "stream", "byte_offset", unique=True),
        Index(None, "job_id", "seq"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    stream: Mapped[str] = mapped_column(String)
    seq: Mapped[int] = mapped_column(Integer)
    byte_offset: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


#: Kinds of audit events; a CHECK constraint keeps the column to these.
AUDIT_KINDS = ("execute", "kill", "interact", "rate_limited", "policy_loaded")


class AuditEventRow(Base):
    """A security-relevant event: who asked for what, and what the server decided.

    Never holds environment values or job input; commands are redacted and length-capped.
    ``client_*`` come from the MCP client and are self-reported.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in AUDIT_KINDS)})", name="kind"),
        CheckConstraint("decision IN ('allowed', 'refused') OR decision IS NULL", name="decision"),
        Index(None, "at"),
        Index(None, "kind", "at"),
        Index(None, "job_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    server_id: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)
    decision: Mapped[str | None] = mapped_column(String)
    rule: Mapped[str | None] = mapped_column(String)
    matched: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String)
    command: Mapped[str | None] = mapped_column(Text)
    cwd: Mapped[str | None] = mapped_column(Text)
    client_name: Mapped[str | None] = mapped_column(String)
    client_version: Mapped[str | None] = mapped_column(String)
    session_id: Mapped[str | None] = mapped_column(String)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON object


metadata = Base.metadata


# --- engines -------------------------------------------------------------------------------

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
    path: Path,
    *,
    writer: bool = True,
    pool_size: int = 5,
    manual_checkpoints: bool = False,
    access: Access = "rw",
) -> Engine:
    """A plain sqlite3 engine: the store's writer and readers (run in threads), Alembic's
    command line. ``access`` other than ``rw``: a reader that never writes (see ``Access``)."""
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


# --- the database file ---------------------------------------------------------------------

SQLITE_MAGIC = b"SQLite format 3\0"
#: Where to look for help with a database path, in messages.
_DB_HINT = "Pass --db PATH (or set MCP_BACKGROUND_JOB_DB) to the database your MCP server uses."


def side_file(path: Path, suffix: str) -> Path:
    """``jobs.db-wal`` / ``jobs.db-shm`` next to ``jobs.db``."""
    return path.with_name(path.name + suffix)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def make_private_dirs(path: Path) -> None:
    """Create the directory ``path`` and each missing parent with mode 0700, whatever the umask
    (the state directory holds commands and output; under umask 000 ``mkdir -p`` made them
    0777). Directories that already exist are left as they are."""
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(0o700)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        directory.chmod(0o700)  # the umask may have taken bits away


def ensure_db_file(path: Path) -> None:
    """Create an empty database file (and its folder) readable by its owner only: for tests and
    tools that migrate it themselves. Servers and commands use ``create_database``."""
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def no_database(path: Path) -> StorageError:
    """Nothing at ``path``: said instead of creating a database at a mistyped path."""
    return StorageError(
        f"No database at {path}: nothing has been recorded there. {_DB_HINT}",
        kind="cannot_open",
    )


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_owned(path: Path, what: str) -> None:
    """Refuse ``path`` (the database, its directory or the spool) if another user owns it: a
    server on it would run jobs queued by whoever can write it, as this user."""
    try:
        owner = path.stat().st_uid
    except FileNotFoundError:
        return
    except OSError as error:
        raise storage_error(error, path) or StorageError(str(error)) from error
    if owner != os.geteuid():
        raise StorageError(
            f"The {what} {path} belongs to {_user(owner)}, not to {_user(os.geteuid())} who runs "
            "this: a server does not use another user's database (jobs queued in it would run "
            "as you). Run it as that user, or pass --db PATH (or MCP_BACKGROUND_JOB_DB) to a "
            "database of your own; reading commands (list, show, logs, stats, audit) can still "
            "read it.",
            kind="not_owned",
        )


def is_owned(path: Path) -> bool:
    """True unless the database or its directory belongs to another user."""
    try:
        return all(p.stat().st_uid == os.geteuid() for p in (path, path.parent))
    except OSError:
        return True  # let opening it say what is wrong


def inspect_file(path: Path) -> bool:
    """True if a database file is at ``path``, False if nothing is there. Anything there that
    cannot be a database raises a ``StorageError`` saying so, before SQLite is asked (it would
    turn an empty file into a new database, and take a directory's missing file for a new
    one)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise storage_error(error, path) or StorageError(str(error)) from error
    if stat.S_ISDIR(st.st_mode):
        raise StorageError(
            f"{path} is a directory, not a database file. Pass the file in it, such as "
            f"--db {path / 'jobs.db'}.",
            kind="cannot_open",
        )
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(
            f"{path} is not a regular file (a device, FIFO or socket), so it cannot be a "
            f"database. {_DB_HINT}",
            kind="cannot_open",
        )
    wal = _size(side_file(path, "-wal"))
    if st.st_size == 0 and not wal:
        raise StorageError(
            f"{path} is an empty file, not a database (a server creates its database itself, "
            "never from a file someone else made). If it should hold a new history, delete it "
            f"and start the server again. {_DB_HINT}",
            kind="not_a_database",
        )
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as error:
        raise storage_error(error, path) or StorageError(str(error)) from error
    if header[:16] != SQLITE_MAGIC and not (header and SQLITE_MAGIC.startswith(header)):
        raise _not_a_database(path)
    if len(header) < 100:
        raise _damaged(path, f"only {len(header)} bytes are left of it")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid if the file's change counter matches (SQLite's rule);
    # a file shorter than that lost its end, unless the WAL (not checkpointed yet) holds it.
    if header[24:28] == header[92:96] and pages * page_size > st.st_size and not wal:
        raise _damaged(
            path, f"it is truncated: its header says {pages * page_size} bytes, it has {st.st_size}"
        )
    return True


def check_for_writing(path: Path) -> bool:
    """``inspect_file`` for a server or a command that changes the database: also refuses
    another user's database or directory, and one this process cannot write. True if the
    database exists."""
    exists = inspect_file(path)
    if path.parent.is_dir():
        check_owned(path.parent, "database directory")
    if exists:
        check_owned(path, "database")
        if not writable(path):
            raise read_only(path)
    return exists


def writable(path: Path) -> bool:
    """Whether this process can write the database: the file, and its -wal and -shm files (or
    the directory, to create them). A read-only mount says no, even to root."""
    if not os.access(path, os.W_OK):
        return False
    sides = [side_file(path, s) for s in ("-wal", "-shm")]
    if any(p.exists() and not os.access(p, os.W_OK) for p in sides):
        return False
    return all(p.exists() for p in sides) or os.access(path.parent, os.W_OK | os.X_OK)


def create_database(path: Path, revision: str = "head") -> bool:
    """Create a new database at ``path`` migrated to ``revision``, all at once: it is built
    under a temporary name and linked into place, so ``path`` never holds a half-made (or
    empty) database, and of several processes creating it at once one wins and the others use
    it. Returns False if someone else's database was there first."""
    make_private_dirs(path.parent)
    check_owned(path.parent, "database directory")
    temp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.close(os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        engine = make_sync_engine(temp, pool_size=1)
        try:
            with engine.connect() as conn:
                migrate_to(conn, revision)
                # Everything into the file itself: its -wal is not linked along with it.
                # (On the driver connection: inside a transaction it fails as "locked".)
                raw = conn.connection.dbapi_connection
                assert raw is not None
                busy, log_frames, copied = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy or log_frames != copied:
                    raise StorageError(f"could not checkpoint the new database {temp}")
        finally:
            engine.dispose()
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            # No hard links on this file system: rename, unless someone was first.
            if path.exists():
                return False
            temp.rename(path)
        return True
    except (OSError, DBAPIError, sqlite3.Error) as error:
        raise storage_error(error, path) or error from error
    finally:
        for leftover in (temp, side_file(temp, "-wal"), side_file(temp, "-shm")):
            with contextlib.suppress(OSError):
                leftover.unlink()


# --- SQLite and OS errors, said plainly ---------------------------------------------------------

#: SQLite's primary result codes (sqlite3.h) that are about the database file itself.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


def is_locked(error: BaseException) -> bool:
    """True for SQLite's "database is locked" (SQLITE_BUSY: another connection holds the
    lock). Not SQLITE_LOCKED, "database table is locked": a conflict within one connection."""
    if isinstance(error, DBAPIError):
        error = error.orig  # type: ignore[assignment]
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF == _SQLITE_BUSY


def storage_error(error: BaseException, path: Path) -> StorageError | None:
    """The one place that turns an SQLite or OS error about the database at ``path`` into a
    ``StorageError`` saying what is wrong and what to do; None for any other error (a bug, a
    domain error), which the caller passes on as it is. An ``OSError`` about another file (a
    spool file) is described with that file's name."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return None if code is None else _sqlite_error(code & 0xFF, error, path)
    if isinstance(error, OSError):
        return _os_error(error, path)
    return None


def _sqlite_error(code: int, error: sqlite3.Error, path: Path) -> StorageError | None:
    if code == _SQLITE_BUSY:
        return database_locked(path)
    if code == _SQLITE_FULL:
        return disk_full(path)
    if code == _SQLITE_READONLY:
        return read_only(path)
    if code == _SQLITE_NOTADB:
        return _not_a_database(path)
    if code == _SQLITE_CORRUPT:
        return _damaged(path, str(error))
    if code == _SQLITE_IOERR and _free_bytes(path) == 0:
        return disk_full(path)
    if code in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_PERM):
        if code == _SQLITE_CANTOPEN:
            try:
                inspect_file(path)
            except StorageError as clearer:
                return clearer
            if path.exists() and not writable(path):
                return read_only(path)
            if not path.parent.is_dir():
                return StorageError(
                    f"Cannot open the database {path}: the directory {path.parent} does not "
                    f"exist. {_DB_HINT}",
                    kind="cannot_open",
                )
        return StorageError(
            f"Cannot use the database {path}: {error} (SQLite {error.sqlite_errorname}). Check "
            "the file and its directory (permissions, the file system), then retry.",
            kind="cannot_open",
        )
    return None


def _os_error(error: OSError, path: Path) -> StorageError:
    where = Path(error.filename) if error.filename else path
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(where)
    if error.errno == errno.EROFS:
        return read_only(where)
    if error.errno == errno.ENOTDIR:
        return StorageError(
            f"Cannot use {where}: a part of that path is a file, not a directory. {_DB_HINT}",
            kind="cannot_open",
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return StorageError(
            f"Permission denied on {where} for {_user(os.geteuid())}: give this user access, or "
            f"use another path. {_DB_HINT}",
            kind="cannot_open",
        )
    return StorageError(f"Cannot use {where}: {error.strerror or error}.", kind="cannot_open")


def _not_a_database(path: Path) -> StorageError:
    return StorageError(
        f"{path} is not an SQLite database (a text file, or an encrypted one?). {_DB_HINT} "
        "If this file is in the way, move it.",
        kind="not_a_database",
    )


def _damaged(path: Path, why: str) -> StorageError:
    return StorageError(
        f"The database {path} is damaged ({why}). Restore it from a backup, or move it (with "
        f"its -wal and -shm files) away to start a new history; `sqlite3 {path} .recover` may "
        "rescue what is left.",
        kind="damaged",
    )


def _free_bytes(path: Path) -> int | None:
    for at in (path, *path.parents):
        try:
            st = os.statvfs(at)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def disk_full(path: Path) -> StorageError:
    """The disk (or the user's quota) holding ``path`` is full."""
    free = _free_bytes(path)
    left = "" if free is None else f" ({free // 1024} KiB left)"
    return StorageError(
        f"Disk full: no space left for {path}{left}. Free some space on that file system (or "
        "raise the quota), then retry; nothing already stored is lost.",
        kind="disk_full",
    )


def read_only(path: Path) -> StorageError:
    """The database cannot be written by this process; says why."""
    try:
        mounted_ro = bool(os.statvfs(path if path.exists() else path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        mounted_ro = False
    if mounted_ro:
        why = "its file system is mounted read-only"
    elif path.exists() and not os.access(path, os.W_OK):
        why = f"{_user(os.geteuid())} may not write the file"
    else:
        why = f"{_user(os.geteuid())} may not create its -wal and -shm files in {path.parent}"
    return StorageError(
        f"The database {path} is read-only here ({why}). Reading commands (list, show, logs, "
        "stats, audit) still work; a server and commands that change it (run, kill, db) need "
        "to write it: make it writable, or copy it (with its -wal file) somewhere writable.",
        kind="read_only",
    )


def database_locked(path: Path) -> StorageError:
    """Another program holds the database's write lock (named, if /proc/locks shows it)."""
    holders = lock_holders(path)
    who = ", ".join(f"pid {pid} ({name})" for pid, name in holders)
    return StorageError(
        f"The database {path} is locked by another program{f' ({who})' if who else ''}: it "
        f"held the write lock for longer than this waits ({BUSY_TIMEOUT_MS // 1000} s). Let "
        "that program finish, or end its transaction (a sqlite3 shell left inside BEGIN holds "
        "the lock until COMMIT or ROLLBACK), then retry.",
        kind="locked",
    )


def lock_holders(path: Path) -> list[tuple[int, str]]:
    """Other processes holding a write lock on the database or its -shm file, as (pid, name),
    read from ``/proc/locks``. SQLite's write lock is a POSIX lock: in WAL mode on byte 120 of
    the -shm file, in rollback mode on the database file."""
    files = set()
    for p in (path, side_file(path, "-shm")):
        try:
            st = p.stat()
        except OSError:
            continue
        files.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids: list[int] = []
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 15677 fe:00:2146602 120 120" ("->" marks a waiter)
        fields = line.split()
        if len(fields) < 6 or "->" in fields or fields[3] != "WRITE":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if key in files and pid > 0 and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    return [(pid, _process_name(pid)) for pid in pids]


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# --- the writer thread ---------------------------------------------------------------------

#: Write units committed in one transaction at most: bounds how long a group holds the lock.
GROUP_MAX = 64
#: However late a unit comes round, it gets at least this long to take a held lock.
MIN_LOCK_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class _Unit:
    work: Callable[[Connection], Any]
    transaction: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    deadline: float  # time.monotonic() after which it stops waiting for a held lock


class Writer:
    """The process's one write connection, owned by one thread, with group commit.

    Callers hand it units of work (functions of a ``Connection``). Every unit waiting when the
    thread comes round runs in one ``BEGIN IMMEDIATE`` transaction; if one raises, the
    transaction is undone and run again without it, so an error undoes only the unit that
    raised. Units are functions of the database alone, so running one again is safe. A unit
    costs one thread hop however many
    statements it runs (aiosqlite hops once per statement: under CPU load each hop waits for a
    time slice), and concurrent writes share a commit.

    A unit that was handed over is carried out even if its caller is cancelled: the end of a job
    is recorded although the call that recorded it went away.

    While another program holds the write lock, a unit waits for it at most ``lock_wait_s``
    after it was handed over (at least ``MIN_LOCK_WAIT_S`` once its turn comes), then fails
    with "the database is locked by another program": the wait is bounded per unit, not per
    attempt, so units queued behind a stuck one wait together instead of one timeout each in
    turn (a 60 s lock made each write wait its own 10 s, one after the other). Once a wait has
    run out, later units wait ``MIN_LOCK_WAIT_S`` only, until a write goes through again.
    Errors reach callers as ``storage_error`` describes them. If the thread dies (it cannot
    even connect), every waiting and every later unit fails with the reason.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        nice: int = 0,
        path: Path | None = None,
        lock_wait_s: float = BUSY_TIMEOUT_MS / 1000,
    ) -> None:
        self._engine = engine
        self._nice = nice
        self._path = path if path is not None else Path(str(engine.url.database))
        self._lock_wait_s = lock_wait_s
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failed: StorageError | None = None
        self._guard = threading.Lock()  # orders hand-overs with the thread's death
        self._busy_ms = BUSY_TIMEOUT_MS
        #: Until then, another program is known to keep the lock: units fail fast.
        self._stuck_until = 0.0
        #: Units the thread has taken from the queue and not answered yet (for its death).
        self._taken: list[_Unit | None] = []

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        with self._guard:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="db-writer", daemon=True)
                self._thread.start()

    async def run(self, work: Callable[[Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` on the write connection, in a transaction (shared with the other units
        waiting), or alone outside any transaction (``transaction=False``: VACUUM, checkpoints,
        migrations, which manage their own). Starts the thread on first use."""
        if self._closed:
            raise StorageError("The database is closed (the server is stopping).", kind="closed")
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        unit = _Unit(work, transaction, loop, future, time.monotonic() + self._lock_wait_s)
        with self._guard:
            if self._failed is not None:
                raise _again(self._failed)
            self._queue.put(unit)
        return await future

    async def close(self) -> None:
        """Finish the units already handed over, then close the connection."""
        if self._thread is None or self._closed:
            self._closed = True
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _main(self) -> None:
        if self._nice:
            lower_thread_priority(self._nice)
        try:
            self._serve()
        except BaseException as exc:  # nothing may be left waiting for a dead thread
            described = storage_error(exc, self._path)
            failure = described or StorageError(
                f"The database writer stopped: {type(exc).__name__}: {exc}", kind="other"
            )
            # A known cause is said plainly; anything else is a bug: with its traceback.
            log.error(  # noqa: TRY400
                "db_writer_failed path=%s error=%s", self._path, failure, exc_info=described is None
            )
            with self._guard:
                self._failed = failure
                # Units taken but not answered (a settled one is skipped), then the queue.
                left = [u for u in self._taken if u is not None]
                while True:
                    try:
                        unit = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if unit is not None:
                        left.append(unit)
            _deliver([(u, False, _again(failure)) for u in left])

    def _serve(self) -> None:
        carry: list[_Unit | None] = []
        with self._engine.connect() as conn:
            while True:
                unit = carry.pop() if carry else self._queue.get()
                self._taken = [unit]
                if unit is None:
                    return
                if not unit.transaction:
                    self._run_alone(conn, unit)
                    continue
                group = [unit]
                while len(group) < GROUP_MAX:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None or not more.transaction:
                        carry.append(more)
                        break
                    group.append(more)
                self._taken = [*group, *carry]
                self._run_group(conn, group)

    def _wait_until(self, conn: Connection, deadline: float) -> bool:
        """Set the busy timeout to what is left until ``deadline`` (at least MIN_LOCK_WAIT_S);
        only MIN_LOCK_WAIT_S while the lock is known to be stuck (see ``_run_group``). True
        in that case: the attempt is the units' last."""
        now = time.monotonic()
        stuck = now < self._stuck_until
        left = MIN_LOCK_WAIT_S if stuck else max(deadline - now, MIN_LOCK_WAIT_S)
        ms = min(BUSY_TIMEOUT_MS, int(left * 10) * 100)  # in steps of 100 ms: few changes
        if ms != self._busy_ms:
            _driver_pragma(conn, f"busy_timeout={ms}")
            self._busy_ms = ms
        return stuck

    def _error(self, exc: Exception) -> Exception:
        return storage_error(exc, self._path) or exc

    def _run_alone(self, conn: Connection, unit: _Unit) -> None:
        self._wait_until(conn, unit.deadline)
        try:
            outcome = (unit, True, unit.work(conn))
            self._stuck_until = 0.0
        except Exception as exc:  # noqa: BLE001 (handed to the caller)
            if is_locked(exc):
                self._stuck_until = time.monotonic() + self._lock_wait_s
            outcome = (unit, False, self._error(exc))
        finally:
            if conn.in_transaction():
                conn.rollback()
        _deliver([outcome])

    def _run_group(self, conn: Connection, group: list[_Unit]) -> None:
        outcomes: list[_Outcome] = []
        while group:
            last_try = self._wait_until(conn, min(u.deadline for u in group))
            done: list[_Outcome] = []
            try:
                with conn.begin():
                    for unit in group:
                        try:
                            done.append((unit, True, unit.work(conn)))
                        except Exception as exc:
                            raise _UnitFailed(unit, exc) from exc
            except _UnitFailed as failed:
                if not is_locked(failed.error):
                    # The whole transaction is undone; the others run again without that
                    # unit. (Cheaper than a savepoint around every unit: errors are rare.)
                    outcomes.append((failed.unit, False, self._error(failed.error)))
                    group = [u for u in group if u is not failed.unit]
                    continue
                error: Exception = failed.error
            except Exception as exc:  # noqa: BLE001 (begin or commit failed: to every caller)
                error = exc
            else:
                outcomes += done
                self._stuck_until = 0.0
                break
            described = self._error(error)
            if not is_locked(error):
                outcomes += [(u, False, _copy(described)) for u in group]
                break
            # Locked out. Whoever holds the lock has held it for the whole wait: until a write
            # goes through, units wait MIN_LOCK_WAIT_S only, instead of a full wait each.
            # Units past their deadline fail; the others try again for the time they have
            # left (the first deadline has passed, so each round fails someone).
            now = time.monotonic()
            self._stuck_until = now + self._lock_wait_s
            expired = group if last_try else [u for u in group if u.deadline <= now + 0.05]
            expired = expired or group[:1]
            outcomes += [(u, False, _copy(described)) for u in expired]
            group = [u for u in group if all(u is not e for e in expired)]
        _deliver(outcomes)


_Outcome = tuple[_Unit, bool, Any]


class _UnitFailed(Exception):
    def __init__(self, unit: _Unit, error: Exception) -> None:
        super().__init__(str(error))
        self.unit, self.error = unit, error


def _again(error: StorageError) -> StorageError:
    """A fresh copy of ``error`` to raise (raising one instance twice piles up tracebacks)."""
    return StorageError(str(error), kind=error.kind)


def _copy(error: Exception) -> Exception:
    return _again(error) if isinstance(error, StorageError) else error


def _driver_pragma(conn: Connection, pragma: str) -> None:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute(f"PRAGMA {pragma}").close()


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand results to their callers: one wake-up of each event loop for the whole group (each
    wake-up is a write to the loop's self-pipe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, some in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, some)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.debug("write_results_undelivered count=%d", len(some))


def _settle(outcomes: list[_Outcome]) -> None:
    for unit, ok, value in outcomes:
        if unit.future.done():  # the caller was cancelled; the write happened anyway
            continue
        if ok:
            unit.future.set_result(value)
        else:
            unit.future.set_exception(value)


# --- migrations ----------------------------------------------------------------------------


def migrations_dir() -> Path:
    """The Alembic scripts: inside the installed package, or the checkout's ``migrations/``."""
    packaged = Path(str(resources.files(__package__ or "mcp_background_job"))) / "migrations"
    if (packaged / "env.py").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise StorageError(
        f"Alembic migrations not found (looked in {packaged} and {checkout}); "
        "reinstall mcp-background-job."
    )


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _revisions(scripts: str) -> tuple[frozenset[str], str | None]:
    """The revisions the scripts in ``scripts`` know, and their head (read once per process)."""
    script = ScriptDirectory(scripts)
    return frozenset(rev.revision for rev in script.walk_revisions()), script.get_current_head()


def head_revision() -> str | None:
    """The newest schema revision this version knows."""
    return _revisions(str(migrations_dir()))[1]


def refuse_unknown(current: str | None) -> str | None:
    """``current``, unless it is a revision this version does not know (a newer version's)."""
    known, head = _revisions(str(migrations_dir()))
    if current is not None and current not in known:
        raise StorageError(
            f"The database is at schema revision {current!r}, which this version of "
            f"mcp-background-job does not know (newest known: {head!r}). "
            "It was written by a newer version: upgrade mcp-background-job, or use another --db."
        )
    return current


def check_revision(connection: Connection, cfg: Config) -> str | None:
    """The database's revision; refuse one this version of the package does not know."""
    return refuse_unknown(MigrationContext.configure(connection).get_current_revision())


def schema_revision(connection: Connection, path: Path) -> str | None:
    """The database's schema revision, read without taking the write lock (None: no schema
    yet); refuses a revision this version does not know, and a database of another program
    (tables, but none of ours)."""
    names = set(
        connection.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' "
            "ESCAPE '!'"
        ).scalars()
    )
    if "alembic_version" not in names:
        if names:
            raise StorageError(
                f"{path} is an SQLite database of another program (tables: "
                f"{', '.join(sorted(names)[:5])}), not of mcp-background-job. {_DB_HINT}",
                kind="not_a_database",
            )
        return None
    current = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    return refuse_unknown(current)


def migrate_to(connection: Connection, revision: str = "head", *, downgrade: bool = False) -> None:
    """Move the schema to ``revision`` in one ``BEGIN IMMEDIATE``, with foreign keys off and
    ``legacy_alter_table`` on; refuse a database written by a newer version.

    Foreign keys must be off while batch migrations recreate tables (a cascade would delete child
    rows). ``legacy_alter_table`` keeps the views working through a batch migration: without it,
    renaming the rebuilt ``_alembic_tmp_jobs`` back to ``jobs`` fails with "error in view
    job_summary: no such table: main.jobs", because SQLite checks every view when a table is
    renamed while the old table is already gone. Both pragmas are no-ops inside a transaction,
    so they are set on the raw connection first.
    """
    raw = connection.connection.dbapi_connection
    assert raw is not None
    _pragmas(raw, "foreign_keys=OFF", "legacy_alter_table=ON")
    try:
        cfg = alembic_config(connection)
        with connection.begin():
            check_revision(connection, cfg)
            if downgrade:
                command.downgrade(cfg, revision)
            else:
                command.upgrade(cfg, revision)
            problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if problems:
                raise StorageError(f"migration left dangling references: {problems[:5]}")
    except StorageError:
        raise
    except Exception as exc:  # any failure here means the database cannot be used
        described = storage_error(exc, Path(str(connection.engine.url.database)))
        raise described or StorageError(f"Could not migrate the database: {exc}") from exc
    finally:
        _pragmas(raw, "foreign_keys=ON", "legacy_alter_table=OFF")


def upgrade_to_head(connection: Connection) -> None:
    """Apply pending migrations (see ``migrate_to``)."""
    migrate_to(connection, "head")


def _pragmas(raw: Any, *pragmas: str) -> None:
    cur = raw.cursor()
    for pragma in pragmas:
        cur.execute(f"PRAGMA {pragma}")
    cur.close()
