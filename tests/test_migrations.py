"""The schema comes from Alembic migrations only, and they produce exactly the models' schema."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from mcp_background_job import db
from mcp_background_job.db import migrate as db_migrate
from mcp_background_job.errors import StorageError
from mcp_background_job.jobs import Stream
from mcp_background_job.store import Store

from .conftest import ENGINES
from .fixtures.make_db import JOBS, Sql, Target, columns, make_db, revision, snapshot
from .fixtures.schema import assert_search_in_sync
from .pg import PgServer


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
        opts = {"compare_type": True, "include_name": db.include_name}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), db.metadata)
    engine.dispose()
    assert diff == []
    # What the models do not describe is exactly the views and the search index with its
    # triggers: nothing else slips past the comparison above.
    assert _not_in_models(path) == NOT_IN_MODELS


#: Schema objects made by migrations that are not models (and which the comparison skips).
NOT_IN_MODELS = {
    *(("view", v) for v in db.VIEWS),
    ("table", db.SEARCH_TABLE),
    *(("table", t) for t in db.SEARCH_SHADOW_TABLES),
    *(("trigger", t) for t in db.TRIGGERS),
}


def _not_in_models(path: Path) -> set[tuple[str, str]]:
    modelled = {("table", "alembic_version")}
    for table in db.metadata.tables.values():
        modelled.add(("table", table.name))
        modelled.update(("index", str(ix.name)) for ix in table.indexes)
    con = sqlite3.connect(path)
    try:
        rows = con.execute(
            "select type, name from sqlite_master where name not like 'sqlite!_%' escape '!'"
        )
        return {(t, n) for t, n in rows} - modelled
    finally:
        con.close()


def test_upgrade_downgrade_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    _migrated(path)
    engine = db.make_sync_engine(path)
    with engine.connect() as conn:
        db.migrate_to(conn, "base", downgrade=True)
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


# --- upgrades of real old data (tests/fixtures/make_db.py) ------------------------------------


def _migrate(path: Target, revision: str, *, downgrade: bool = False) -> None:
    engine = db.make_sync_engine(path)
    with engine.connect() as conn:
        db.migrate_to(conn, revision, downgrade=downgrade)
    engine.dispose()


def _revision(path: Target) -> str | None:
    return revision(path)


@pytest.fixture(params=ENGINES)
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Target]:
    """Makes new empty databases on each engine: ``new_db(name)`` is an SQLite file's path or
    a new PostgreSQL database's URL (one server per test process, tests/pg.py)."""
    if request.param == "sqlite":
        return lambda name: tmp_path / f"{name}.db"
    server: PgServer = request.getfixturevalue("pg_server")
    return lambda name: server.new_database()


#: What migrations make on PostgreSQL that the models do not describe: the views with their
#: bytes-as-text function, the trigger (and its function) that fills the labels' job times,
#: and the trigram index of commands.
PG_NOT_IN_MODELS = {
    *(("view", v) for v in db.VIEWS),
    ("function", "mbj_text"),
    ("trigger", "jobs_label_times"),
    ("function", "jobs_label_times"),
    ("index", "ix_jobs_command_trgm"),
}


def _pg_not_in_models(url: str) -> set[tuple[str, str]]:
    modelled = {("index", "alembic_version_pkc")}
    for table in db.metadata.tables.values():
        modelled.add(("index", f"{table.name}_pkey"))
        modelled.update(("index", str(ix.name)) for ix in table.indexes)
        modelled.update(("index", str(c.name)) for c in table.constraints if c.name)
    with Sql(url) as con:
        rows = con.execute(
            "SELECT 'view', viewname FROM pg_views WHERE schemaname = 'public' "
            "UNION SELECT 'index', indexname FROM pg_indexes WHERE schemaname = 'public' "
            "UNION SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal "
            "UNION SELECT 'function', proname FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND NOT EXISTS "
            "(SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')"
        )  # (pg_trgm's own functions are the extension's, not ours)
    return {(str(kind), str(name)) for kind, name in rows} - modelled


def _extras_in_sync(target: Target) -> None:
    """The schema objects that are not models are all there (and the search index holds
    exactly the jobs, on SQLite)."""
    if isinstance(target, Path):
        assert_search_in_sync(target)
        assert _not_in_models(target) == NOT_IN_MODELS
    else:
        assert _pg_not_in_models(target) == PG_NOT_IN_MODELS


def test_every_revision_upgrades_old_data_intact_and_round_trips(
    new_db: Callable[[str], Target],
) -> None:
    script = ScriptDirectory.from_config(db.alembic_config())
    head = script.get_current_head()
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert revisions[0] == "0001" and revisions[-1] == head
    for start in revisions:
        path = make_db(new_db(f"at-{start}"), start)
        cols = columns(path)
        before = snapshot(path, cols)
        assert before["output_chunks"], "the fixture has output"
        _migrate(path, "head")
        assert _revision(path) == head
        assert snapshot(path, cols) == before, f"data changed upgrading {start} -> head"
        _extras_in_sync(path)
        _migrate(path, start, downgrade=True)
        assert _revision(path) == start
        assert snapshot(path, cols) == before, f"data changed downgrading head -> {start}"
        _migrate(path, "head")
        assert snapshot(path, cols) == before
        _extras_in_sync(path)


async def test_an_upgraded_database_reads_like_a_new_one(new_db: Callable[[str], Target]) -> None:
    path = make_db(new_db("old"), "0001")
    store = Store(path)
    await store.open()  # what a server does at start-up
    try:
        job = await store.get_job(await store.resolve_id("aaaa00000001"))
        assert job.labels == ("build", "ci")
        assert [e.to_status for e in job.events] == ["queued", "running", "completed"]
        chunks = await store.read_stream(job.id, Stream.STDOUT, 0, 1 << 20)
        assert b"".join(c.data for c in chunks) == JOBS[0].stdout
    finally:
        await store.close()


def test_views_show_jobs_and_output(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db", "0001")
    _migrate(path, "head")
    con = sqlite3.connect(path)
    con.text_factory = bytes
    try:
        views = con.execute("select name from sqlite_master where type = 'view'")
        names = {r[0].decode() for r in views}
        assert names == set(db.VIEWS)
        row = con.execute(
            "select stdout, stderr, output from job_output where job_id = 'aaaa00000001'"
        ).fetchone()
        assert row[0] == JOBS[0].stdout  # the split character is whole again
        assert row[1] == JOBS[0].stderr
        assert row[2] == b"hello\nw\xc3warning: something\n\xb6rld \xe2\x82\xac\nthird line\n"
        summary = con.execute(
            "select status, exit_code, labels, duration_s, output_bytes, stored_bytes, "
            "dropped_bytes from job_summary where id = 'cccc00000004'"
        ).fetchone()
        assert summary == (b"timed_out", None, None, summary[3], 1010, 10, 1000)
        assert summary[3] > 0
        labels = con.execute("select labels from job_summary where id = 'aaaa00000001'").fetchone()
        assert labels == (b"build,ci",)
        texts = con.execute("select text from output_text where job_id = 'bbbb00000003'").fetchall()
        assert texts == [(JOBS[2].stdout,)]
    finally:
        con.close()


def _scripts_plus_revision_9999(tmp_path: Path, body: str) -> Path:
    """A copy of the migration scripts with one more revision, "9999", after the head: its
    ``upgrade``/``downgrade`` are ``body`` (which can use ``sa`` and ``op``)."""
    scripts = tmp_path / "migrations"
    shutil.copytree(db.migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    head = ScriptDirectory(str(scripts)).get_current_head()
    header = (
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "9999"\ndown_revision = {head!r}\nbranch_labels = None\ndepends_on = None\n\n'
    )
    (scripts / "versions" / "9999_rebuild_jobs.py").write_text(header + body)
    return scripts


def test_views_survive_a_batch_migration_of_their_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A later migration that rebuilds `jobs` in batch mode (SQLite's way to ALTER) must not trip
    # over the views that read it: SQLite checks every view when the rebuilt table is renamed,
    # and fails with "error in view job_summary: no such table: main.jobs" unless migrate_to
    # runs with legacy_alter_table on. Simulated with a copy of the scripts plus one revision.
    scripts = _scripts_plus_revision_9999(
        tmp_path,
        """
def upgrade():
    with op.batch_alter_table("jobs", recreate="always") as batch:
        batch.add_column(sa.Column("future", sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table("jobs", recreate="always") as batch:
        batch.drop_column("future")
""",
    )
    path = make_db(tmp_path / "jobs.db", "0001")
    monkeypatch.setattr(db_migrate, "migrations_dir", lambda: scripts)
    _migrate(path, "head")
    assert _revision(path) == "9999"
    con = sqlite3.connect(path)
    try:
        assert con.execute("select count(*) from job_summary").fetchone() == (len(JOBS),)
        assert con.execute("select count(*) from job_labels").fetchone() == (3,)
        assert con.execute("select count(*) from output_chunks").fetchone() == (
            sum(len(j.chunks) for j in JOBS),
        )
    finally:
        con.close()


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


def test_0005_fills_label_times_and_the_index_and_downgrade_removes_them(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db", "0004")
    _migrate(path, "0005")
    con = sqlite3.connect(path)
    try:
        pairs = con.execute(
            "select l.job_created_at, j.created_at from job_labels l join jobs j on j.id = l.job_id"
        ).fetchall()
        assert len(pairs) == 3 and all(a == b for a, b in pairs)
        indexes = {r[1] for r in con.execute("pragma index_list(job_labels)")}
        assert "ix_job_labels_label_job_created_at_job_id" in indexes
        assert "ix_job_labels_label_job_id" not in indexes
    finally:
        con.close()
    assert_search_in_sync(path)

    _migrate(path, "0004", downgrade=True)
    con = sqlite3.connect(path)
    try:
        assert [r[1] for r in con.execute("pragma table_info(job_labels)")] == ["job_id", "label"]
        indexes = {r[1] for r in con.execute("pragma index_list(job_labels)")}
        assert "ix_job_labels_label_job_id" in indexes
        left = con.execute(
            "select type, name from sqlite_master where name like 'jobs!_fts%' escape '!' "
            "or type = 'trigger'"
        ).fetchall()
        assert left == []
    finally:
        con.close()


@pytest.mark.parametrize("restores_the_index", [True, False])
def test_a_migration_that_rebuilds_jobs_must_restore_the_search_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restores_the_index: bool
) -> None:
    # Batch mode (SQLite's way to ALTER) copies `jobs` into a new table: the triggers go with
    # the old one, and rowids are renumbered where pruning left gaps, so the index points at
    # the wrong jobs. The recipe (below) for such a migration: keep the triggers' SQL, recreate
    # them after the rebuild, and rebuild the index. Without it, the checks above catch it.
    recipe = (
        """
    for sql in triggers:
        op.execute(sql)
    op.execute("INSERT INTO jobs_fts (jobs_fts) VALUES ('rebuild')")
"""
        if restores_the_index
        else ""
    )
    scripts = _scripts_plus_revision_9999(
        tmp_path,
        f"""
def upgrade():
    triggers = [
        row[0]
        for row in op.get_bind().exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'jobs'"
        )
    ]
    with op.batch_alter_table("jobs", recreate="always") as batch:
        batch.add_column(sa.Column("future", sa.Integer(), nullable=True))
{recipe}

def downgrade():
    pass
""",
    )
    head = ScriptDirectory(str(db.migrations_dir())).get_current_head()
    assert head is not None
    monkeypatch.setattr(db_migrate, "migrations_dir", lambda: scripts)
    path = make_db(tmp_path / "jobs.db", head)
    con = sqlite3.connect(path)
    with con:
        con.execute("pragma foreign_keys = on")
        con.execute("delete from jobs where id = 'aaaa00000002'")  # a gap in the rowids
    con.close()
    assert_search_in_sync(path)
    last = "select rowid from jobs where id = 'dddd00000005'"
    before = _one(path, last)
    _migrate(path, "head")
    assert _revision(path) == "9999"
    assert _one(path, last) == before - 1  # renumbered
    if restores_the_index:
        assert_search_in_sync(path)
    else:
        with pytest.raises(AssertionError):
            assert_search_in_sync(path)


def _one(path: Path, sql: str) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute(sql).fetchone()[0])
    finally:
        con.close()


def test_deleting_a_job_finds_its_reruns_by_index(tmp_path: Path) -> None:
    # What the foreign key's ON DELETE SET NULL runs for each deleted job (0006).
    path = tmp_path / "jobs.db"
    _migrated(path)
    con = sqlite3.connect(path)
    try:
        plan = con.execute(
            "explain query plan update jobs set rerun_of = null where rerun_of = 'x'"
        ).fetchall()
        assert "USING INDEX ix_jobs_rerun_of" in plan[0][3]
    finally:
        con.close()


def test_0007_adds_the_start_intent_in_place_and_downgrade_drops_it(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db", "0006")
    rowids = _rowids(path)
    _migrate(path, "0007")
    con = sqlite3.connect(path)
    try:
        # Jobs of an older server have no recorded intent: they are reconciled as before.
        assert con.execute("select count(start_attempted_at) from jobs").fetchone() == (0,)
    finally:
        con.close()
    assert _rowids(path) == rowids  # added in place: jobs was not rebuilt
    assert_search_in_sync(path)

    fresh = make_db(tmp_path / "new.db", "0007")
    con = sqlite3.connect(fresh)
    try:
        started = con.execute(
            "select count(*) from jobs where started_at is not null "
            "and start_attempted_at < started_at"
        ).fetchone()[0]
        assert started == len(JOBS)  # every fixture job started
    finally:
        con.close()
    _migrate(fresh, "0006", downgrade=True)
    assert "start_attempted_at" not in columns(fresh, ("jobs",))["jobs"]
    assert_search_in_sync(fresh)
    assert _not_in_models(fresh) == NOT_IN_MODELS


def _rowids(path: Path) -> list[tuple[int, str]]:
    con = sqlite3.connect(path)
    try:
        return con.execute("select rowid, id from jobs order by rowid").fetchall()
    finally:
        con.close()


def test_0008_withholds_secret_env_values_of_existing_jobs(
    new_db: Callable[[str], Target],
) -> None:
    path = make_db(new_db("jobs"), "0006")
    old = {
        "API_TOKEN": "t0k3n-value", "DB_PASSWORD": "hunter2", "SSH_KEY": "/keys/id",
        "MODE": "ci", "REPO_URL": "https://bot:p4ss-w0rd@git.example/repo.git",
        "GH": "ghp_" + "a1" * 18, "KEYBOARD": "us",
    }  # fmt: skip
    with Sql(path) as con:
        con.execute("update jobs set env = ? where id = 'aaaa00000001'", (json.dumps(old),))
        con.execute("update jobs set env = 'not json' where id = 'aaaa00000002'")
    _migrate(path, "head")

    def env_of(job_id: str) -> str:
        with Sql(path) as con:
            return str(con.execute("select env from jobs where id = ?", (job_id,))[0][0])

    scrubbed = json.loads(env_of("aaaa00000001"))
    withheld = {"API_TOKEN", "DB_PASSWORD", "SSH_KEY", "REPO_URL", "GH"}
    assert scrubbed == {k: "\0withheld" if k in withheld else v for k, v in old.items()}
    assert "t0k3n-value" not in env_of("aaaa00000001")
    assert env_of("aaaa00000002") == "not json"  # not a server's: left alone
    assert json.loads(env_of("bbbb00000003")) == {"FIXTURE": "1"}
    # Going back: an older server cannot start a job with a NUL in its environment.
    _migrate(path, "0007", downgrade=True)
    assert json.loads(env_of("aaaa00000001")) == {k: "" if k in withheld else v
                                                  for k, v in old.items()}  # fmt: skip
