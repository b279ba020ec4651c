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
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

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


def _configure(engine: Engine, *, begin: str, manual_checkpoints: bool = False) -> None:
    """Per-connection pragmas, and transactions begun by us instead of the legacy driver logic.

    ``BEGIN IMMEDIATE`` for writers takes the write lock up front so the busy timeout applies; a
    deferred ``BEGIN`` that later upgrades to a write fails at once with "database is locked".
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if manual_checkpoints:
            # Checkpoints copy the WAL into the file and fsync it: the costliest part of storing
            # output. The owner runs them when output has been stored, not after every commit.
            cur.execute("PRAGMA wal_autocheckpoint=0")
        for pragma in (
            # Big output rows are written ~1.7x faster with 64 KiB pages than with 4 KiB ones;
            # it only applies to a new database (before its first table), else it is a no-op.
            "page_size=65536",
            "journal_mode=WAL",
            "synchronous=NORMAL",
            f"busy_timeout={BUSY_TIMEOUT_MS}",
            "foreign_keys=ON",
            f"journal_size_limit={64 * 1024 * 1024}",
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)


def ensure_db_file(path: Path) -> None:
    """Create the database file (and its folder) readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def lower_thread_priority(nice: int) -> int:
    """Raise the calling thread's nice value (Linux threads have their own); returns it."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    return os.getpriority(os.PRIO_PROCESS, tid)


def make_sync_engine(
    path: Path, *, writer: bool = True, pool_size: int = 5, manual_checkpoints: bool = False
) -> Engine:
    """A plain sqlite3 engine: the store's writer and readers (run in threads), Alembic's
    command line."""
    engine = create_engine(
        URL.create("sqlite", database=str(path)), pool_size=pool_size, max_overflow=0
    )
    _configure(
        engine,
        begin="BEGIN IMMEDIATE" if writer else "BEGIN",
        manual_checkpoints=manual_checkpoints,
    )
    return engine


#: Write units committed in one transaction at most: bounds how long a group holds the lock.
GROUP_MAX = 64


@dataclass(frozen=True, slots=True)
class _Unit:
    work: Callable[[Connection], Any]
    transaction: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


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
    """

    def __init__(self, engine: Engine, *, nice: int = 0) -> None:
        self._engine = engine
        self._nice = nice
        self._queue: queue.SimpleQueue[_Unit | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="db-writer", daemon=True)
        self._thread.start()

    async def run(self, work: Callable[[Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` on the write connection, in a transaction (shared with the other units
        waiting), or alone outside any transaction (``transaction=False``: VACUUM, checkpoints,
        migrations, which manage their own)."""
        if self._thread is None or self._closed:
            raise StorageError("The database is closed (the server is stopping).")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Unit(work, transaction, loop, future))
        return await future

    async def close(self) -> None:
        """Finish the units already handed over, then close the connection."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _main(self) -> None:
        if self._nice:
            lower_thread_priority(self._nice)
        carry: list[_Unit | None] = []
        with self._engine.connect() as conn:
            while True:
                unit = carry.pop() if carry else self._queue.get()
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
                self._run_group(conn, group)

    def _run_alone(self, conn: Connection, unit: _Unit) -> None:
        try:
            outcome = (unit, True, unit.work(conn))
        except Exception as exc:  # noqa: BLE001 (handed to the caller)
            outcome = (unit, False, exc)
        finally:
            if conn.in_transaction():
                conn.rollback()
        _deliver([outcome])

    def _run_group(self, conn: Connection, group: list[_Unit]) -> None:
        outcomes: list[_Outcome] = []
        while group:
            done: list[_Outcome] = []
            try:
                with conn.begin():
                    for unit in group:
                        try:
                            done.append((unit, True, unit.work(conn)))
                        except Exception as exc:
                            raise _UnitFailed(unit, exc) from exc
            except _UnitFailed as failed:
                # The whole transaction is undone; the others run again without that unit.
                # (Cheaper than a savepoint around every unit: errors are rare.)
                outcomes.append((failed.unit, False, failed.error))
                group = [u for u in group if u is not failed.unit]
                continue
            except Exception as exc:  # noqa: BLE001 (the commit failed: to every caller)
                done = [(u, False, exc) for u in group]
            outcomes += done
            break
        _deliver(outcomes)


_Outcome = tuple[_Unit, bool, Any]


class _UnitFailed(Exception):
    def __init__(self, unit: _Unit, error: Exception) -> None:
        super().__init__(str(error))
        self.unit, self.error = unit, error


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


def check_revision(connection: Connection, cfg: Config) -> str | None:
    """The database's revision; refuse one this version of the package does not know."""
    current = MigrationContext.configure(connection).get_current_revision()
    script = ScriptDirectory.from_config(cfg)
    known = {rev.revision for rev in script.walk_revisions()}
    if current is not None and current not in known:
        raise StorageError(
            f"The database is at schema revision {current!r}, which this version of "
            f"mcp-background-job does not know (newest known: {script.get_current_head()!r}). "
            "It was written by a newer version: upgrade mcp-background-job, or use another --db."
        )
    return current


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
        raise StorageError(f"Could not migrate the database: {exc}") from exc
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
