"""The schema comes from Alembic migrations only, and they produce exactly the models' schema."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from mcp_background_job import db
from mcp_background_job.errors import StorageError
from mcp_background_job.store import Store


def _migrated(path: Path) -> None:
    db.ensure_db_file(path)
    engine = db.make_sync_engine(path)
    with engine.connect() as conn:
        db.upgrade_to_head(conn)
    engine.dispose()


def test_migrations_produce_the_models_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    _migrated(path)
    engine = db.make_sync_engine(path)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata
        )
    engine.dispose()
    assert diff == []


def test_upgrade_downgrade_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    _migrated(path)
    engine = db.make_sync_engine(path)
    with engine.connect() as conn:
        cfg = db.alembic_config(conn)
        with conn.begin():
            command.downgrade(cfg, "base")
        tables = {
            r[0] for r in conn.exec_driver_sql("select name from sqlite_master where type='table'")
        }
        assert tables <= {"alembic_version"}
    engine.dispose()
    _migrated(path)
    head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    con = sqlite3.connect(path)
    assert con.execute("select version_num from alembic_version").fetchone() == (head,)
    con.close()


async def test_database_is_owner_only_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "jobs.db"
    store = Store(path)
    await store.open()
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    con = sqlite3.connect(path)
    assert con.execute("pragma journal_mode").fetchone() == ("wal",)
    con.close()


async def test_open_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    for _ in range(2):
        store = Store(path)
        await store.open()
        await store.close()
    con = sqlite3.connect(path)
    assert con.execute("select count(*) from alembic_version").fetchone() == (1,)
    con.close()


async def test_refuses_a_database_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    _migrated(path)
    con = sqlite3.connect(path)
    con.execute("update alembic_version set version_num = 'ffff_from_the_future'")
    con.commit()
    con.close()
    store = Store(path)
    with pytest.raises(StorageError, match="newer version"):
        await store.open()
    await store.close()


def test_path_with_url_characters_opens_that_file(tmp_path: Path) -> None:
    # SQLAlchemy 2.1 unescapes %XX in URL strings; the engine must open exactly this path.
    path = tmp_path / "a%41b?c" / "jobs.db"
    _migrated(path)
    assert path.is_file()
    assert not (tmp_path / "aAb").exists()


def test_upgrade_keeps_existing_jobs_and_their_rows(tmp_path: Path) -> None:
    """0004 recreates the jobs table (batch mode): rows of tables that reference it survive
    (foreign keys are off while it runs) and old jobs get the new columns' defaults."""
    path = tmp_path / "jobs.db"
    db.ensure_db_file(path)
    engine = db.make_sync_engine(path)
    with engine.connect() as conn:
        cfg = db.alembic_config(conn)
        with conn.begin():
            command.upgrade(cfg, "0001")
    engine.dispose()
    con = sqlite3.connect(path)
    con.executescript(
        """
        insert into servers values ('s1', 1, null, 'b', 'h', 'v', '2026-01-01 00:00:00', null);
        insert into jobs (id, command, cwd, shell, env, status, created_at, owner_id,
            stdout_bytes, stderr_bytes, stdout_stored, stderr_stored, stdout_dropped,
            stderr_dropped)
            values ('j1', 'true', '/', '/bin/sh', '{}', 'completed', '2026-01-01 00:00:00',
            's1', 3, 0, 3, 0, 0, 0);
        insert into job_events (job_id, at, to_status) values ('j1', '2026-01-01 00:00:00',
            'queued');
        insert into job_labels values ('j1', 'keep');
        insert into output_chunks (job_id, stream, seq, byte_offset, data)
            values ('j1', 'stdout', 0, 0, x'6869');
        """
    )
    con.commit()
    con.close()
    _migrated(path)
    con = sqlite3.connect(path)
    assert con.execute("select pty, priority, run_anyway, rerun_of from jobs").fetchall() == [
        (0, 0, 0, None)
    ]
    for table in ("job_events", "job_labels", "output_chunks"):
        assert con.execute(f"select count(*) from {table}").fetchone() == (1,), table
    con.close()
