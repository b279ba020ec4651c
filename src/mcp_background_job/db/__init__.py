"""The database below the storage gateway: tables, engines, the file, and migrations.

- ``tables``: the models the migrations must produce (and the schema objects that are not models).
- ``engine``: engines with the SQLite settings this project depends on.
- ``files``: what is at a database path, who owns it, and SQLite/OS errors said plainly.
- ``migrate``: the schema revision, migrate-to-revision, creating a database all at once.

Only the storage gateway (``store``) writes SQL with these; the command line's ``db`` commands
and start-up checks use the file and migration functions directly.
"""

from __future__ import annotations

from ..jobs import AUDIT_KINDS
from . import dialects as dialects  # registers PostgreSQL spellings of the store's SQL
from .engine import BUSY_TIMEOUT_MS, Access, lower_thread_priority, make_sync_engine
from .files import (
    DB_HINT,
    SQLITE_MAGIC,
    check_for_writing,
    check_owned,
    database_locked,
    disk_full,
    ensure_db_file,
    inspect_file,
    is_locked,
    is_owned,
    lock_holders,
    make_private_dirs,
    no_database,
    read_only,
    side_file,
    storage_error,
    writable,
)
from .migrate import (
    alembic_config,
    check_revision,
    create_database,
    head_revision,
    migrate_to,
    migrations_dir,
    refuse_unknown,
    schema_revision,
    upgrade_to_head,
)
from .tables import (
    SEARCH_SHADOW_TABLES,
    SEARCH_TABLE,
    TRIGGERS,
    VIEWS,
    ApiTokenRow,
    AuditEventRow,
    Base,
    JobControlRow,
    JobDependencyRow,
    JobEventRow,
    JobLabelRow,
    JobRow,
    OutputChunkRow,
    ServerRow,
    UTCDateTime,
    include_name,
    metadata,
    utcnow,
)
from .target import DbTarget, check_url, describe, is_url, looks_like_url, pg_error

__all__ = [
    "AUDIT_KINDS",
    "BUSY_TIMEOUT_MS",
    "DB_HINT",
    "SEARCH_SHADOW_TABLES",
    "SEARCH_TABLE",
    "SQLITE_MAGIC",
    "TRIGGERS",
    "VIEWS",
    "Access",
    "ApiTokenRow",
    "AuditEventRow",
    "Base",
    "DbTarget",
    "JobControlRow",
    "JobDependencyRow",
    "JobEventRow",
    "JobLabelRow",
    "JobRow",
    "OutputChunkRow",
    "ServerRow",
    "UTCDateTime",
    "alembic_config",
    "check_for_writing",
    "check_owned",
    "check_revision",
    "check_url",
    "create_database",
    "database_locked",
    "describe",
    "disk_full",
    "ensure_db_file",
    "head_revision",
    "include_name",
    "inspect_file",
    "is_locked",
    "is_owned",
    "is_url",
    "lock_holders",
    "looks_like_url",
    "lower_thread_priority",
    "make_private_dirs",
    "make_sync_engine",
    "metadata",
    "migrate_to",
    "migrations_dir",
    "no_database",
    "pg_error",
    "read_only",
    "refuse_unknown",
    "schema_revision",
    "side_file",
    "storage_error",
    "upgrade_to_head",
    "utcnow",
    "writable",
]
