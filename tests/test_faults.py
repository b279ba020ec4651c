"""Faults between the writes of a job's life: a job runs at most once and its true end is
recorded (see the order of writes in the ``runner`` package's docstring). Faults are real: a
``sqlite3`` connection of another process holding the write lock, triggers in the test's database
that make one write fail, processes that exit while the server looks away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mcp_background_job import proctree
from mcp_background_job.app import App
from mcp_background_job.capture import EndRecord, Ingester, spool_paths
from mcp_background_job.config import Settings
from mcp_background_job.db import BUSY_TIMEOUT_MS, utcnow
from mcp_background_job.errors import StorageError
from mcp_background_job.jobs import REASON_NO_EXIT, JobStatus, ServerInstance, Stream
from mcp_background_job.store import Store

from .conftest import wait_for

#: Holds the write lock of the database (argv[1]) until its stdin is closed.
LOCKER = (
    "import sqlite3, sys\n"
    "con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
    "con.execute('BEGIN IMMEDIATE')\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "con.execute('ROLLBACK')\n"
)


@contextlib.contextmanager
def write_lock(db: Path | str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``BEGIN IMMEDIATE`` on the database, as a ``sqlite3`` user might;
    released when the block ends (or earlier, with ``release``)."""
    assert isinstance(db, Path), "an SQLite file (these tests use SQLite)"
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    try:
        yield proc
    finally:
        release(proc)


def release(proc: subprocess.Popen[str]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None and not pipe.closed:
            pipe.close()
    proc.wait(timeout=30)


def sql(db: Path | str, statement: str) -> list[tuple[object, ...]]:
    assert isinstance(db, Path), "an SQLite file (these tests use SQLite)"
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            return con.execute(statement).fetchall()
    finally:
        con.close()


def status(db: Path | str, job_id: str) -> str:
    assert isinstance(db, Path), "an SQLite file (these tests use SQLite)"
    return str(sql(db, f"select status from jobs where id = '{job_id}'")[0][0])


# --- item: a storage error between the spawn and the running row ---------------------------


async def test_a_start_that_cannot_be_recorded_stops_the_process_and_fails_the_job(
    app: App, settings: Settings, tmp_path: Path
) -> None:
    sql(
        settings.db,
        "create trigger no_running before update of status on jobs when new.status = 'running' "
        "begin select raise(abort, 'injected: running cannot be written'); end",
    )
    with pytest.raises(StorageError, match="stopped at once"):
        await app.execute("exec sleep 300", cwd=str(tmp_path))
    [(job_id,)] = sql(settings.db, "select id from jobs")
    assert isinstance(job_id, str)
    # Nothing of it runs, and the row says so (never queued with a live process behind it).
    await wait_for(lambda: not proctree.job_tree(job_id, None, None), timeout=10)
    await wait_for(lambda: status(settings.db, job_id) == "failed", timeout=10)
    job = await app.store.get_job(job_id)
    assert job.reason is not None
    assert job.reason.startswith("failed to start: its start could not be recorded")
    assert "injected: running cannot be written" in job.reason
    assert job.signal == "SIGKILL"
    assert job.start_attempted_at is not None
    assert not app.runner.owns(job_id)


async def test_a_start_and_its_failure_that_cannot_be_recorded_leave_the_intent_to_the_next_server(
    settings: Settings, tmp_path: Path
) -> None:
    app = await App.open(settings)
    try:
        sql(
            settings.db,
            "create trigger frozen before update of status on jobs "
            "when new.status in ('running', 'failed') "
            "begin select raise(abort, 'injected: nothing can be written'); end",
        )
        with pytest.raises(StorageError, match="stopped at once"):
            await app.execute("exec sleep 300", cwd=str(tmp_path))
        [(job_id,)] = sql(settings.db, "select id from jobs")
        assert isinstance(job_id, str)
        await wait_for(lambda: not proctree.job_tree(job_id, None, None), timeout=10)
        # Still queued, but with its intent: no server starts it again.
        [(state, intent)] = sql(
            settings.db, f"select status, start_attempted_at from jobs where id = '{job_id}'"
        )
        assert (state, intent is not None) == ("queued", True)
    finally:
        await app.close()
    sql(settings.db, "drop trigger frozen")
    heir = await App.open(settings)
    try:
        await heir.runner.caught_up()  # reconciliation runs in the background
        job = await heir.store.get_job(job_id)
        assert (job.status, job.reason) == (JobStatus.FAILED, REASON_NO_EXIT)
        assert [e.to_status for e in job.events] == [JobStatus.QUEUED, JobStatus.FAILED]
    finally:
        await heir.close()


# --- item: the audit row is written with the job --------------------------------------------


async def test_an_audit_row_that_cannot_be_written_fails_execute_with_nothing_created_or_run(
    app: App, settings: Settings, tmp_path: Path
) -> None:
    sql(
        settings.db,
        "create trigger no_audit before insert on audit_events when new.kind = 'execute' "
        "begin select raise(abort, 'injected: audit cannot be written'); end",
    )
    ran = tmp_path / "ran"
    with pytest.raises(Exception, match="injected: audit cannot be written"):
        await app.execute(f"touch {ran}", cwd=str(tmp_path))
    # No job was created, so none can run (here or on any server), and no duplicate follows
    # a client's retry.
    assert sql(settings.db, "select count(*) from jobs") == [(0,)]
    sql(settings.db, "drop trigger no_audit")
    after = await app.execute("echo next", cwd=str(tmp_path))
    assert await app.runner.wait_end(after.id, 15)
    assert not ran.exists()
    audited = await app.store.list_audit(kind="execute")
    assert [e.job_id for e in audited] == [after.id]


# --- item: an end that cannot be written -----------------------------------------------------


async def test_an_end_that_cannot_be_written_is_retried_and_kill_says_why_it_waits(
    app: App, settings: Settings, tmp_path: Path
) -> None:
    ready, term, go = tmp_path / "ready", tmp_path / "term", tmp_path / "go"
    # Exits 0 on TERM, once the test says so: the kill is requested while it is alive.
    script = (
        f"trap 'touch {term}; while [ ! -e {go} ]; do sleep 0.05; done; echo done; exit 0' TERM; "
        f"touch {ready}; while true; do sleep 0.05; done"
    )
    job = await app.execute(script, cwd=str(tmp_path))
    await wait_for(ready.exists, timeout=15)  # its trap is set
    kill = asyncio.ensure_future(app.runner.kill(job.id, signal.SIGTERM, 60))
    await wait_for(term.exists, timeout=15)
    with write_lock(settings.db) as lock:
        go.touch()
        # kill answers after its wait for the end (10 s), which cannot be written meanwhile
        killed = await asyncio.wait_for(kill, 40)
        assert killed.status is JobStatus.RUNNING
        # Past the busy timeout: the job stays known, and its view says why it is not ended.
        note = await wait_for(
            lambda: (n := app.runner.end_note(job.id)) and "cannot be recorded yet" in n and n,
            timeout=BUSY_TIMEOUT_MS / 1000 + 20,
        )
        assert "locked" in note
        assert app.runner.owns(job.id)
        view = await app.status(job.id)  # reads go on while the lock is held
        assert view.status is JobStatus.RUNNING
        assert view.note == app.runner.end_note(job.id)
        release(lock)
    # Recorded once the lock is gone: the kill was requested before it exited.
    await wait_for(lambda: status(settings.db, job.id) == "killed", timeout=30)
    final = await app.store.get_job(job.id)
    assert (final.exit_code, final.reason) == (0, "killed on request; ended by exit code 0")
    assert (await app.output(job.id)).text == "done\n"
    assert (await app.status(job.id)).note is None
    assert not list(settings.spool_path.glob(f"{job.id}.*"))  # end file and spool removed


async def test_a_stopped_servers_job_gets_the_true_end_left_in_its_end_file(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(settings.db)
    await store.open()
    gone = subprocess.Popen(["true"])
    gone.wait()
    server = ServerInstance(
        "stopped00001", gone.pid, None, proctree.boot_id(), os.uname().nodename, utcnow(), None
    )
    await store.register_server(server, version="t")
    await store.create_job(
        job_id="aaa000000001", command="echo out; exit 7", cwd="/", shell="/bin/sh", env={},
        labels=(), timeout_s=None, owner_id=server.id,
    )  # fmt: skip
    await store.transition(
        "aaa000000001",
        JobStatus.RUNNING,
        server_id=server.id,
        pid=gone.pid,
        boot_id=proctree.boot_id(),
    )
    # What a server leaves when it stops while the end cannot be written: output in the spool
    # file, the exit status in an end file; and it is marked stopped.
    ended_at = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    settings.spool_path.mkdir(parents=True)
    spool_paths(settings.spool_path, "aaa000000001")[Stream.STDOUT].write_bytes(b"out\n")
    spool_paths(settings.spool_path, "aaa000000001")[Stream.STDERR].write_bytes(b"")
    Ingester(settings, store).write_end("aaa000000001", EndRecord(7, ended_at))
    await store.mark_server_stopped(server.id)
    await store.close()

    app = await App.open(settings)
    try:
        await app.runner.caught_up()  # reconciliation runs in the background
        job = await app.store.get_job("aaa000000001")
        assert (job.status, job.exit_code, job.reason) == (JobStatus.FAILED, 7, None)
        assert job.ended_at == ended_at
        assert (await app.output(job.id)).text == "out\n"
        assert not list(settings.spool_path.glob("aaa000000001.*"))
    finally:
        await app.close()


# --- item: shutdown edges ---------------------------------------------------------------------


async def test_a_job_that_exited_by_itself_as_shutdown_began_keeps_its_outcome(
    settings: Settings, tmp_path: Path
) -> None:
    app = await App.open(settings)
    closed = False
    try:
        job = await app.execute("sleep 0.3", cwd=str(tmp_path))
        assert job.pid is not None
        # Hold the event loop until the job has exited (a zombie: the server has not seen it),
        # then shut down at once, as a server does that gets stdin EOF at that moment.
        deadline = time.monotonic() + 15
        while _state(job.pid) != "Z":
            assert time.monotonic() < deadline, "the job did not exit"
            time.sleep(0.01)  # blocking on purpose: the loop must not see the exit
        await app.close()
        closed = True
    finally:
        if not closed:
            await app.close()
    store = Store(settings.db)
    await store.open()
    try:
        ended = await store.get_job(job.id)
        assert (ended.status, ended.exit_code, ended.reason) == (JobStatus.COMPLETED, 0, None)
        assert ended.end_cause is None
    finally:
        await store.close()


def _state(pid: int) -> str | None:
    info = proctree.read_stat(pid)
    return info.state if info is not None else None


async def test_shutdown_logs_a_stop_request_it_could_not_record_with_the_job_id(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = await App.open(settings)
    job = await app.execute("exec sleep 300", cwd=str(tmp_path))
    sql(
        settings.db,
        "create trigger no_cause before update of end_cause on jobs "
        "begin select raise(abort, 'injected: end cause cannot be written'); end",
    )
    with caplog.at_level(logging.ERROR, logger="mcp_background_job.runner"):
        await app.close()
    logged = [r for r in caplog.records if r.getMessage().startswith("shutdown_end_not_requested")]
    assert len(logged) == 1
    assert f"id={job.id}" in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert "injected: end cause cannot be written" in str(logged[0].exc_info[1])


# --- item: waiting sees ends recorded by anyone ----------------------------------------------


async def test_wait_sees_a_kill_of_a_queued_job_by_another_server(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    owner = await App.open(Settings(db=db, max_concurrent=1, subreaper=False))
    other = await App.open(Settings(db=db, subreaper=False))
    try:
        blocker = await owner.execute("exec sleep 60", cwd=str(tmp_path))
        queued = await owner.execute("echo never", cwd=str(tmp_path))
        labelled = await owner.execute("echo never", cwd=str(tmp_path), labels=["batch"])
        assert queued.status is JobStatus.QUEUED
        waiting = asyncio.ensure_future(owner.wait(queued.id, timeout_s=40))
        waiting_many = asyncio.ensure_future(owner.wait_many(label="batch", timeout_s=40))
        # Both are waiting (registered with the owner's runner) before the kills.
        await wait_for(lambda: {queued.id, labelled.id} <= owner.runner._waits._watchers.keys())
        await other.kill(queued.id)
        await other.kill(labelled.id)
        result = await asyncio.wait_for(waiting, 20)
        assert result.finished and result.job.status is JobStatus.KILLED
        assert result.waited_s < 10, result.waited_s
        many = await asyncio.wait_for(waiting_many, 20)
        assert many.finished and many.counts == {"killed": 1}
        assert many.waited_s < 10, many.waited_s
        await owner.kill(blocker.id, grace_s=1)
    finally:
        await asyncio.gather(owner.close(), other.close())


# --- item: claimed jobs run only under the claiming server's policy ---------------------------


async def test_a_claimed_job_is_checked_against_the_claiming_servers_policy_and_audited(
    tmp_path: Path,
) -> None:
    allowed_root = tmp_path / "allowed"
    allowed_root.mkdir()
    settings = Settings(
        db=tmp_path / "jobs.db", subreaper=False, allowed_cwd_roots=(allowed_root,),
        policy_deny=("touch *forbidden*",),
    )  # fmt: skip
    store = Store(settings.db)
    await store.open()
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = ServerInstance(
        "deadserver01", gone.pid, None, proctree.boot_id(), os.uname().nodename, utcnow(), None
    )
    await store.register_server(dead, version="t")
    # Queued by someone who can write the file, for a server that is gone.
    for job_id, command, cwd in (
        ("aaa000000001", f"touch {tmp_path}/forbidden", allowed_root),
        ("aaa000000002", f"touch {tmp_path}/outside", tmp_path),
        ("aaa000000003", f"touch {tmp_path}/fine", allowed_root),
    ):
        await store.create_job(
            job_id=job_id, command=command, cwd=str(cwd), shell="/bin/sh", env={}, labels=(),
            timeout_s=None, owner_id=dead.id,
        )  # fmt: skip
    await store.close()

    app = await App.open(settings)
    try:
        for job_id in ("aaa000000001", "aaa000000002", "aaa000000003"):
            assert await app.runner.wait_end(job_id, 15)
        refused = await app.store.get_job("aaa000000001")
        assert refused.status is JobStatus.FAILED
        assert refused.reason is not None and "rule deny:touch *forbidden*" in refused.reason
        outside = await app.store.get_job("aaa000000002")
        assert outside.status is JobStatus.FAILED
        assert outside.reason is not None and "cwd-roots" in outside.reason
        fine = await app.store.get_job("aaa000000003")
        assert fine.status is JobStatus.COMPLETED
        assert not (tmp_path / "forbidden").exists() and not (tmp_path / "outside").exists()
        assert (tmp_path / "fine").exists()
        events = {e.job_id: e for e in await app.store.list_audit(kind="execute")}
        assert events["aaa000000001"].decision == "refused"
        assert events["aaa000000002"].rule == "cwd-roots"
        assert events["aaa000000003"].decision == "allowed"
        for event in events.values():
            assert event.detail["claimed_from"] == dead.id
            assert event.server_id == app.runner.server_id
    finally:
        await app.close()
