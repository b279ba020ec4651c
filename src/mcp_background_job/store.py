"""The storage gateway: the only module that writes SQL. It returns frozen records from ``jobs``.

All writes of a process go through one connection owned by one thread (``db.Writer``), which
commits the writes waiting at the same moment together (``BEGIN IMMEDIATE``): SQLite has one
writer anyway, and a single writer path keeps commit latency flat. Reads run in a small pool of
reader threads, each read in one trip and one short transaction, so a read never holds the WAL
open. Either way a call costs one thread hop, not one per statement.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Executable,
    Integer,
    Row,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import aliased

from . import db
from .db import (
    AuditEventRow,
    JobDependencyRow,
    JobEventRow,
    JobLabelRow,
    JobRow,
    OutputChunkRow,
    ServerRow,
    utcnow,
)
from .errors import InvalidRequest, JobNotFound, StorageError, TransitionConflict
from .jobs import (
    ACTIVE,
    TERMINAL,
    AuditEvent,
    Chunk,
    EndCause,
    Job,
    JobEvent,
    JobOptions,
    JobStatus,
    ServerInstance,
    Stream,
    decide_outcome,
    dependency_failure,
    sources_of,
)

T = TypeVar("T")

#: What a database call raises when the database could not be used (locked, disk full, I/O):
#: worth trying again later, unlike a lost race (``TransitionConflict``) or a bug.
STORAGE_FAILURES: tuple[type[Exception], ...] = (StorageError, DBAPIError)

#: SQLite's substr() takes lengths below 2**31; rows are far smaller anyway.
_SQL_MAX = 1 << 30

#: Job ids are this many lowercase hex characters.
JOB_ID_LENGTH = 12
#: Chunks fetched per round trip when walking output in order or backwards.
_ROWS_PER_FETCH = 16
#: Rows deleted per transaction when pruning: deleting a 1 GiB job this way kept each
#: transaction under ~260 ms, so tool calls of every server wait at most that long.
PRUNE_BATCH_ROWS = 1000
#: Jobs whose rows (events and labels cascading) are deleted in one transaction.
_PRUNE_JOBS_PER_TXN = 200
#: ``--keep-failed``: jobs that failed or ran out of time are kept.
FAILURES = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT})


@dataclass(slots=True)
class OutputBatch:
    """What one ingestion pass learned about one job, stored in one transaction with the others."""

    job_id: str
    chunks: list[tuple[Stream, int, int, bytes]] = field(
        default_factory=list
    )  # stream, seq, off, data
    drops: list[tuple[Stream, int, int]] = field(default_factory=list)  # delete offsets [lo, hi)
    counters: dict[str, int] = field(default_factory=dict)  # e.g. {"stdout_bytes": 123}


@dataclass(frozen=True, slots=True)
class QueueState:
    """One server's queue as one read saw it (see ``Store.queue_state``)."""

    startable: list[Job]
    doomed: list[tuple[str, str]]  # (job id, why it can never start)
    queued: int


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: JobStatus | None = None
    label: str | None = None
    command_contains: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    statuses: frozenset[JobStatus] = frozenset()  # any of these (with ``status``: both apply)
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One row of ``job_events``: a job was created (``created``) or changed status."""

    event_id: int
    job_id: str
    status: JobStatus
    created: bool


@dataclass(frozen=True, slots=True)
class PruneCandidate:
    job_id: str
    status: JobStatus
    ended_at: datetime
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    jobs: int = 0
    chunks: int = 0
    output_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """Totals over the whole database. Byte totals come from the job rows (no data is read)."""

    jobs: int
    by_status: tuple[tuple[JobStatus, int], ...]
    written_bytes: int
    stored_bytes: int
    dropped_bytes: int
    first_created: datetime | None
    last_created: datetime | None
    page_size: int
    page_count: int
    free_pages: int
    longest: tuple[Job, ...]


def _job(row: Row[Any], events: Sequence[JobEvent] = ()) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        command=m["command"],
        cwd=m["cwd"],
        shell=m["shell"],
        env=json.loads(m["env"]),
        labels=tuple(json.loads(m["labels"])) if m["labels"] else (),
        status=JobStatus(m["status"]),
        created_at=m["created_at"],
        owner_id=m["owner_id"],
        timeout_s=m["timeout_s"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        exit_code=m["exit_code"],
        signal=m["signal"],
        reason=m["reason"],
        pid=m["pid"],
        pid_start=m["pid_start"],
        boot_id=m["boot_id"],
        stdout_bytes=m["stdout_bytes"],
        stderr_bytes=m["stderr_bytes"],
        stdout_stored=m["stdout_stored"],
        stderr_stored=m["stderr_stored"],
        stdout_dropped=m["stdout_dropped"],
        stderr_dropped=m["stderr_dropped"],
        end_cause=EndCause(m["end_cause"]) if m["end_cause"] else None,
        pty=bool(m["pty"]),
        rows=m["term_rows"],
        cols=m["term_cols"],
        priority=m["priority"],
        idle_timeout_s=m["idle_timeout_s"],
        after=tuple(sorted(json.loads(m["after"]))) if m["after"] else (),
        run_anyway=bool(m["run_anyway"]),
        rerun_of=m["rerun_of"],
        start_attempted_at=m["start_attempted_at"],
        events=tuple(events),
    )


def _json_list(values: Any, job_id: Any, name: str) -> Any:
    """A column of the job's rows in another table (``values`` where ``job_id`` is the job's),
    as one JSON array."""
    return (
        select(func.json_group_array(values))
        .where(job_id == JobRow.id)
        .correlate(JobRow)
        .scalar_subquery()
        .label(name)
    )


_JOB_COLUMNS = (
    *JobRow.__table__.columns,
    _json_list(JobLabelRow.label, JobLabelRow.job_id, "labels"),
    _json_list(JobDependencyRow.depends_on, JobDependencyRow.job_id, "after"),
)
_DEP = aliased(JobRow, name="dep")


def _has_dependency(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """True for a job with a dependency (``_DEP``) meeting ``conditions``."""
    return exists(
        select(1)
        .select_from(JobDependencyRow)
        .join(_DEP, _DEP.id == JobDependencyRow.depends_on)
        .where(JobDependencyRow.job_id == JobRow.id, *conditions)
    )


# The statements run for every job (loads and status changes) are built once, with bind
# parameters: building one per call cost more than running it (its cache key is computed anew
# each time; a built statement keeps its own).
_LOAD_JOB = select(*_JOB_COLUMNS).where(JobRow.id == bindparam("job_id"))
_WAITING_ON = (
    select(_DEP.id)
    .select_from(JobDependencyRow)
    .join(_DEP, _DEP.id == JobDependencyRow.depends_on)
    .where(JobDependencyRow.job_id == bindparam("job_id"), _DEP.status.in_(ACTIVE))
    .order_by(_DEP.id)
)
_EVENTS = (
    select(JobEventRow).where(JobEventRow.job_id == bindparam("job_id")).order_by(JobEventRow.id)
)
#: The SET clause comes from the parameters given with it (``b_`` names are the WHERE's).
_SET_STATUS = update(JobRow).where(
    JobRow.id == bindparam("b_id"), JobRow.status == bindparam("b_from")
)


# ``command_contains`` on a big history. The trigram index gives candidates (jobs holding some
# trigrams of the text), LIKE checks them. Costs measured on 100,000 jobs (64 KiB pages): a job
# looked up by rowid ~11 us (a page read each); a step along the created_at index ~0.08 us; a
# job scanned with LIKE ~0.5 us; each common trigram in the index query ~0.45 us per 1,000 jobs.
#: Up to this many candidates, they are looked up by rowid and sorted.
SEARCH_LOOKUP_MAX = 200
#: Up to this many, the newest-first index walk checks each entry's rowid against them (rows are
#: read only for candidates). More mean the text is common: the plain LIKE scan, newest first,
#: finds a page sooner than collecting them would.
SEARCH_MAX_CANDIDATES = 5000
#: Most trigrams in one index query: each common one costs a pass over its whole list.
_SEARCH_MAX_TRIGRAMS = 8
_SEARCH = f"SELECT rowid FROM {db.SEARCH_TABLE} WHERE {db.SEARCH_TABLE} MATCH ? LIMIT ?"
_ROWID: ColumnElement[int] = literal_column("jobs.rowid", Integer)
# A unary plus keeps SQLite from looking the candidates up by rowid: it walks the created_at
# index instead and checks the rowid in each entry (no row read unless it is a candidate).
_ROWID_NOT_INDEXED: ColumnElement[int] = literal_column("+jobs.rowid", Integer)


def search_match(needle: str) -> str | None:
    """An FTS5 query for jobs whose command holds trigrams of ``needle`` that cover all of it (a
    superset of those containing it: the trigram tokenizer folds case, as ``LIKE`` does for
    ASCII), or None when the index cannot help: under 3 characters, or a NUL (which ends an
    FTS5 string)."""
    if len(needle) < 3 or "\x00" in needle:
        return None
    # Trigrams side by side (and the last one) cover every character; overlapping ones would
    # hardly narrow the candidates and each costs a pass over its list.
    starts = [*range(0, len(needle) - 2, 3), len(needle) - 3]
    grams = list(dict.fromkeys(needle[i : i + 3] for i in starts))
    if len(grams) > _SEARCH_MAX_TRIGRAMS:
        step = (len(grams) - 1) / (_SEARCH_MAX_TRIGRAMS - 1)
        grams = [grams[round(i * step)] for i in range(_SEARCH_MAX_TRIGRAMS)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


def _search_candidates(conn: Connection, match: str) -> list[int] | None:
    """Rowids of the jobs the index finds for ``match``; None if over ``SEARCH_MAX_CANDIDATES``.

    Read with the driver's cursor, in the same transaction: thousands of bare integers through
    SQLAlchemy's result rows cost ~0.3 ms more.
    """
    driver: Any = conn.connection.driver_connection
    rows = driver.execute(_SEARCH, (match, SEARCH_MAX_CANDIDATES + 1)).fetchall()
    return [r[0] for r in rows] if len(rows) <= SEARCH_MAX_CANDIDATES else None


def _load(conn: Connection, job_id: str, events: bool = True) -> Job:
    key = {"job_id": job_id}
    row = conn.execute(_LOAD_JOB, key).first()
    if row is None:
        raise JobNotFound(job_id)
    waiting_on: tuple[str, ...] = ()
    if row._mapping["status"] == JobStatus.QUEUED and row._mapping["after"] != "[]":
        waiting_on = tuple(conn.execute(_WAITING_ON, key).scalars().all())
    evs: list[JobEvent] = []
    if events:
        for e in conn.execute(_EVENTS, key):
            evs.append(
                JobEvent(
                    at=e.at,
                    from_status=JobStatus(e.from_status) if e.from_status else None,
                    to_status=JobStatus(e.to_status),
                    reason=e.reason,
                    server_id=e.server_id,
                )
            )
    return replace(_job(row, evs), waiting_on=waiting_on)


def _transition(
    conn: Connection,
    job: Job,
    to: JobStatus,
    server_id: str | None,
    reason: str | None,
    only_from: frozenset[JobStatus] | None,
    values: Mapping[str, Any] | None,
) -> Job:
    """Move ``job`` (as read in this transaction) to ``to``, with its event row."""
    allowed = sources_of(to) & (only_from if only_from is not None else sources_of(to))
    if job.status not in allowed:
        raise TransitionConflict(
            f"job {job.id} is {job.status}; cannot move to {to} "
            f"(allowed from: {', '.join(sorted(allowed))})"
        )
    now = utcnow()
    row_values: dict[str, Any] = {"status": to, **(values or {})}
    if to is JobStatus.RUNNING:
        row_values.setdefault("started_at", now)
    if to.is_terminal:
        row_values.setdefault("ended_at", now)
        row_values.setdefault("reason", reason)
    result = conn.execute(_SET_STATUS, {"b_id": job.id, "b_from": job.status, **row_values})
    if result.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; never overwrite
        raise TransitionConflict(f"job {job.id} changed status during the update")
    conn.execute(
        insert(JobEventRow),
        {
            "job_id": job.id,
            "at": now,
            "from_status": job.status,
            "to_status": to,
            "reason": reason,
            "server_id": server_id,
        },
    )
    return replace(job, **row_values)


def _server(row: Row[Any]) -> ServerInstance:
    m = row._mapping
    return ServerInstance(
        id=m["id"],
        pid=m["pid"],
        pid_start=m["pid_start"],
        boot_id=m["boot_id"],
        hostname=m["hostname"],
        started_at=m["started_at"],
        stopped_at=m["stopped_at"],
    )


def encode_list_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_list_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"Invalid list cursor {cursor!r}: pass the next_cursor value of a previous `list` "
            "result unchanged, or omit cursor to start from the newest job."
        ) from exc


class Store:
    """Jobs, events, output chunks and server instances in one SQLite file."""

    def __init__(self, path: Path, *, read_pool: int = 4, writer_nice: int = 0) -> None:
        self.path = path
        self._read_pool_size = read_pool
        self._write_engine = db.make_sync_engine(path, pool_size=1, manual_checkpoints=True)
        # Most writes are output; a nicer writer thread leaves the CPU to the jobs producing it.
        self._writer = db.Writer(self._write_engine, nice=writer_nice, path=path)
        self._sync_reader = db.make_sync_engine(path, writer=False, pool_size=read_pool)
        self._read_pool = ThreadPoolExecutor(read_pool, "db-read")
        #: Why this store cannot write (opened for reading a database it may not change).
        self._no_writes: StorageError | None = None

    @property
    def read_only(self) -> bool:
        return self._no_writes is not None

    async def open(self, *, create: bool = True, reading: bool = False) -> None:
        """Check the file, create it if missing (``create``; owner-only, all at once) and
        migrate it to the newest schema if it is older.

        The schema revision is read without the write lock: a database already at the newest
        schema opens while another program holds the lock. ``reading``: the caller only reads
        (the command line's list, show, logs, stats, audit). A database it cannot write, or
        another user's, is then opened read-only instead of refused, and nothing is created.
        Any failure closes the store again (no writer thread is left behind).
        """
        try:
            await self._open(create=create, reading=reading)
        except BaseException:
            await self.close()
            raise

    async def _open(self, *, create: bool, reading: bool) -> None:
        path = self.path
        check = db.inspect_file if reading else db.check_for_writing
        if not await asyncio.to_thread(check, path):
            if not create:
                raise db.no_database(path)
            await asyncio.to_thread(db.create_database, path)
        if reading and not (db.writable(path) and db.is_owned(path)):
            await self._open_read_only()
        try:
            revision = await self._query(lambda conn: db.schema_revision(conn, path))
        except StorageError as error:
            # A full disk leaves no room for the -shm file SQLite needs to read a WAL database
            # (measured: a 3-byte -shm, "disk full" for every read): read it read-only.
            if not reading or self._no_writes is not None or error.kind != "disk_full":
                raise
            await self._open_read_only(error)
            revision = await self._query(lambda conn: db.schema_revision(conn, path))
        if revision == db.head_revision():
            if not reading:
                self._writer.start()
            return
        if self._no_writes is not None:
            raise StorageError(
                f"The database {path} is at schema revision {revision or 'none'}, older than "
                f"this version's ({db.head_revision()}), and cannot be upgraded here: "
                f"{self._no_writes}",
                kind=self._no_writes.kind,
            )
        if reading and revision is None:
            raise StorageError(
                f"{path} holds no mcp-background-job history (an SQLite database without "
                "tables). Pass --db PATH (or set MCP_BACKGROUND_JOB_DB) to the database your "
                "MCP server uses.",
                kind="not_a_database",
            )
        await self._writer.run(db.upgrade_to_head, transaction=False)

    async def _open_read_only(self, why: StorageError | None = None) -> None:
        """Readers that never write: SQLite's ``mode=ro``, or ``immutable`` where that cannot
        open a WAL database (a read-only mount, or a full disk, without the -shm file; measured
        on 3.40). An immutable reader ignores a -wal file, so it is used only when there is
        none (then no server has the database open: a server's connections keep a -wal)."""
        path = self.path
        if why is None and not db.writable(path):
            why = db.read_only(path)
        self._no_writes = why or StorageError(
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
                await self._query(_read_schema)
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
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    async def checkpoint(self) -> None:
        """Copy the WAL into the database file (without waiting for readers), on the writer
        connection: a second connection checkpointing while this one writes can hit a WAL-reset
        bug in SQLite < 3.51.3."""
        await self._write(
            lambda conn: _driver_sql(conn, "PRAGMA wal_checkpoint(PASSIVE)"), transaction=False
        )

    async def _write(self, work: Callable[[Connection], T], *, transaction: bool = True) -> T:
        """Run ``work`` in a write transaction (maybe shared with other writes: group commit),
        or alone outside one (``transaction=False``, see ``db.Writer.run``)."""
        if self._no_writes is not None:
            raise StorageError(str(self._no_writes), kind=self._no_writes.kind)
        return await self._writer.run(work, transaction=transaction)

    # --- servers --------------------------------------------------------------------------

    async def register_server(self, server: ServerInstance, version: str) -> None:
        row = {
            "id": server.id,
            "pid": server.pid,
            "pid_start": server.pid_start,
            "boot_id": server.boot_id,
            "hostname": server.hostname,
            "version": version,
            "started_at": server.started_at,
        }
        await self._write(lambda conn: conn.execute(insert(ServerRow), row))

    async def mark_server_stopped(self, server_id: str) -> None:
        stmt = (
            update(ServerRow)
            .where(ServerRow.id == server_id, ServerRow.stopped_at.is_(None))
            .values(stopped_at=utcnow())
        )
        await self._write(lambda conn: conn.execute(stmt))

    async def servers_not_stopped(self, exclude: str = "") -> list[ServerInstance]:
        query = select(ServerRow).where(ServerRow.stopped_at.is_(None), ServerRow.id != exclude)
        return await self._query(lambda conn: [_server(r) for r in conn.execute(query)])

    # --- jobs -----------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        job_id: str,
        command: str,
        cwd: str,
        shell: str,
        env: Mapping[str, str],
        labels: Iterable[str],
        timeout_s: float | None,
        owner_id: str,
        options: JobOptions = JobOptions(),  # noqa: B008 (frozen)
        audit: AuditEvent | None = None,
        starting_on: str | None = None,
    ) -> Job:
        """Record a new queued job with its labels and dependencies.

        Every id in ``options.after`` must name an existing job (``InvalidRequest`` otherwise).
        Dependencies can only name jobs that exist already and never change afterwards, so
        they cannot form a cycle.

        ``audit``: an event about the job written in the same transaction (its ``job_id`` is set
        here): if it cannot be written, neither is the job, so nothing runs unaudited.
        ``starting_on``: the boot id of the server about to spawn the job at once; its intent to
        start is recorded with the row (see ``mark_start_attempt``).
        """
        now = utcnow()
        intent = now if starting_on is not None else None
        opts = options
        after = sorted(set(opts.after))
        unique = sorted(set(labels))
        row = {
            "id": job_id,
            "command": command,
            "cwd": cwd,
            "shell": shell,
            "env": json.dumps(dict(env)),
            "status": JobStatus.QUEUED,
            "created_at": now,
            "timeout_s": timeout_s,
            "owner_id": owner_id,
            "pty": opts.pty,
            "term_rows": opts.rows,
            "term_cols": opts.cols,
            "priority": opts.priority,
            "idle_timeout_s": opts.idle_timeout_s,
            "run_anyway": opts.run_anyway,
            "rerun_of": opts.rerun_of,
            "start_attempted_at": intent,
            "boot_id": starting_on,
        }
        audit_row = _audit_row(replace(audit, job_id=job_id), now) if audit is not None else None

        def work(conn: Connection) -> None:
            if after:
                found = set(
                    conn.execute(select(JobRow.id).where(JobRow.id.in_(after))).scalars().all()
                )
                missing = [d for d in after if d not in found]
                if missing:
                    raise InvalidRequest(
                        f"after: no job with id {', '.join(map(repr, missing))}. Give ids of "
                        "existing jobs (see `list`)."
                    )
            # Parameters rather than .values(): the statement's cache key stays the same.
            conn.execute(insert(JobRow), row)
            if unique:
                conn.execute(
                    insert(JobLabelRow),
                    [{"job_id": job_id, "label": lb, "job_created_at": now} for lb in unique],
                )
            if after:
                conn.execute(
                    insert(JobDependencyRow), [{"job_id": job_id, "depends_on": d} for d in after]
                )
            conn.execute(
                insert(JobEventRow),
                {"job_id": job_id, "at": now, "to_status": JobStatus.QUEUED, "server_id": owner_id},
            )
            if audit_row is not None:
                conn.execute(insert(AuditEventRow), audit_row)

        await self._write(work)
        return Job(
            id=job_id,
            command=command,
            cwd=cwd,
            shell=shell,
            env=dict(env),
            labels=tuple(unique),
            status=JobStatus.QUEUED,
            created_at=now,
            owner_id=owner_id,
            timeout_s=timeout_s,
            pty=opts.pty,
            rows=opts.rows,
            cols=opts.cols,
            priority=opts.priority,
            idle_timeout_s=opts.idle_timeout_s,
            after=tuple(after),
            run_anyway=opts.run_anyway,
            rerun_of=opts.rerun_of,
            boot_id=starting_on,
            start_attempted_at=intent,
            events=(JobEvent(now, None, JobStatus.QUEUED, None, owner_id),),
        )

    async def mark_start_attempt(self, job_id: str, server_id: str, boot_id: str) -> Job:
        """Record that ``server_id`` is about to spawn its queued job, before it does: a queued
        job with the mark may have run, so no server starts it again (a server that takes it
        over looks for its processes instead). Raises ``TransitionConflict`` if the job is no
        longer this server's to start (ended, or marked already)."""
        stmt = (
            update(JobRow)
            .where(
                JobRow.id == job_id,
                JobRow.status == JobStatus.QUEUED,
                JobRow.owner_id == server_id,
                JobRow.start_attempted_at.is_(None),
            )
            .values(start_attempted_at=bindparam("at"), boot_id=boot_id)
        )

        def work(conn: Connection) -> Job:
            if conn.execute(stmt, {"at": utcnow()}).rowcount != 1:
                job = _load(conn, job_id, events=False)
                raise TransitionConflict(
                    f"job {job_id} is {job.status} (owner {job.owner_id}); it cannot be started "
                    "by this server"
                )
            return _load(conn, job_id, events=False)

        return await self._write(work)

    async def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        server_id: str | None,
        reason: str | None = None,
        only_from: frozenset[JobStatus] | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> Job:
        """Move a job to ``to`` if its current status allows it, with its event row, atomically.

        Raises ``TransitionConflict`` if the job is not in an allowed status (someone else moved
        it first); never overwrites a status it did not expect. The returned job has no events.
        """

        def work(conn: Connection) -> Job:
            job = _load(conn, job_id, events=False)
            return _transition(conn, job, to, server_id, reason, only_from, values)

        return await self._write(work)

    async def record_exit(
        self,
        job_id: str,
        returncode: int,
        ended_at: datetime,
        *,
        server_id: str,
        disk_full: bool = False,
    ) -> Job:
        """Record how a running job's main process ended, reading why the server was stopping
        it (if it was) in the same transaction, so a kill requested by any server counts.

        A job still queued with its start intent recorded (its server died before it recorded
        ``running``, and its exit was found later) is moved to running first, from the time of
        the intent, so its events tell what happened."""

        def work(conn: Connection) -> Job:
            job = _load(conn, job_id, events=False)
            if job.status is JobStatus.QUEUED and job.start_attempted_at is not None:
                job = _transition(
                    conn,
                    job,
                    JobStatus.RUNNING,
                    server_id,
                    None,
                    frozenset({JobStatus.QUEUED}),
                    {"started_at": job.start_attempted_at},
                )
            out = decide_outcome(returncode, job.end_cause, job.idle_timeout_s, disk_full=disk_full)
            return _transition(
                conn,
                job,
                out.status,
                server_id,
                out.reason,
                frozenset({JobStatus.RUNNING}),
                {"exit_code": out.exit_code, "signal": out.signal, "ended_at": ended_at},
            )

        return await self._write(work)

    async def request_end(self, job_id: str, cause: EndCause) -> Job:
        """Record why the server is stopping an active job, before any signal is sent; the first
        cause wins (a timeout that fires during a kill stays a kill), except that an interrupt
        note gives way to any real stop request."""
        unset: ColumnElement[bool] = JobRow.end_cause.is_(None)
        if cause is not EndCause.INTERRUPT:
            unset = or_(unset, JobRow.end_cause == EndCause.INTERRUPT)
        stmt = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), unset)
            .values(end_cause=cause)
        )

        def work(conn: Connection) -> Job:
            conn.execute(stmt)
            return _load(conn, job_id)

        return await self._write(work)

    async def claim(self, job_id: str, from_owner: str | None, to_owner: str) -> bool:
        """Take over an active job of a dead server; False if another server took it first."""
        owner = JobRow.owner_id.is_(None) if from_owner is None else JobRow.owner_id == from_owner
        stmt = (
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), owner)
            .values(owner_id=to_owner)
        )
        return await self._write(lambda conn: conn.execute(stmt).rowcount == 1)

    async def queue_state(
        self, owner_id: str, limit: int, *, starting: frozenset[str] = frozenset()
    ) -> QueueState:
        """The server's queue, read in one transaction: up to ``limit`` queued jobs whose
        dependencies allow them to start (highest priority first, then oldest), the queued jobs
        that never can (a dependency did not complete and the job does not run anyway), and how
        many jobs it has queued in all. Jobs in ``starting`` (being started already) are left
        out. Read on the write connection, in order with the writes."""
        # A job with a start intent is being started, or may have run: never started again.
        own = and_(
            JobRow.owner_id == owner_id,
            JobRow.status == JobStatus.QUEUED,
            JobRow.start_attempted_at.is_(None),
        )
        if starting:
            own = and_(own, JobRow.id.not_in(sorted(starting)))
        unfinished = _has_dependency(_DEP.status.in_(ACTIVE))
        unsuccessful = _has_dependency(_DEP.status != JobStatus.COMPLETED)

        def work(conn: Connection) -> QueueState:
            startable: list[Job] = []
            if limit > 0:
                rows = conn.execute(
                    select(*_JOB_COLUMNS)
                    .where(own, ~unfinished, or_(JobRow.run_anyway, ~unsuccessful))
                    .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
                    .limit(limit)
                )
                startable = [_job(r) for r in rows]
            doomed: dict[str, str] = {}
            for job_id, dep_id, status, exit_code, sig, reason in conn.execute(
                select(JobRow.id, _DEP.id, _DEP.status, _DEP.exit_code, _DEP.signal, _DEP.reason)
                .select_from(JobRow)
                .join(JobDependencyRow, JobDependencyRow.job_id == JobRow.id)
                .join(_DEP, _DEP.id == JobDependencyRow.depends_on)
                .where(
                    own,
                    JobRow.run_anyway.is_(False),
                    _DEP.status.in_(TERMINAL - {JobStatus.COMPLETED}),
                )
                .order_by(JobRow.created_at, _DEP.id)
            ):
                doomed.setdefault(
                    job_id, dependency_failure(dep_id, JobStatus(status), exit_code, sig, reason)
                )
            queued = conn.execute(select(func.count()).select_from(JobRow).where(own)).scalar_one()
            return QueueState(startable, list(doomed.items()), queued)

        # On the writer, in order with the writes: a job whose start was recorded before this
        # read can never look queued to it (the runner relies on that to start a job once).
        return await self._write(work)

    async def _query(self, work: Callable[[Connection], T]) -> T:
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

    async def resolve_id(self, id_or_prefix: str, *, audited: bool = False) -> str:
        """A full job id from an id or a unique prefix of one. ``audited``: ids found only in
        the audit log count too (a job deleted since, or refused before it got a row)."""
        text = id_or_prefix.strip().lower()
        if not text or not all(c in "0123456789abcdef" for c in text):
            raise JobNotFound(id_or_prefix)
        if len(text) == JOB_ID_LENGTH:
            return text  # a whole id: whoever loads it reports a missing job
        ids: Any = select(JobRow.id.label("id")).where(JobRow.id >= text, JobRow.id < text + "g")
        if audited:
            a = AuditEventRow.job_id
            ids = union(ids, select(a.label("id")).where(a >= text, a < text + "g")).subquery()
            query = select(ids.c.id).order_by(ids.c.id).limit(2)
        else:
            query = ids.order_by(JobRow.id).limit(2)
        rows = await self._query(lambda conn: conn.execute(query).scalars().all())
        if len(rows) == 1 or (rows and rows[0] == text):
            return str(rows[0])
        if not rows:
            raise JobNotFound(id_or_prefix)
        raise InvalidRequest(
            f"Job id prefix {id_or_prefix!r} matches several jobs: give more characters."
        )

    async def get_job(self, job_id: str, *, events: bool = True) -> Job:
        return await self._query(lambda conn: _load(conn, job_id, events))

    async def ended_among(self, job_ids: Iterable[str]) -> set[str]:
        """Those of the jobs that have ended, or no longer exist (pruned): one short read."""
        ids = sorted(set(job_ids))
        query = select(JobRow.id, JobRow.status).where(JobRow.id.in_(ids))

        def work(conn: Connection) -> set[str]:
            active = {i for i, status in conn.execute(query) if JobStatus(status) in ACTIVE}
            return set(ids) - active

        return await self._query(work)

    async def get_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs of these ids that exist (without events), by id."""
        query = select(*_JOB_COLUMNS).where(JobRow.id.in_(sorted(set(job_ids))))
        jobs = await self._query(lambda conn: [_job(r) for r in conn.execute(query)])
        return {j.id: j for j in jobs}

    async def list_jobs(
        self, flt: JobFilter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Newest first; returns the page and the cursor of the next page (None at the end).

        How it stays fast on a big history (measured on 100,000 jobs): a label walks the
        ``(label, job_created_at)`` index of ``job_labels`` newest first instead of sorting every
        job with the label; ``command_contains`` of 3 characters or more asks the trigram index
        for candidates first and keeps ``LIKE`` as the exact test (see ``SEARCH_LOOKUP_MAX``).
        """
        if flt.label is not None:
            by_label = aliased(JobLabelRow, name="by_label")
            query = (
                select(*_JOB_COLUMNS)
                .join_from(by_label, JobRow, JobRow.id == by_label.job_id)
                .where(by_label.label == flt.label)
            )
            # The job's time and id as the label index holds them: the order needs no sort.
            created, ident = by_label.job_created_at, by_label.job_id
        else:
            query = select(*_JOB_COLUMNS)
            created, ident = JobRow.created_at, JobRow.id
        if flt.status is not None:
            query = query.where(JobRow.status == flt.status)
        if flt.command_contains:
            pattern = (
                flt.command_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            )
            query = query.where(JobRow.command.like(f"%{pattern}%", escape="\\"))
        if flt.since is not None:
            query = query.where(created >= flt.since)
        if flt.until is not None:
            query = query.where(created < flt.until)
        if flt.statuses:
            query = query.where(JobRow.status.in_(sorted(flt.statuses)))
        if flt.exit_code is not None:
            query = query.where(JobRow.exit_code == flt.exit_code)
        if cursor is not None:
            after, last_id = decode_list_cursor(cursor)
            query = query.where(or_(created < after, and_(created == after, ident < last_id)))
        query = query.order_by(created.desc(), ident.desc()).limit(limit + 1)
        match = search_match(flt.command_contains) if flt.command_contains else None

        def work(conn: Connection) -> list[Job]:
            final = query
            hits = None if match is None else _search_candidates(conn, match)
            if hits is not None:
                if not hits:
                    return []
                listed = func.json_each(json.dumps(hits)).table_valued("value")
                rowid = _ROWID if len(hits) <= SEARCH_LOOKUP_MAX else _ROWID_NOT_INDEXED
                final = final.where(rowid.in_(select(listed.c.value)))
            return [_job(r) for r in conn.execute(final)]

        jobs = await self._query(work)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return jobs, (encode_list_cursor(jobs[-1]) if more else None)

    async def orphaned_jobs(self, dead_owner_ids: Iterable[str]) -> list[Job]:
        """Jobs nobody will look after: queued or running jobs of the given (dead) servers, of
        no server, or of servers that stopped (a stopped server's running job is one whose end
        it could not record: it left it in the spool directory). Oldest first."""
        stopped = select(ServerRow.id).where(ServerRow.stopped_at.is_not(None))
        query = (
            select(*_JOB_COLUMNS)
            .where(
                JobRow.status.in_(ACTIVE),
                or_(
                    JobRow.owner_id.in_(list(dead_owner_ids)),
                    JobRow.owner_id.is_(None),
                    JobRow.owner_id.in_(stopped),
                ),
            )
            .order_by(JobRow.created_at, JobRow.id)
        )
        return await self._query(lambda conn: [_job(r) for r in conn.execute(query)])

    # --- output ---------------------------------------------------------------------------

    async def write_output(self, batches: Sequence[OutputBatch]) -> None:
        """Store new chunks, drop trimmed ones and update the byte counters, in one transaction."""
        rows = [
            {"job_id": b.job_id, "stream": s, "seq": q, "byte_offset": o, "data": d}
            for b in batches
            for s, q, o, d in b.chunks
        ]

        def work(conn: Connection) -> None:
            if rows:
                conn.execute(insert(OutputChunkRow), rows)
            for b in batches:
                for stream, lo, hi in b.drops:
                    conn.execute(
                        delete(OutputChunkRow).where(
                            OutputChunkRow.job_id == b.job_id,
                            OutputChunkRow.stream == stream,
                            OutputChunkRow.byte_offset >= lo,
                            OutputChunkRow.byte_offset < hi,
                        )
                    )
                if b.counters:
                    conn.execute(update(JobRow).where(JobRow.id == b.job_id).values(**b.counters))

        await self._write(work)

    async def chunk_layout(self, job_id: str, stream: Stream) -> tuple[list[tuple[int, int]], int]:
        """(offset, length) of every stored chunk of a stream, and the highest seq of the job.

        Used to resume ingestion of a job this process did not start (after a crash).
        """
        c = OutputChunkRow

        def work(conn: Connection) -> tuple[list[tuple[int, int]], int]:
            layout = [
                (r[0], r[1])
                for r in conn.execute(
                    select(c.byte_offset, func.length(c.data))
                    .where(c.job_id == job_id, c.stream == stream)
                    .order_by(c.byte_offset)
                )
            ]
            top = conn.execute(select(func.max(c.seq)).where(c.job_id == job_id)).scalar_one()
            return layout, (top if top is not None else -1)

        return await self._query(work)

    async def read_stream(
        self, job_id: str, stream: Stream, start: int, max_bytes: int, *, whole_rows: bool = False
    ) -> list[Chunk]:
        """Stored bytes of one stream from ``start``, at most ``max_bytes``, as chunks in order.

        If ``start`` falls in a dropped gap, the result begins at the next stored chunk. Rows are
        cut in SQL, so reading 64 KiB out of 1 MiB rows moves 64 KiB; ``whole_rows`` returns the
        rows that cover the range uncut instead (to rewrite them).
        """
        c = OutputChunkRow
        base = and_(c.job_id == job_id, c.stream == stream)
        piece = (
            c.data
            if whole_rows
            else func.substr(
                c.data, func.max(1, start - c.byte_offset + 1), min(max_bytes, _SQL_MAX)
            )
        )

        def work(conn: Connection) -> list[Chunk]:
            lo = conn.execute(
                select(func.max(c.byte_offset)).where(base, c.byte_offset <= start)
            ).scalar_one_or_none()
            query = (
                select(c.byte_offset, func.length(c.data), piece)
                .where(base)
                .order_by(c.byte_offset)
            )
            rows = conn.execute(
                query.where(c.byte_offset >= (lo or 0), c.byte_offset < start + max_bytes)
            ).all()
            if not any(o + n > start for o, n, _ in rows):
                rows = conn.execute(query.where(c.byte_offset > start).limit(1)).all()
            return [
                Chunk(stream, o if whole_rows else max(o, start), d)
                for o, n, d in rows
                if o + n > start and d
            ]

        return await self._query(work)

    async def read_interleaved(
        self, job_id: str, starts: Mapping[Stream, int], max_bytes: int
    ) -> list[Chunk]:
        """Chunks of both streams in the order they were stored, from the given stream offsets."""
        c = OutputChunkRow
        unread = or_(
            *(and_(c.stream == s, c.byte_offset + func.length(c.data) > starts[s]) for s in Stream)
        )
        start_of = case(
            (c.stream == Stream.STDOUT, starts[Stream.STDOUT]), else_=starts[Stream.STDERR]
        )
        piece = func.substr(
            c.data, func.max(1, start_of - c.byte_offset + 1), min(max_bytes, _SQL_MAX)
        )

        def work(conn: Connection) -> list[Chunk]:
            out: list[Chunk] = []
            total = 0
            firsts = []
            for s in Stream:
                floor = (
                    select(func.max(c.byte_offset))
                    .where(c.job_id == job_id, c.stream == s, c.byte_offset <= starts[s])
                    .scalar_subquery()
                )
                firsts.append(
                    conn.execute(
                        select(func.min(c.seq)).where(
                            c.job_id == job_id,
                            c.stream == s,
                            c.byte_offset >= func.coalesce(floor, 0),
                        )
                    ).scalar_one_or_none()
                )
            known = [f for f in firsts if f is not None]
            seq = min(known) - 1 if known else -1
            while total < max_bytes:
                rows = conn.execute(
                    select(c.seq, c.stream, c.byte_offset, piece)
                    .where(c.job_id == job_id, c.seq > seq, unread)
                    .order_by(c.seq)
                    .limit(_ROWS_PER_FETCH)
                ).all()
                if not rows:
                    break
                for q, name, o, d in rows:
                    seq = q
                    stream = Stream(name)
                    out.append(Chunk(stream, max(o, starts[stream]), d))
                    total += len(d)
                    if total >= max_bytes:
                        break
            return out

        return await self._query(work)

    async def read_backwards(
        self, job_id: str, streams: Sequence[Stream], enough: int, max_bytes: int
    ) -> list[Chunk]:
        """The last stored bytes (in storage order) until ``enough`` newlines or ``max_bytes``
        are seen. Its cost depends on how much is returned, not on how much the job wrote."""
        c = OutputChunkRow
        tail = func.substr(c.data, -min(max_bytes, _SQL_MAX))  # only the end of a big row

        def work(conn: Connection) -> list[Chunk]:
            out: list[Chunk] = []
            newlines = total = 0
            seq: int | None = None
            while newlines < enough and total < max_bytes:
                query = select(c.seq, c.stream, c.byte_offset, func.length(c.data), tail).where(
                    c.job_id == job_id, c.stream.in_(list(streams))
                )
                if seq is not None:
                    query = query.where(c.seq < seq)
                rows = conn.execute(query.order_by(c.seq.desc()).limit(4)).all()
                if not rows:
                    break
                for q, name, o, n, d in rows:
                    seq = q
                    out.append(Chunk(Stream(name), o + n - len(d), d))
                    newlines += d.count(b"\n")
                    total += len(d)
                    if newlines >= enough or total >= max_bytes:
                        break
            out.reverse()
            return out

        return await self._query(work)

    # --- history and retention ----------------------------------------------------------

    async def status_changes(self, after: int, limit: int = 500) -> tuple[list[StatusChange], int]:
        """Status changes recorded after event ``after``, oldest first, and the newest event id
        (lower than ``after`` when pruning removed the newest events: start again from it)."""
        e = JobEventRow

        def work(conn: Connection) -> tuple[list[tuple[int, str, str, str | None]], int]:
            rows = conn.execute(
                select(e.id, e.job_id, e.to_status, e.from_status)
                .where(e.id > after)
                .order_by(e.id)
                .limit(limit)
            ).all()
            top = conn.execute(select(func.max(e.id))).scalar_one_or_none() or 0
            return [(r[0], r[1], r[2], r[3]) for r in rows], top

        # Polled twice a second for resource subscribers: one trip to a reader thread.
        rows, top = await self._query(work)
        changes = [StatusChange(i, j, JobStatus(to), frm is None) for i, j, to, frm in rows]
        return changes, top

    async def get_server(self, server_id: str) -> ServerInstance | None:
        query = select(ServerRow).where(ServerRow.id == server_id)
        row = await self._query(lambda conn: conn.execute(query).first())
        return None if row is None else _server(row)

    async def stats(self, *, longest: int = 5) -> Stats:
        j = JobRow
        duration = func.julianday(func.coalesce(j.ended_at, func.datetime("now"))) - func.julianday(
            j.started_at
        )

        def work(conn: Connection) -> tuple[Any, Any, tuple[Job, ...], list[int]]:
            counts = conn.execute(select(j.status, func.count()).group_by(j.status)).all()
            totals = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(j.stdout_bytes + j.stderr_bytes), 0),
                    func.coalesce(func.sum(j.stdout_stored + j.stderr_stored), 0),
                    func.coalesce(func.sum(j.stdout_dropped + j.stderr_dropped), 0),
                    func.min(j.created_at),
                    func.max(j.created_at),
                )
            ).one()
            rows = conn.execute(
                select(*_JOB_COLUMNS)
                .where(j.started_at.is_not(None))
                .order_by(duration.desc())
                .limit(longest)
            )
            slow = tuple(_job(r) for r in rows)
            pages = [
                conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()
                for name in ("page_size", "page_count", "freelist_count")
            ]
            return counts, totals, slow, pages

        counts, totals, slow, pages = await self._query(work)
        order = {s: i for i, s in enumerate(JobStatus)}
        by_status = tuple(sorted(((JobStatus(s), n) for s, n in counts), key=lambda x: order[x[0]]))
        return Stats(
            jobs=totals[0],
            by_status=by_status,
            written_bytes=totals[1],
            stored_bytes=totals[2],
            dropped_bytes=totals[3],
            first_created=totals[4],
            last_created=totals[5],
            page_size=pages[0],
            page_count=pages[1],
            free_pages=pages[2],
            longest=slow,
        )

    async def prune_candidates(
        self,
        *,
        ended_before: datetime | None = None,
        max_output_bytes: int | None = None,
        keep_failed: bool = False,
    ) -> list[PruneCandidate]:
        """Ended jobs to delete: those that ended before ``ended_before``, then the oldest others
        while the stored output of all jobs is above ``max_output_bytes``. Never an active job.
        """
        j = JobRow
        kept = TERMINAL - FAILURES if keep_failed else TERMINAL
        stored = (j.stdout_stored + j.stderr_stored).label("stored")
        base = select(j.id, j.status, j.ended_at, stored).where(
            j.status.in_(sorted(kept)), j.ended_at.is_not(None)
        )

        def work(conn: Connection) -> dict[str, PruneCandidate]:
            chosen: dict[str, PruneCandidate] = {}
            if ended_before is not None:
                for r in conn.execute(base.where(j.ended_at < ended_before)):
                    chosen[r.id] = PruneCandidate(r.id, JobStatus(r.status), r.ended_at, r.stored)
            if max_output_bytes is not None:
                total = conn.execute(
                    select(func.coalesce(func.sum(j.stdout_stored + j.stderr_stored), 0))
                ).scalar_one()
                excess = total - max_output_bytes - sum(c.stored_bytes for c in chosen.values())
                page = base.order_by(j.ended_at, j.id).limit(PRUNE_BATCH_ROWS)
                offset = 0
                while excess > 0:
                    rows = conn.execute(page.offset(offset)).all()
                    if not rows:
                        break
                    offset += len(rows)
                    for r in rows:
                        if excess <= 0:
                            break
                        if r.id not in chosen:
                            chosen[r.id] = PruneCandidate(
                                r.id, JobStatus(r.status), r.ended_at, r.stored
                            )
                            excess -= r.stored
            return chosen

        chosen = await self._query(work)
        return sorted(chosen.values(), key=lambda c: (c.ended_at, c.job_id))

    async def delete_jobs(
        self, job_ids: Sequence[str], *, batch_rows: int = PRUNE_BATCH_ROWS
    ) -> PruneResult:
        """Delete ended jobs with their output, events and labels, ``batch_rows`` output rows per
        transaction so other writers wait at most one batch. Active jobs are never deleted (the
        status is checked in every statement), whatever the caller passes."""
        j, c = JobRow, OutputChunkRow
        jobs = chunks = freed = 0
        for start in range(0, len(job_ids), _PRUNE_JOBS_PER_TXN):
            group = list(job_ids[start : start + _PRUNE_JOBS_PER_TXN])
            ended = select(j.id).where(j.id.in_(group), j.status.in_(sorted(TERMINAL)))
            some_rows = delete(c).where(
                c.id.in_(select(c.id).where(c.job_id.in_(ended)).limit(batch_rows))
            )
            while True:
                # One transaction per batch; other writes queued meanwhile go in between.
                deleted = await self._write(partial(_rowcount, some_rows))
                chunks += deleted
                if deleted < batch_rows:
                    break
            size, count = await self._write(partial(_drop_ended, group))
            freed += size
            jobs += count
        return PruneResult(jobs=jobs, chunks=chunks, output_bytes=freed)

    async def vacuum(self) -> bool:
        """Rebuild the file without its free pages, then truncate the WAL that VACUUM filled.
        False if the WAL could not be truncated (another program kept reading for the whole
        busy timeout): it then holds a copy of the database until the next checkpoint.

        VACUUM cannot run in a transaction: it goes through the driver connection directly.
        """

        def work(conn: Connection) -> bool:
            _driver_sql(conn, "VACUUM")
            raw = conn.connection.dbapi_connection
            assert raw is not None
            busy, log_frames, copied = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return not busy and log_frames == copied

        return await self._write(work, transaction=False)

    # --- audit log ------------------------------------------------------------------------

    async def record_audit(self, event: AuditEvent) -> AuditEvent:
        """Append one audit event; returns it with its id and time."""
        now = utcnow()
        row = _audit_row(event, now)

        def work(conn: Connection) -> int | None:
            result = conn.execute(insert(AuditEventRow), row)
            return result.inserted_primary_key[0] if result.inserted_primary_key else None

        return replace(event, id=await self._write(work), at=now)

    async def list_audit(
        self,
        *,
        kind: str | None = None,
        since: datetime | None = None,
        job_id: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AuditEvent]:
        """Audit events newest first (page on with ``before_id`` = the last id returned)."""
        a = AuditEventRow
        query = select(a)
        if kind is not None:
            query = query.where(a.kind == kind)
        if since is not None:
            query = query.where(a.at >= since)
        if job_id is not None:
            query = query.where(a.job_id == job_id)
        if before_id is not None:
            query = query.where(a.id < before_id)
        query = query.order_by(a.id.desc()).limit(limit)
        rows = await self._query(lambda conn: conn.execute(query).all())
        return [
            AuditEvent(
                kind=r.kind,
                server_id=r.server_id,
                decision=r.decision,
                rule=r.rule,
                matched=r.matched,
                job_id=r.job_id,
                command=r.command,
                cwd=r.cwd,
                client_name=r.client_name,
                client_version=r.client_version,
                session_id=r.session_id,
                detail=json.loads(r.detail),
                id=r.id,
                at=r.at,
            )
            for r in rows
        ]

    async def rewrite_chunks(
        self, job_id: str, stream: Stream, updates: Sequence[tuple[int, bytes]]
    ) -> None:
        """Replace the bytes of stored chunks (same offsets, same lengths: masked output)."""
        if not updates:
            return
        c = OutputChunkRow
        stmt = (
            update(c)
            .where(
                c.job_id == bindparam("j"),
                c.stream == bindparam("s"),
                c.byte_offset == bindparam("o"),
                func.length(c.data) == bindparam("n"),
            )
            .values(data=bindparam("d"))
        )
        params = [{"j": job_id, "s": stream, "o": o, "n": len(d), "d": d} for o, d in updates]
        await self._write(lambda conn: conn.execute(stmt, params))


def _audit_row(event: AuditEvent, now: datetime) -> dict[str, Any]:
    return {
        "at": now,
        "server_id": event.server_id,
        "kind": event.kind,
        "decision": event.decision,
        "rule": event.rule,
        "matched": event.matched,
        "job_id": event.job_id,
        "command": event.command,
        "cwd": event.cwd,
        "client_name": event.client_name,
        "client_version": event.client_version,
        "session_id": event.session_id,
        "detail": json.dumps(event.detail, sort_keys=True, default=str),
    }


def _read_schema(conn: Connection) -> None:
    conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").all()


def _rowcount(stmt: Executable, conn: Connection) -> int:
    return conn.execute(stmt).rowcount


def _drop_ended(job_ids: list[str], conn: Connection) -> tuple[int, int]:
    """Delete those of the jobs that ended (their events and labels cascade); returns the output
    bytes they held and how many were deleted."""
    j = JobRow
    ended = and_(j.id.in_(job_ids), j.status.in_(sorted(TERMINAL)))
    size = conn.execute(
        select(func.coalesce(func.sum(j.stdout_stored + j.stderr_stored), 0)).where(ended)
    ).scalar_one()
    return size, conn.execute(delete(j).where(ended)).rowcount


def _driver_sql(conn: Connection, sql: str) -> None:
    """Run ``sql`` on the driver connection itself, outside any transaction (VACUUM and
    checkpoints cannot run inside one; SQLAlchemy would begin one first)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute(sql).close()
