"""The tables: the models the Alembic migrations (``migrations/``) must produce, which
``tests/test_migrations.py`` checks. The schema is created only by those migrations.

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

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..jobs import AUDIT_KINDS, JobStatus, Stream
from .dialects import INT64

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


#: PostgreSQL's command search index (migration 0005): a pg_trgm GIN index on ``jobs.command``.
PG_SEARCH_INDEX = "ix_jobs_command_trgm"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's filter for schema comparison: the search index is not a model (its virtual
    table and shadow tables, or PostgreSQL's trigram index, would otherwise show up as things
    to drop)."""
    if type_ == "index":
        return name != PG_SEARCH_INDEX
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
    pid_start: Mapped[int | None] = mapped_column(INT64)
    boot_id: Mapped[str | None] = mapped_column(String)
    hostname: Mapped[str] = mapped_column(String)
    version: Mapped[str] = mapped_column(String)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When it last said it was alive (migration 0012; NULL: never, ``started_at`` counts).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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
        Index(None, "host", "created_at"),
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
    pid_start: Mapped[int | None] = mapped_column(INT64)
    boot_id: Mapped[str | None] = mapped_column(String)
    end_cause: Mapped[str | None] = mapped_column(String)
    stdout_bytes: Mapped[int] = mapped_column(INT64, default=0)
    stderr_bytes: Mapped[int] = mapped_column(INT64, default=0)
    stdout_stored: Mapped[int] = mapped_column(INT64, default=0)
    stderr_stored: Mapped[int] = mapped_column(INT64, default=0)
    stdout_dropped: Mapped[int] = mapped_column(INT64, default=0)
    stderr_dropped: Mapped[int] = mapped_column(INT64, default=0)
    # Interactive jobs and scheduling (migration 0004).
    pty: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    term_rows: Mapped[int | None] = mapped_column(Integer)
    term_cols: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    idle_timeout_s: Mapped[float | None] = mapped_column(Float)
    run_anyway: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    rerun_of: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # Committed before the job's process is spawned (migration 0007): a queued job with it set
    # may have run, and is never started again (see runner/starting.py).
    start_attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Outlives its server under a keeper; adopted by a later server (migration 0009).
    detached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: The machine the job runs on, or is queued for (migration 0010; NULL: written before).
    host: Mapped[str | None] = mapped_column(String)


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
    byte_offset: Mapped[int] = mapped_column(INT64)
    data: Mapped[bytes] = mapped_column(LargeBinary)


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
    token: Mapped[str | None] = mapped_column(String)  # the token's name (HTTP), never its value
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON object


class ApiTokenRow(Base):
    """A bearer token for ``serve --http``: only the SHA-256 of the token is kept.

    ``scope``: ``read`` (read-only tools and the web page) or ``run`` (everything).
    """

    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint("scope IN ('read', 'run')", name="scope"),
        Index(None, "sha256", unique=True),
    )
    name: Mapped[str] = mapped_column(String, primary_key=True)
    scope: Mapped[str] = mapped_column(String)
    sha256: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobControlRow(Base):
    """A ``kill`` or ``interact`` asked of the host that runs the job (migration 0012): the
    owning server takes it (``taken_by``, a compare-and-set), applies it, and writes ``answer``
    (JSON) or ``error``; the caller reads the row and deletes it."""

    __tablename__ = "job_controls"
    __table_args__ = (
        CheckConstraint("kind IN ('kill', 'interact')", name="kind"),
        Index(None, "host", "taken_by"),
        Index(None, "job_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    host: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)
    request: Mapped[str] = mapped_column(Text)  # JSON object: the call's arguments
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    taken_by: Mapped[str | None] = mapped_column(String)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    answer: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


metadata = Base.metadata
