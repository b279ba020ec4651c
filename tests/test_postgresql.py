"""PostgreSQL specifics, on a real server (tests/pg.py): the Alembic migrations produce the
models' schema there too and run down and up again, the README's ``psql`` recipes run as
written, and a database of another program is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from mcp_background_job import db
from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.errors import StorageError
from mcp_background_job.store import Store

from .pg import PgServer
from .test_readme import PLACEHOLDER, block


def _name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def test_migrations_produce_the_models_schema_and_round_trip(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    engine = db.make_sync_engine(url)
    try:
        with engine.connect() as conn:
            db.upgrade_to_head(conn)
            opts = {"compare_type": True, "include_name": db.include_name}
            diff = compare_metadata(MigrationContext.configure(conn, opts=opts), db.metadata)
            assert diff == []
            conn.rollback()
        views = pg_server.psql(
            "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.views "
            "WHERE table_schema = 'public'",
            _name(url),
        )
        assert views.split(",") == sorted(db.VIEWS)
        with engine.connect() as conn:
            db.migrate_to(conn, "base", downgrade=True)
            assert db.schema_revision(conn, url) is None
            conn.rollback()
        assert pg_server.psql("SELECT count(*) FROM pg_views WHERE schemaname = 'public'",
                              _name(url)) == "0"  # fmt: skip
        with engine.connect() as conn:
            db.upgrade_to_head(conn)
            assert db.schema_revision(conn, url) == db.head_revision()
            conn.rollback()
    finally:
        engine.dispose()


async def test_a_database_of_another_program_is_refused(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    pg_server.psql("CREATE TABLE invoices (id int)", _name(url))
    store = Store(url)
    with pytest.raises(StorageError, match="PostgreSQL database of another program"):
        await store.open()
    await store.close()


@dataclass
class PgHistory:
    url: str
    ok: str
    failed: str
    slow: str


@pytest.fixture
async def pg_history(pg_server: PgServer) -> AsyncIterator[PgHistory]:
    url = pg_server.new_database()
    app = await App.open(Settings(db=url, subreaper=False, host="box1"))
    try:
        jobs = []
        for command, labels in (
            ("echo a; sleep 0.2; echo b; sleep 0.2; echo c", ["ci"]),  # one stream: one order
            ("echo failing; exit 3", ["ci"]),
            ("sleep 2", ["nightly"]),  # slowest by far, even on a loaded machine
        ):
            view = await app.execute(command, labels=labels)
            assert await app.runner.wait_end(view.id, 30)
            jobs.append(view.id)
    finally:
        await app.close()
    yield PgHistory(url, *jobs)


def test_the_psql_recipes(pg_server: PgServer, pg_history: PgHistory) -> None:
    lines = block("Many machines", "sql").splitlines()
    titles = [line.removeprefix("-- ") for line in lines if line.startswith("-- ")]
    queries = [line for line in lines if line and not line.startswith("--")]
    assert len(queries) == len(titles) == 8
    h = pg_history
    got = {
        t: pg_server.psql(q.replace(PLACEHOLDER, h.ok[:4]), _name(h.url))
        for t, q in zip(titles, queries, strict=True)
    }
    last = got["the last 10 jobs, with their machine"].splitlines()
    assert [row.split("|")[:2] for row in last] == [[j, "box1"] for j in (h.slow, h.failed, h.ok)]
    failures = got["failures today (local time)"].splitlines()
    assert [row.split("|")[:3] for row in failures] == [[h.failed, "failed", "3"]]
    assert got["a job's full output as text"] == "a\nb\nc"  # (psql -A -t strips the newline)
    slowest = got["the slowest commands"].splitlines()
    assert slowest[0].split("|")[0] == h.slow and float(slowest[0].split("|")[1]) >= 2
    labels = [row.split("|")[:3] for row in got["jobs by label"].splitlines()]
    assert labels == [["ci", "2", "1"], ["nightly", "1", "0"]]
    assert got["the policy in force at each start"]
    assert got["jobs per machine and status"].splitlines() == ["box1|completed|2", "box1|failed|1"]


async def test_the_readme_set_up_a_database_owned_by_an_ordinary_role(pg_server: PgServer) -> None:
    # README "Many machines": `createdb -O alice jobs` as an administrator, then every server
    # connects as alice (no superuser): the first one migrates, pg_trgm included (a trusted
    # extension since PostgreSQL 13, so the database's owner may create it).
    name = _name(pg_server.new_database("owned"))
    role = f"alice_{name}"
    pg_server.psql(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB")
    pg_server.psql(f"ALTER DATABASE {name} OWNER TO {role}")
    store = Store(f"postgresql://{role}@/{name}?host={pg_server.socket_dir}")
    try:
        await store.open()
    finally:
        await store.close()
    assert pg_server.psql("SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'", name)
    revision = pg_server.psql("SELECT version_num FROM alembic_version", name)
    assert revision == db.head_revision()
    owners = pg_server.psql("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'",
                            name)  # fmt: skip
    assert owners == role


def test_output_commits_do_not_wait_for_the_wal_flush_other_writes_do(pg_server: PgServer) -> None:
    """Output transactions commit as SQLite's WAL with synchronous=NORMAL does (no flush wait);
    every other transaction keeps PostgreSQL's default, durable commit."""
    from mcp_background_job.store.output import write_output
    from mcp_background_job.store.records import OutputBatch

    engine = db.make_sync_engine(pg_server.new_database())
    try:
        with engine.connect() as conn:
            db.upgrade_to_head(conn)
            conn.commit()
            # The test server runs without flushes (tests/pg.py): the production default here.
            conn.exec_driver_sql("SET synchronous_commit = on")
            conn.commit()
            with conn.begin():
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
                write_output(conn, [OutputBatch("nojob")])
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            with conn.begin():  # SET LOCAL: the next transaction is durable again
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    finally:
        engine.dispose()
