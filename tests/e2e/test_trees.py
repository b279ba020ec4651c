"""Whole process trees when things go wrong: a fork bomb that times out, shutdown with jobs that
ignore SIGTERM or ended leaving processes behind, stray processes of a server that is gone, a
server that is killed or stopped while its jobs flood output, a database locked by another
program, a big leftover spool at start-up, and how fast a server exits.

Each test drives the real server over stdio (or as the MCP SDK starts it) and reads processes
from /proc and rows from the database file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from mcp_background_job import _watchdog

from .helpers import (
    is_running,
    job_processes,
    pids_with_cmdline,
    proc_state,
    query,
    server_command,
    start_server,
    wait_for,
)
from .test_security import NOBODY, Server, _python_for_nobody

#: A grandchild in a session of its own that ignores SIGTERM: what a process-group kill misses
#: and a TERM alone does not stop.
STUBBORN = "setsid sh -c 'trap \"\" TERM; exec {program}' &"


def spool_dir(db: Path) -> Path:
    return db.with_name(db.name + ".spool")


def spool_usage(db: Path) -> tuple[int, int]:
    """(bytes allocated on disk, bytes written) over the spool directory's files."""
    allocated = written = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(spool_dir(db)) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                allocated += st.st_blocks * 512
                written += st.st_size
    return allocated, written


def watchdog_of(server_pid: int) -> int | None:
    with os.scandir("/proc") as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    for pid in pids:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            st = _watchdog.read_stat(pid)
            if st is not None and st[1] == server_pid and b"_watchdog.py" in cmdline:
                return pid
    return None


def _zombie_children(pid: int) -> set[int]:
    with os.scandir("/proc") as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    return {p for p in pids if (st := _watchdog.read_stat(p)) and st[1] == pid and st[0] == "Z"}


def stop_everything_under(base: Path) -> None:
    """Kill every job process below ``base`` (also a fork bomb a failed test left behind)."""
    _watchdog.kill_tree(lambda: job_processes(under=base), 60.0)


# --- item: timeouts and shutdown stop whole trees ---------------------------------------------


@contextlib.asynccontextmanager
async def serve_as(
    db: Path, settings: dict[str, str], user: int | None, python: str, env: dict[str, str]
) -> AsyncIterator[Server]:
    """The server on stdio with ``MCP_BACKGROUND_JOB_<K>=V`` settings, as ``user`` (through
    setpriv) when given. Unlike ``test_security.serve`` it leaves job processes alone when it
    ends: what the server's shutdown leaves is what the test checks."""
    env = {**env, **{f"MCP_BACKGROUND_JOB_{k.upper()}": v for k, v in settings.items()}}
    command, args = python, ["-m", "mcp_background_job.cli", "--db", str(db)]
    if user is not None:
        args = [f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", command, *args]  # fmt: skip
        command = shutil.which("setpriv") or "setpriv"
        env.setdefault("HOME", str(db.parent))
    log = db.with_name("server-1.log")
    transport = StdioTransport(
        command, args, env=env, cwd=str(db.parent), keep_alive=False, log_file=log
    )
    async with Client(transport, timeout=90) as client:
        yield Server(client, db, log)


async def test_fork_bomb_timeout_stops_the_whole_tree_even_when_shutdown_follows() -> None:
    """``f(){ f <(f); }; f`` with a timeout: recorded timed_out, and nothing of it survives,
    also when the server shuts down right after the timeout fired (while the timeout's kill
    was still at work). Run as nobody: the kernel ignores RLIMIT_NPROC for root."""
    base = Path(tempfile.mkdtemp(prefix="mcp-bj-trees-", dir="/tmp"))
    if os.geteuid() == 0:
        # nobody's own directory: a server refuses a database directory of another user.
        os.chown(base, NOBODY, NOBODY)
    db = base / "jobs.db"
    # In a file: the policy judges command lines, and this test is about the process tree.
    (base / "bomb.sh").write_text("f(){ f <(f); }; f\n")
    (base / "bomb.sh").chmod(0o644)
    settings = {"limit_processes": "600", "kill_grace_s": "2"}
    python, extra, user = sys.executable, dict[str, str](), None
    if os.geteuid() == 0:
        found = _python_for_nobody(base)
        if isinstance(found, str):
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip(found)
        python, extra = found
        user = NOBODY
    try:
        async with serve_as(db, settings, user, python, extra) as s:
            # While the server runs: a timeout stops the tree until nothing is left.
            first = await s.execute(f"bash {base}/bomb.sh", timeout_s=3)
            done = await s.wait_done(first["id"], timeout_s=45)
            assert done["status"] == "timed_out", done
            await wait_for(lambda: not job_processes(first["id"]), timeout=30)
            [(server_pid,)] = query(db, "select pid from servers where stopped_at is null")
            # Reaped too (zombies count against RLIMIT_NPROC): the server adopted them.
            await wait_for(lambda: not _zombie_children(server_pid), timeout=10)

            # Shutdown right after the timeout fired: the job has ended, its tree has not.
            second = await s.execute(f"bash {base}/bomb.sh", timeout_s=3)
            done = await s.wait_done(second["id"], timeout_s=45)
            assert done["status"] == "timed_out", done
        # The client closed stdin: the server shut down, and nothing of the bomb is left.
        await wait_for(lambda: not is_running(server_pid), timeout=30)
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        while loop.time() < end:  # (a survivor would fork a new tree meanwhile)
            assert not job_processes(second["id"]), "the fork bomb survived the shutdown"
            await asyncio.sleep(0.05)
    finally:
        stop_everything_under(base)
        for log in base.glob("server-*.log"):
            sys.stderr.write(f"\n--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}\n")
        shutil.rmtree(base, ignore_errors=True)


async def test_shutdown_stops_every_tree_also_what_ended_jobs_left(db: Path) -> None:
    """A running job whose setsid grandchild ignores SIGTERM (the shell itself exits on TERM),
    and an ended job that left such a grandchild: after shutdown nothing of either is left,
    and the server itself did it (its watchdog had nothing to do)."""
    async with start_server(db) as s:
        running = await s.execute(STUBBORN.format(program="sleep 301") + " sleep 300")
        ended = await s.execute(STUBBORN.format(program="sleep 302") + " echo started")
        done = await s.wait_done(ended["id"])
        assert done["status"] == "completed"

        def grandchildren() -> set[int]:
            return (pids_with_cmdline("sleep", "301") & job_processes(running["id"])) | (
                pids_with_cmdline("sleep", "302") & job_processes(ended["id"])
            )

        left = await wait_for(lambda: grandchildren() if len(grandchildren()) == 2 else None)
        server_pid = s.pid
    await wait_for(lambda: not is_running(server_pid), message="the server to exit")
    assert not any(is_running(p) for p in left), "a grandchild survived the shutdown"
    assert job_processes(running["id"]) | job_processes(ended["id"]) == set()
    view = query(db, "select status, reason from jobs where id = ?", running["id"])
    assert view == [("killed", "server shutdown")]
    assert query(db, "select stopped_at is not null from servers") == [(1,)]
    assert "watchdog_jobs_stopped" not in s.log.read_text(), "the watchdog had to stop them"


async def test_reconcile_stops_strays_of_ended_jobs_whose_server_is_gone(
    db: Path, tmp_path: Path
) -> None:
    """A server and its watchdog are killed (SIGKILL both), leaving a process of an ended job.
    The next server stops it, found by its marker; it leaves alone what an ended job of a live
    server left, and a process whose marker names no job of this database."""
    async with start_server(db) as live:
        kept = await live.execute(STUBBORN.format(program="sleep 303") + " echo started")
        await live.wait_done(kept["id"])
        async with start_server(db) as doomed:
            stray = await doomed.execute(STUBBORN.format(program="sleep 304") + " echo started")
            await doomed.wait_done(stray["id"])
            await wait_for(lambda: job_processes(stray["id"]), message="the stray to start")
            watchdog = watchdog_of(doomed.pid)
            if watchdog is not None:
                os.kill(watchdog, signal.SIGKILL)
            os.kill(doomed.pid, signal.SIGKILL)
            await wait_for(lambda: not is_running(doomed.pid), message="the server to die")
        strays = job_processes(stray["id"])
        assert strays, "the ended job's process should have outlived its server"
        foreign = subprocess.Popen(
            ["sleep", "305"],
            env={**os.environ, "MCP_BACKGROUND_JOB_ID": "0123456789ab"},
            cwd=tmp_path,
            start_new_session=True,
        )
        kept_pids = job_processes(kept["id"])
        assert kept_pids
        try:
            async with start_server(db) as heir:
                await wait_for(lambda: not job_processes(stray["id"]), timeout=20)
                await wait_for(lambda: "strays_swept" in heir.log.read_text(), timeout=20)
                assert all(is_running(p) for p in kept_pids), "a live server's process was killed"
                assert is_running(foreign.pid), "a process of another database was killed"
        finally:
            foreign.kill()
            foreign.wait()


# --- item: the disk bound holds without the server --------------------------------------------

FLOOD = STUBBORN.format(program="yes") + " yes"


async def test_sigkilled_server_jobs_and_setsid_grandchildren_stop_at_once(db: Path) -> None:
    """The MCP client SIGKILLs the server's process group while two jobs flood output (one
    with a setsid grandchild that ignores SIGTERM): the watchdog stops them all within about
    a second, the spool stops growing, and the next server records them as lost."""
    async with start_server(db) as s:
        jobs = [await s.execute(FLOOD), await s.execute("yes")]
        await wait_for(lambda: all(len(job_processes(j["id"])) >= 1 for j in jobs))
        await wait_for(lambda: len(job_processes(jobs[0]["id"])) >= 3, message="the grandchild")
        await wait_for(lambda: spool_usage(db)[1] > 0, message="output to be spooled")
        os.killpg(s.pid, signal.SIGKILL)  # as the MCP client's last resort does
        killed_at = time.monotonic()
        await wait_for(lambda: not is_running(s.pid), message="the server to die")
        await wait_for(
            lambda: not any(job_processes(j["id"]) for j in jobs),
            timeout=10,
            message="the watchdog to stop the jobs",
        )
        took = time.monotonic() - killed_at
    sys.stderr.write(f"jobs stopped {took:.2f} s after the server was killed\n")
    assert took < 5.0  # ~0.1 s here; generous for a loaded machine
    written = spool_usage(db)[1]
    await asyncio.sleep(0.5)  # a measurement interval: nothing is left to write
    assert spool_usage(db)[1] == written, "the spool still grows"

    async with start_server(db) as heir:
        for job in jobs:
            view = await heir.wait_done(job["id"])
            assert (view["status"], view["reason"]) == ("failed", "lost: server exited"), view


async def test_stopped_server_pauses_its_jobs_until_it_continues(db: Path) -> None:
    """A SIGSTOPped server stores nothing: its jobs are paused (SIGSTOP) until it continues,
    so their spool files do not grow meanwhile."""
    async with start_server(db) as s:
        job = await s.execute(FLOOD)
        await wait_for(lambda: len(job_processes(job["id"])) >= 3, message="the grandchild")
        os.kill(s.pid, signal.SIGSTOP)
        try:
            await wait_for(
                lambda: all(proc_state(p) == "T" for p in job_processes(job["id"])),
                timeout=10,
                message="the jobs to be paused",
            )
            written = spool_usage(db)[1]
            await asyncio.sleep(0.5)  # a measurement interval
            assert spool_usage(db)[1] == written, "the spool grows while the server is stopped"
        finally:
            os.kill(s.pid, signal.SIGCONT)
        await wait_for(
            lambda: all(proc_state(p) != "T" for p in job_processes(job["id"])),
            timeout=10,
            message="the jobs to continue",
        )
        grew = spool_usage(db)[1]
        await wait_for(lambda: spool_usage(db)[1] > grew, message="output to flow again")
        view = await s.call("status", job_id=job["id"])
        assert view["status"] == "running"
        killed = await s.call("kill", job_id=job["id"], grace_s=1)
        assert killed["status"] == "killed"
        assert job_processes(job["id"]) == set()


async def test_output_of_what_an_ended_job_left_is_freed_as_it_comes(db: Path) -> None:
    """An ended job's setsid grandchild floods into its spool file, deleted at the job's end:
    while the server runs, what it writes is freed as it comes (it used to fill the disk)."""
    bound = 128 * 1024 * 1024
    async with start_server(db) as s:
        job = await s.execute(STUBBORN.format(program="yes") + " echo started")
        assert (await s.wait_done(job["id"]))["status"] == "completed"
        found = await wait_for(lambda: pids_with_cmdline("yes") & job_processes(job["id"]))
        (pid,) = found
        loop = asyncio.get_running_loop()
        end = loop.time() + 30.0
        written = 0
        while written < 8 * bound and loop.time() < end:
            st = os.stat(f"/proc/{pid}/fd/1")  # the deleted spool file
            written = st.st_size
            assert st.st_nlink == 0, "the spool file should have been deleted at the end"
            assert st.st_blocks * 512 <= bound, f"{st.st_blocks * 512} bytes on disk"
            await asyncio.sleep(0.05)
        assert written >= 2 * bound, "the grandchild should have written far more than the bound"
        after = await s.call("kill", job_id=job["id"], grace_s=1)
        assert after["status"] == "completed"
        assert job_processes(job["id"]) == set()


@contextlib.contextmanager
def write_lock(db: Path) -> Iterator[subprocess.Popen[str]]:
    """The database write-locked by a real ``sqlite3`` process (BEGIN IMMEDIATE), until the
    block ends."""
    proc = subprocess.Popen(
        ["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(".timeout 10000\nBEGIN IMMEDIATE;\nSELECT 'locked';\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.write("ROLLBACK;\n.quit\n")
            proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 CLI")
async def test_spool_stays_bounded_while_the_database_is_locked(db: Path) -> None:
    """A flooding job while another program holds the write lock for 20 s: the server cannot
    store, yet the spool holds about max_output_bytes (the bytes the output limit drops are
    freed unstored). Afterwards the stored output is the limit's head and tail, byte-exact."""
    limit = 4 * 1024 * 1024
    # The limit, plus what arrives between two frees (a 1 GB/s writer; a loaded machine).
    bound = limit + 128 * 1024 * 1024
    env = {"MCP_BACKGROUND_JOB_MAX_OUTPUT_BYTES": str(limit)}
    async with start_server(db, env=env) as s:
        job = await s.execute("yes")

        async def stored() -> bool:
            view = await s.call("status", job_id=job["id"])
            return bool(view["stdout"]["stored"] > 0)

        await wait_for(stored, message="output to be stored before the lock")
        peak = 0
        with write_lock(db):
            loop = asyncio.get_running_loop()
            start_written = spool_usage(db)[1]
            end = loop.time() + 20.0
            while loop.time() < end:
                allocated, written = spool_usage(db)
                peak = max(peak, allocated)
                assert allocated <= bound, f"spool holds {allocated} bytes ({written} written)"
                await asyncio.sleep(0.1)
            during = spool_usage(db)[1] - start_written
        sys.stderr.write(f"locked 20 s: {during} bytes written, peak spool {peak} bytes\n")
        assert during > 4 * bound, "the job should have written far more than the bound"
        killed = await s.call("kill", job_id=job["id"], grace_s=1)
        assert killed["status"] == "killed"
        view = await s.call("status", job_id=job["id"])
        out = view["stdout"]
        assert out["stored"] <= limit
        assert out["stored"] + out["dropped"] == out["written"]
        data = _stored(db, job["id"])
        assert len(data) == out["stored"]
        assert set(data) <= set(b"y\n"), "freed (zeroed) bytes were stored"


def _stored(db: Path, job_id: str) -> bytes:
    rows = query(
        db,
        "select data from output_chunks where job_id = ? and stream = 'stdout' "
        "order by byte_offset",
        job_id,
    )
    return b"".join(r[0] for r in rows)


# --- item: start-up does not wait for reconciliation ------------------------------------------


async def test_initialize_answers_before_a_big_leftover_spool_is_stored(db: Path) -> None:
    """A server died leaving 3 x 150 MB of output not yet stored. The next server answers
    ``initialize`` at once and stores it in the background; meanwhile the jobs read as
    running, then they are recorded lost with every byte stored."""
    size = 150 * 1024 * 1024
    async with start_server(db) as doomed:
        jobs = [await doomed.execute("sleep 300") for _ in range(3)]
        os.killpg(doomed.pid, signal.SIGKILL)
        await wait_for(lambda: not is_running(doomed.pid), message="the server to die")
    await wait_for(lambda: not any(job_processes(j["id"]) for j in jobs), timeout=10)
    block = b"".join(b"%09d\n" % i for i in range(100_000))  # 1 MB of numbered lines
    for job in jobs:
        with (spool_dir(db) / f"{job['id']}.stdout").open("ab") as f:
            for _ in range(size // len(block)):
                f.write(block)
    expected = size // len(block) * len(block)

    env = {"MCP_BACKGROUND_JOB_MAX_OUTPUT_BYTES": str(2 * size)}
    started = time.monotonic()
    async with start_server(db, env=env) as heir:
        took = time.monotonic() - started
        statuses = [r[0] for r in query(db, "select status from jobs order by created_at")]
        sys.stderr.write(f"initialize after {took:.2f} s; jobs then: {statuses}\n")
        assert "running" in statuses, "initialize waited for the leftovers to be stored"
        pending = [j for j, st in zip(jobs, statuses, strict=True) if st == "running"][-1]
        view = await heir.call("status", job_id=pending["id"])
        assert view["status"] == "running"  # until it is recorded lost: never a wrong end
        for job in jobs:
            done = await heir.wait_done(job["id"], timeout_s=50)
            assert (done["status"], done["reason"]) == ("failed", "lost: server exited")
            assert done["stdout"]["stored"] == expected, done["stdout"]
        assert took < 20.0  # generous: ~2 s here with the spool, as without one


# --- item: shutdown is quick --------------------------------------------------------------------


async def _serve_and_close(db: Path, command: str | None) -> float:
    """Start the server as an MCP client does, initialize, maybe start a job, close stdin:
    seconds from closing stdin to the process's exit."""
    program, args = server_command(db)
    with db.with_name("server-exit.log").open("a") as log:
        proc = await asyncio.create_subprocess_exec(
            program,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            cwd=db.parent,
            start_new_session=True,
        )
    assert proc.stdin is not None and proc.stdout is not None
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "exit-test", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]  # fmt: skip
    if command is not None:
        call = {"name": "execute", "arguments": {"command": command}}
        messages.append({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
    try:
        for message in messages:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
        await proc.stdin.drain()
        for _ in range(1 if command is None else 2):
            assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))["id"]
        if command is not None:
            await wait_for(lambda: len(job_processes(under=db.parent)) >= 2)
        proc.stdin.close()
        closed = time.monotonic()
        await asyncio.wait_for(proc.wait(), 30)
        return time.monotonic() - closed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_server_exits_quickly_once_stdin_closes(db: Path) -> None:
    """No jobs: well under half a second (MCP clients SIGTERM a server 2 s after closing its
    stdin); with a job that ignores SIGTERM and a setsid grandchild: within the 0.5 s grace
    plus the kill, and the server is recorded stopped each time."""
    idle = min([await _serve_and_close(db, None) for _ in range(2)])
    sys.stderr.write(f"exit after stdin closed, no jobs: {idle:.3f} s\n")
    assert idle < 0.3  # ~0.05 s here; the interpreter's own teardown alone took 0.5-0.7 s
    busy = await _serve_and_close(
        db, STUBBORN.format(program="sleep 300") + " trap '' TERM; sleep 301"
    )
    sys.stderr.write(f"exit after stdin closed, a stubborn job: {busy:.3f} s\n")
    assert busy < 1.9
    assert job_processes(under=db.parent) == set()
    assert query(db, "select count(*) from servers where stopped_at is null") == [(0,)]
    assert query(db, "select status, reason from jobs") == [("killed", "server shutdown")]
