"""Living with a bad, locked, read-only or full database, and the command line's edges: each
fault is real (files that are not databases, a ``sqlite3`` shell holding the lock, tmpfs mounts
that are full or read-only, directories of another user)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mcp_background_job import db
from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.errors import InvalidRequest, StorageError
from mcp_background_job.jobs import AuditEvent
from mcp_background_job.store import Store
from mcp_background_job.store.writer import Writer

from .fixtures.make_db import make_db
from .storage_helpers import (
    BAD_FILES,
    fill_disk,
    leave_wal_content,
    make_bad_file,
    remount_read_only,
    sqlite3_holding_lock,
    tmpfs,
)
from .test_cli import EXE, _env, cli, ok

NOBODY = 65534


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture
def good_db(tmp_path: Path) -> Path:
    """A real database at the newest schema, with jobs and output."""
    return make_db(tmp_path / "good" / "jobs.db", "head")


def _refused(proc: subprocess.CompletedProcess[bytes], phrase: str, code: int = 1) -> str:
    err = proc.stderr.decode()
    assert proc.returncode == code, (proc.returncode, err)
    assert phrase in err and "Traceback" not in err, err
    return err


# --- files that cannot be the database (item 1) -----------------------------------------------


COMMANDS = (
    ["list"],
    ["show", "aaaa00000001"],
    ["logs", "aaaa00000001"],
    ["stats"],
    ["audit"],
    ["kill", "aaaa00000001"],
    ["run", "--", "true"],
    ["db", "current"],
    ["db", "upgrade"],
    ["db", "prune", "--older-than", "1d"],
    ["db", "vacuum"],
)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_every_command_refuses_a_bad_file_at_once(kind: str, tmp_path: Path, good_db: Path) -> None:
    # A text file used to hang every caller for ever: the writer thread died connecting and
    # nobody settled its futures.
    path = make_bad_file(kind, tmp_path / "bad" / "jobs.db", good_db)
    before = _digest(path)
    commands = COMMANDS if kind == "text" else (["list"], ["audit"], ["run", "--", "true"])
    for args in commands:
        started = time.monotonic()
        proc = cli(*args, db=path)  # 120 s timeout: a hang fails the test
        _refused(proc, BAD_FILES[kind])
        assert time.monotonic() - started < 30, args
        assert _digest(path) == before, f"{args} changed the file"
        assert not path.with_name("jobs.db-wal").exists()


def test_a_missing_parent_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "jobs.db"
    for args in (["list"], ["audit"], ["db", "current"], ["kill", "abc"], ["db", "vacuum"]):
        _refused(cli(*args, db=missing), "No database at")
    assert not (tmp_path / "no").exists()
    # A server (here `run`) creates it, owner-only.
    ok(cli("run", "-q", "--db", missing, "--", "true"))
    assert stat.S_IMODE(missing.parent.stat().st_mode) == 0o700


async def test_a_writer_that_cannot_connect_fails_every_unit(tmp_path: Path) -> None:
    path = make_bad_file("text", tmp_path / "notes.db")
    engine = db.make_sync_engine(path)
    writer = Writer(engine)
    try:
        units = [asyncio.ensure_future(writer.run(lambda c: 1)) for _ in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*units, return_exceptions=True), 10)
        assert all(isinstance(r, StorageError) for r in results), results
        assert all("is not an SQLite database" in str(r) for r in results)
        with pytest.raises(StorageError, match="is not an SQLite database"):
            await asyncio.wait_for(writer.run(lambda c: 2), 10)  # and every later one
    finally:
        await writer.close()
        engine.dispose()


class _Crash(BaseException):
    """Not an Exception: nothing in the writer catches it, so its thread dies."""


async def test_a_writer_thread_that_dies_in_a_unit_fails_every_unit(tmp_path: Path) -> None:
    engine = db.make_sync_engine(tmp_path / "w.db")
    writer = Writer(engine)

    def crash(_conn: object) -> None:
        raise _Crash("boom")

    try:
        await writer.run(lambda c: c.exec_driver_sql("CREATE TABLE t (x INTEGER)"))
        units: list[asyncio.Future[object]] = [asyncio.ensure_future(writer.run(crash))]
        units += [asyncio.ensure_future(writer.run(lambda c: 1)) for _ in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*units, return_exceptions=True), 10)
        assert all(isinstance(r, StorageError) for r in results), results
        assert all("The database writer stopped: _Crash: boom" in str(r) for r in results)
        with pytest.raises(StorageError, match="writer stopped"):
            await asyncio.wait_for(writer.run(lambda c: 2), 10)
    finally:
        await writer.close()
        engine.dispose()


async def test_an_empty_file_is_never_taken_as_a_new_database(tmp_path: Path) -> None:
    path = make_bad_file("empty", tmp_path / "jobs.db")
    with pytest.raises(StorageError, match="is an empty file"):
        await App.open(Settings(db=path, subreaper=False))
    assert path.stat().st_size == 0


def test_a_new_database_appears_whole_once_when_servers_start_together(tmp_path: Path) -> None:
    # Created under a temporary name and linked into place: never seen half-made (or empty),
    # and of several processes creating it at once one wins and the others use it.
    fresh = tmp_path / "new" / "jobs.db"
    env = _env(MCP_BACKGROUND_JOB_DB=str(fresh))
    procs = [
        subprocess.Popen(
            [str(EXE), "run", "-q", "--", f"echo {i}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(json.loads(ok(cli("list", "--json", db=fresh)))) == 4
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["jobs.db", "jobs.db.spool"]
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_an_sqlite_database_of_another_program_is_not_taken_over(tmp_path: Path) -> None:
    other = tmp_path / "places.sqlite"
    con = sqlite3.connect(other)
    con.execute("create table moz_places (url text)")
    con.commit()
    con.close()
    before = _digest(other)
    for args in (["list"], ["run", "--", "true"]):
        _refused(cli(*args, db=other), "database of another program")
    assert _digest(other) == before


# --- App.open leaves nothing behind (item 2) ---------------------------------------------------


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "db-writer" and t.is_alive()]


async def test_a_failed_migration_leaves_no_writer_thread(tmp_path: Path) -> None:
    # A 0001 database with an event of a job that does not exist: the upgrade's foreign key
    # check refuses it, in the writer thread.
    path = make_db(tmp_path / "jobs.db", "0001")
    con = sqlite3.connect(path)
    with con:
        con.execute(
            "insert into job_events (job_id, at, to_status) values ('gone', "
            "'2026-01-01 00:00:00', 'queued')"
        )
    con.close()
    before = len(_writer_threads())
    with pytest.raises(StorageError, match="dangling references"):
        await App.open(Settings(db=path, subreaper=False))
    assert len(_writer_threads()) == before


# --- a held lock (item 3) ----------------------------------------------------------------------


def test_reading_commands_work_while_sqlite3_holds_the_write_lock(good_db: Path) -> None:
    # The schema check took the write lock even for reads: they failed after 12 s.
    with sqlite3_holding_lock(good_db):
        for args in (["list"], ["show", "aaaa00000001"], ["logs", "cccc"], ["stats"], ["audit"]):
            ok(cli(*args, db=good_db))


async def test_a_server_opens_while_sqlite3_holds_the_write_lock(good_db: Path) -> None:
    with sqlite3_holding_lock(good_db) as shell:
        store = Store(good_db)
        await store.open()  # at the newest schema: nothing to migrate, no write lock needed
        try:
            assert (await store.get_job("aaaa00000001")).status == "completed"
            with pytest.raises(StorageError, match="locked by another program") as caught:
                await store.record_audit(_audit_event())
            assert f"pid {shell.pid} (sqlite3)" in str(caught.value)
        finally:
            await store.close()


def _audit_event() -> AuditEvent:
    return AuditEvent(kind="policy_loaded", server_id="test")


async def test_writes_behind_a_stuck_lock_fail_together_with_a_clear_error(good_db: Path) -> None:
    # Under a long lock, each queued write waited its own 10 s busy timeout in turn and failed
    # as "Internal error (OperationalError)". Now a write waits at most 10 s after it was
    # handed over, those queued behind it fail with it, and the error names the holder.
    store = Store(good_db)
    await store.open()
    try:
        with sqlite3_holding_lock(good_db) as shell:
            loop = asyncio.get_running_loop()
            started = loop.time()
            ended: list[float] = []

            async def write() -> BaseException | None:
                try:
                    await store.record_audit(_audit_event())
                except StorageError as exc:
                    return exc
                finally:
                    ended.append(loop.time() - started)
                return None

            first = asyncio.ensure_future(write())
            await asyncio.sleep(1.0)  # the first is waiting for the lock now
            later = [asyncio.ensure_future(write()) for _ in range(3)]
            await asyncio.sleep(0.5)
            last = asyncio.ensure_future(write())
            errors = await asyncio.gather(first, *later, last)
        assert all(isinstance(e, StorageError) and e.kind == "locked" for e in errors), errors
        assert all(f"pid {shell.pid} (sqlite3)" in str(e) for e in errors)
        assert max(ended) < 16, ended  # not 10 s for each in turn (20 s and more)
        await store.record_audit(_audit_event())  # the lock is gone: writes go through
    finally:
        await store.close()


# --- read-only databases (item 4) ------------------------------------------------------------


READS = (["list"], ["show", "aaaa00000001"], ["logs", "cccc"], ["stats"], ["audit"])
WRITES = (
    ["run", "--", "true"],
    ["kill", "dddd00000005"],
    ["db", "prune", "--older-than", "1d"],
    ["db", "vacuum"],
    ["db", "upgrade"],
)


LABEL_IN_WAL = (
    "insert into job_labels values ('aaaa00000001', 'in-wal', "
    "(select created_at from jobs where id = 'aaaa00000001'));"
)


@pytest.mark.parametrize("wal", [False, True], ids=["checkpointed", "with-wal"])
def test_a_read_only_history_can_be_read(tmp_path: Path, wal: bool) -> None:
    with tmpfs(tmp_path / "ro", "32m") as mount:
        path = make_db(mount / "jobs.db", "head")
        if wal:
            # What a server that was killed leaves: rows only in the -wal, and the -shm.
            leave_wal_content(path, LABEL_IN_WAL)
        remount_read_only(mount)
        listed = json.loads(ok(cli("list", "--json", "--label", "in-wal", db=path)))
        assert [j["id"] for j in listed] == (["aaaa00000001"] if wal else [])
        for args in READS[1:] if not wal else READS[2:3]:
            ok(cli(*args, db=path))
        for args in WRITES if not wal else WRITES[:1]:
            _refused(cli(*args, db=path), "read-only here (its file system is mounted read-only)")


async def test_a_read_only_database_refuses_writes_in_process(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "32m") as mount:
        path = make_db(mount / "jobs.db", "head")
        remount_read_only(mount)
        with pytest.raises(StorageError, match="read-only"):
            await Store(path).open()
        store = Store(path)
        await store.open(create=False, reading=True)
        try:
            assert store.read_only
            assert (await store.get_job("aaaa00000001")).exit_code == 0
            with pytest.raises(StorageError, match="read-only") as caught:
                await store.record_audit(_audit_event())
            assert caught.value.kind == "read_only"
        finally:
            await store.close()


# --- a full disk (item 5) -----------------------------------------------------------------------


def test_a_full_disk_at_start_is_said_plainly_and_reads_still_work(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "32m") as mount:
        path = mount / "jobs.db"
        ok(cli("run", "-q", "--", "echo stored before the disk filled", db=path))
        fill_disk(mount)
        for args in (["run", "--", "true"], ["serve"]):
            _refused(cli(*args, db=path), "Disk full: no space left for")
        [job] = json.loads(ok(cli("list", "--json", db=path)))
        assert ok(cli("logs", job["id"], db=path)) == "stored before the disk filled\n"
        ok(cli("stats", db=path))


# --- directories and ownership (item 6) --------------------------------------------------------


def test_directories_are_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _env(HOME=str(home))
    env.pop("XDG_STATE_HOME", None)
    proc = subprocess.run(
        ["sh", "-c", 'umask 000 && exec "$0" run -q -- "echo made"', str(EXE)],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    state = home / ".local" / "state" / "mcp-background-job"
    for made in (home / ".local", home / ".local" / "state", state, state / "jobs.db.spool"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    assert stat.S_IMODE((state / "jobs.db").stat().st_mode) == 0o600


def test_another_users_database_is_refused_for_serving_and_read_for_reading(
    tmp_path: Path,
) -> None:
    theirs = tmp_path / "theirs" / "jobs.db"
    ok(cli("run", "-q", "--", "echo mine once", db=theirs))
    os.chown(theirs.parent, NOBODY, NOBODY)
    for args in (["run", "--", "true"], ["serve"], ["db", "upgrade"], ["db", "vacuum"]):
        _refused(cli(*args, db=theirs), "belongs to nobody (uid 65534)")
    [job] = json.loads(ok(cli("list", "--json", db=theirs)))
    assert ok(cli("logs", job["id"], db=theirs)) == "mine once\n"
    os.chown(theirs.parent, os.geteuid(), os.getegid())
    os.chown(theirs, NOBODY, NOBODY)
    _refused(cli("run", "--", "true", db=theirs), "The database " + str(theirs) + " belongs to")


# --- the audit command (item 7) -----------------------------------------------------------------


def test_audit_on_a_mistyped_path_creates_nothing_and_exits_1(tmp_path: Path) -> None:
    typo = tmp_path / "tpyo.db"
    _refused(cli("audit", db=typo), "No database at", code=1)
    assert not typo.exists()


def test_audit_job_prefixes_resolve_like_every_other_command(good_db: Path) -> None:
    ok(cli("run", "-q", "--", "echo audited", db=good_db))
    [job] = json.loads(ok(cli("list", "--json", "--command", "echo audited", db=good_db)))
    lines = ok(cli("audit", "--json", "--job", job["id"][:8], db=good_db)).splitlines()
    events = [json.loads(line) for line in lines]
    assert {e["job_id"] for e in events} == {job["id"]}
    assert [e["command"] for e in events if e["kind"] == "execute"] == ["echo audited"]
    # aaaa00000001 and aaaa00000002: an ambiguous prefix, and an unknown one, are the same
    # usage errors (exit 2) as for `show`.
    for prefix, phrase in (("aaaa", "matches several jobs"), ("ffff", "No job with id")):
        show = _refused(cli("show", prefix, db=good_db), phrase, code=2)
        assert _refused(cli("audit", "--job", prefix, db=good_db), phrase, code=2) == show


async def test_the_audit_tool_resolves_a_job_prefix(app: App) -> None:
    job = await app.execute("echo audited")
    result = await app.audit(job_id=job.id[:6])
    assert [(e.job_id, e.kind) for e in result.events] == [(job.id, "execute")]
    ids = [job.id]
    while not (shared := [c for c in "0123456789abcdef" if sum(i[0] == c for i in ids) > 1]):
        ids.append((await app.execute("true")).id)  # 17 jobs at most: two share a first digit
    with pytest.raises(InvalidRequest, match="matches several jobs"):
        await app.audit(job_id=shared[0])


#: One command of each way of printing: through `dispatch` (tables and JSON), `audit` and
#: `policy check` (which printed outside it), argparse's help and version, and `run`.
PRINTING = (
    ["list", "--json"],
    ["show", "aaaa00000001"],
    ["stats"],
    ["audit"],
    ["audit", "--json"],
    ["db", "history"],
    ["policy", "check", "--", "ls"],
    ["--help"],
    ["--version"],
    ["run", "--", "echo hi"],
)


def test_every_command_that_prints_stops_quietly_on_a_closed_pipe(good_db: Path) -> None:
    # `audit --json | head -c 100` ended in a BrokenPipeError traceback. Here the reader is
    # gone before the command writes anything, so every write meets the closed pipe.
    ok(cli("run", "-q", "--", "echo something audited", db=good_db))
    for args in PRINTING:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run(
                [str(EXE), *args],
                env=_env(MCP_BACKGROUND_JOB_DB=str(good_db)),
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=subprocess.PIPE,
                timeout=120,
                check=False,
            )
        finally:
            os.close(write_end)
        err = proc.stderr.decode()
        assert "Traceback" not in err and "BrokenPipe" not in err, (args, err)
        assert "Exception ignored" not in err, (args, err)


# --- db vacuum with a server running (item 8) ---------------------------------------------------


def test_vacuum_is_refused_while_a_server_uses_the_database(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    server = subprocess.Popen(
        [str(EXE), "run", "-q", "--", "sleep 60"],
        env=_env(MCP_BACKGROUND_JOB_DB=str(path)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not path.is_file() or "running" not in ok(cli("list", db=path)):
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.1)
        before = sum(p.stat().st_size for p in path.parent.glob("jobs.db*") if p.is_file())
        err = _refused(cli("db", "vacuum", db=path), "A server is using")
        assert f"pid {server.pid}" in err
        after = sum(p.stat().st_size for p in path.parent.glob("jobs.db*") if p.is_file())
        assert after <= before
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert "->" in ok(cli("db", "vacuum", db=path))  # no server: it runs
