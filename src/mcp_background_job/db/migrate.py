"""Migrations: the Alembic scripts, the schema revision of a database, migrate-to-revision in
one transaction, and creating a new database all at once."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import sqlite3
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from ..errors import StorageError
from . import pgengine
from .engine import make_sync_engine
from .files import DB_HINT, check_owned, make_private_dirs, side_file, storage_error
from .target import DbTarget, describe

if TYPE_CHECKING:
    from alembic.config import Config

# Alembic (~0.3 s to import) is imported only to migrate: knowing the revisions and reading a
# database's revision (every command line command, every start) reads the scripts' own lines.
_REVISION = re.compile(r"^revision(?:: str)? = ['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision(?:: [^=]+)? = (.+)$", re.MULTILINE)  # None, 'a', ('a', 'b')
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


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


def migrations_dir() -> Path:
    """The Alembic scripts: inside the installed package, or the checkout's ``migrations/``."""
    packaged = Path(str(resources.files("mcp_background_job"))) / "migrations"
    if (packaged / "env.py").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[3] / "migrations"  # src/mcp_background_job/db/
    if (checkout / "env.py").is_file():
        return checkout
    raise StorageError(
        f"Alembic migrations not found (looked in {packaged} and {checkout}); "
        "reinstall mcp-background-job."
    )


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _revisions(scripts: str) -> tuple[frozenset[str], str | None]:
    """The revisions the scripts in ``scripts`` know, and their head (read once per process),
    from the ``revision =`` and ``down_revision =`` lines of ``versions/*.py`` (a test checks
    this against Alembic's ``ScriptDirectory``). One head: the revision nobody revises."""
    known: set[str] = set()
    revised: set[str] = set()
    for script in (Path(scripts) / "versions").glob("*.py"):
        text = script.read_text(encoding="utf-8")
        rev, down = _REVISION.search(text), _DOWN.search(text)
        if rev is None or down is None:
            continue  # not a migration script
        known.add(rev[1])
        revised.update(_QUOTED.findall(down[1]))
    heads = known - revised
    if len(heads) > 1:
        raise StorageError(f"the migrations in {scripts} have several heads: {sorted(heads)}")
    return frozenset(known), next(iter(heads), None)


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
    from alembic.runtime.migration import MigrationContext

    return refuse_unknown(MigrationContext.configure(connection).get_current_revision())


def schema_revision(connection: Connection, path: DbTarget) -> str | None:
    """The database's schema revision, read without taking the write lock (None: no schema
    yet); refuses a revision this version does not know, and a database of another program
    (tables, but none of ours)."""
    if connection.dialect.name == "postgresql":
        names = pgengine.table_names(connection)
    else:
        names = set(
            connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite!_%' "
                "ESCAPE '!'"
            ).scalars()
        )
    if "alembic_version" not in names:
        if names:
            what = "a PostgreSQL" if isinstance(path, str) else "an SQLite"
            raise StorageError(
                f"{describe(path)} is {what} database of another program (tables: "
                f"{', '.join(sorted(names)[:5])}), not of mcp-background-job. {DB_HINT}",
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
    if connection.dialect.name == "postgresql":
        _migrate_pg(connection, revision, downgrade=downgrade)
        return
    from alembic import command

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


def _migrate_pg(connection: Connection, revision: str, *, downgrade: bool) -> None:
    """PostgreSQL: DDL is transactional and foreign keys need no switching off; an advisory
    lock makes servers starting at once migrate one after the other."""
    from alembic import command

    try:
        cfg = alembic_config(connection)
        with connection.begin():
            pgengine.lock_for_migration(connection)
            check_revision(connection, cfg)
            if downgrade:
                command.downgrade(cfg, revision)
            else:
                command.upgrade(cfg, revision)
    except StorageError:
        raise
    except Exception as exc:  # any failure here means the database cannot be used
        raise StorageError(f"Could not migrate the database: {exc}") from exc


def upgrade_to_head(connection: Connection) -> None:
    """Apply pending migrations (see ``migrate_to``)."""
    migrate_to(connection, "head")


def _pragmas(raw: Any, *pragmas: str) -> None:
    cur = raw.cursor()
    for pragma in pragmas:
        cur.execute(f"PRAGMA {pragma}")
    cur.close()
