"""A real stdio server on a database it cannot use, one another program has locked, and one on
a full disk: it says why and exits (or answers every call), never hangs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import time
from pathlib import Path

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp.exceptions import ToolError

from tests.fixtures.make_db import make_db
from tests.storage_helpers import (
    BAD_FILES,
    fill_disk,
    make_bad_file,
    remount_read_only,
    sqlite3_holding_lock,
    tmpfs,
)

from .helpers import CALL_TIMEOUT_S, Server, server_command, start_server, wait_for

_refusals = itertools.count(1)


async def refusal(db: Path, cwd: Path) -> tuple[str, float]:
    """Start a server on ``db`` and connect to it as a client would; returns what it logged
    and how long it took to go away. Fails if it answered instead."""
    log = cwd / f"server-refused-{next(_refusals)}.log"  # shown by the conftest on failure
    command, args = server_command(db)
    transport = StdioTransport(command, args, cwd=str(cwd), keep_alive=False, log_file=log)
    started = time.monotonic()
    with pytest.raises(Exception) as caught:  # the SDK says "Connection closed"
        async with Client(transport, timeout=CALL_TIMEOUT_S) as client:
            await client.call_tool("list", {})
    assert "Connection closed" in str(caught.value), caught.value
    return log.read_text(), time.monotonic() - started


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
async def test_a_server_on_a_bad_file_exits_with_the_reason(kind: str, tmp_path: Path) -> None:
    good = make_db(tmp_path / "good.db", "head")
    path = make_bad_file(kind, tmp_path / "bad" / "jobs.db", good)
    text, took = await refusal(path, tmp_path)
    assert BAD_FILES[kind] in text and "Traceback" not in text, text
    # It hung for ever on a text file. The server itself exits in ~0.85 s here on a quiet
    # machine (it checks the file before importing FastMCP); the bound is for a busy one.
    assert took < 30


async def test_a_server_on_a_read_only_or_foreign_database_exits_with_the_reason(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "ro", "32m") as mount:
        path = make_db(mount / "jobs.db", "head")
        remount_read_only(mount)
        text, _ = await refusal(path, tmp_path)
        assert "is read-only here (its file system is mounted read-only)" in text, text
    theirs = make_db(tmp_path / "theirs" / "jobs.db", "head")
    os.chown(theirs.parent, 65534, 65534)
    text, _ = await refusal(theirs, tmp_path)
    assert "belongs to nobody (uid 65534)" in text and "Traceback" not in text, text


async def test_a_server_starts_while_sqlite3_reads_or_briefly_writes(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db", "head")
    with sqlite3_holding_lock(path, write=False):
        async with start_server(path) as server:
            assert (await server.call("status", job_id="aaaa00000001"))["exit_code"] == 0
    with contextlib.ExitStack() as held:
        held.enter_context(sqlite3_holding_lock(path))
        starting = asyncio.ensure_future(_list_ids(path))
        await asyncio.sleep(2)  # the server is starting, waiting for the lock
        held.close()  # COMMIT: the lock is free again
        assert "aaaa00000001" in await starting


async def _list_ids(path: Path) -> list[str]:
    async with start_server(path) as server:
        return [j["id"] for j in (await server.call("list", limit=100))["jobs"]]


async def test_a_held_lock_is_named_in_errors_and_reads_go_on(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db", "head")
    with sqlite3_holding_lock(path) as shell:
        # Starting needs a write (the server registers itself): after the wait, the reason.
        text, _ = await refusal(path, tmp_path)
        assert f"locked by another program (pid {shell.pid} (sqlite3))" in text, text
        assert "Could not migrate" not in text and "Traceback" not in text
    async with start_server(path) as server:
        with sqlite3_holding_lock(path) as shell:
            with pytest.raises(ToolError) as caught:
                await server.execute("echo never")
            assert f"locked by another program (pid {shell.pid} (sqlite3))" in str(caught.value)
            assert "Internal error" not in str(caught.value)
            listed = await server.call("list", limit=100)  # reads need no lock
            assert "aaaa00000001" in [j["id"] for j in listed["jobs"]]
            tail = await server.call("tail", job_id="aaaa00000001", lines=1)
            assert tail["text"] == "third line\n"
        done = await server.execute("echo after the lock")  # it goes through again
        assert (await server.wait_done(done["id"]))["exit_code"] == 0


async def test_reads_answer_on_a_full_disk_and_writes_say_so(tmp_path: Path) -> None:
    gate = tmp_path / "go"
    with tmpfs(tmp_path / "full", "32m") as mount:
        env = {"MCP_BACKGROUND_JOB_SPOOL_DIR": str(tmp_path / "spool")}  # jobs can still write
        path = mount / "jobs.db"
        async with start_server(path, env=env) as server:
            job = await server.execute(
                f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; "
                "head -c 4000000 /dev/zero | tr '\\0' x; echo; sleep 60"
            )
            await wait_for(
                lambda: _tail_is(server, job["id"], "first"), message="the first line stored"
            )
            _truncate_wal(path)
            filler = fill_disk(mount)
            gate.touch()  # 4 MB more output, which the database has no room for
            try:
                await asyncio.sleep(1)
                # Both used to answer "Internal error (OperationalError)": storing the latest
                # output before reading failed. They answer with what is stored.
                tail = await server.call("tail", job_id=job["id"], lines=1)
                assert tail["job_id"] == job["id"]
                page = await server.call("output", job_id=job["id"], max_bytes=100)
                assert page["text"].startswith("first\n")
                with pytest.raises(ToolError, match="Disk full: no space left for"):
                    await server.execute("echo no room")
            finally:
                filler.unlink()
            await server.call("kill", job_id=job["id"])
            await server.wait_done(job["id"])


async def _tail_is(server: Server, job_id: str, text: str) -> bool:
    tail = await server.call("tail", job_id=job_id, lines=1)
    return bool(tail["text"].rstrip("\n") == text)


def _truncate_wal(path: Path) -> None:
    """Checkpoint the WAL into the file and cut it to nothing, so that the next write has to
    grow it (on a full disk it cannot; an emptied WAL of some size would take it)."""
    deadline = time.monotonic() + 30
    while True:
        con = sqlite3.connect(path, timeout=10)
        try:
            busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            con.close()
        if not busy and path.with_name(path.name + "-wal").stat().st_size == 0:
            return
        assert time.monotonic() < deadline, "could not truncate the WAL"
        time.sleep(0.05)
