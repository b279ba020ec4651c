"""Servers come and go on one database: graceful restarts, a SIGKILLed server, two at once."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from fastmcp.exceptions import ToolError

from .helpers import Server, is_running, parent_pid, query, start_server, wait_for

COUNTER = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.01; done"


def line_numbers(text: str) -> list[int]:
    numbers = []
    for line in text.splitlines():
        m = re.fullmatch(r"line (\d+)", line)
        assert m, f"unexpected line {line!r}"
        numbers.append(int(m[1]))
    return numbers


async def test_restart_keeps_history(db: Path) -> None:
    async with start_server(db) as first:
        ok = await first.execute("echo hello; echo world", labels=["keep"])
        bad = await first.execute("echo oops >&2; exit 7")
        await first.wait_done(ok["id"])
        await first.wait_done(bad["id"])
        running = await first.execute("echo started; sleep 300")
        counter = await first.execute(COUNTER)
        await wait_for(
            lambda: _text_is(first, running["id"], "started\n"), message="running job output"
        )
        seen = await wait_for(
            lambda: _last_line(first, counter["id"], at_least=10), message="10 counted lines"
        )
        first_id = first.server_id
    # The client closed stdin: the server shut down gracefully and stopped the running job.
    await wait_for(lambda: not is_running(first.pid), message="the first server to exit")
    assert not is_running(running["pid"])

    async with start_server(db) as second:
        assert second.server_id != first_id
        listed = {j["id"]: j for j in (await second.call("list"))["jobs"]}
        assert set(listed) == {ok["id"], bad["id"], running["id"], counter["id"]}
        assert (listed[ok["id"]]["status"], listed[ok["id"]]["exit_code"]) == ("completed", 0)
        assert (listed[bad["id"]]["status"], listed[bad["id"]]["exit_code"]) == ("failed", 7)
        assert listed[ok["id"]]["labels"] == ["keep"]

        for job in (running, counter):
            stopped = await second.call("status", job_id=job["id"])
            assert stopped["status"] == "killed", stopped
            assert stopped["reason"] == "server shutdown"
            last = stopped["transitions"][-1]
            assert (last["status"], last["reason"]) == ("killed", "server shutdown")
            assert stopped["owner"] == first_id
            assert stopped["ended_at"] is not None
            assert not is_running(stopped["pid"])
        # the output of the job stopped at shutdown was stored completely, in order
        numbers = line_numbers((await second.read_all(counter["id"]))[0])
        assert numbers == list(range(len(numbers)))
        assert numbers[-1] >= seen

        assert (await second.read_all(ok["id"]))[0] == "hello\nworld\n"
        assert (await second.read_all(bad["id"], stream="stderr"))[0] == "oops\n"
        assert (await second.read_all(running["id"]))[0] == "started\n"
        tail = await second.call("tail", job_id=ok["id"], lines=1)
        assert tail["text"] == "world\n"
        # the finished job's wait answers at once from the database
        r = await second.call("wait", job_id=bad["id"], timeout_s=5)
        assert r["finished"] is True
        assert r["job"]["exit_code"] == 7


async def test_sigterm_is_a_graceful_shutdown_too(db: Path) -> None:
    """Some clients stop a server with SIGTERM instead of closing stdin; running jobs are then
    recorded as stopped by the shutdown, not left to look lost, and queued jobs stay queued
    until the next server runs them."""
    async with start_server(db, env={"MCP_BACKGROUND_JOB_MAX_CONCURRENT": "1"}) as s:
        running = await s.execute("echo hi; sleep 300")
        queued = await s.execute("echo queued")
        assert queued["status"] == "queued"
        await wait_for(lambda: _text_is(s, running["id"], "hi\n"), message="the job to print")
        os.kill(s.pid, signal.SIGTERM)
        await wait_for(lambda: not is_running(s.pid), message="the server to exit")
    assert not is_running(running["pid"])

    left = query(db, "select status, owner_id from jobs where id = ?", queued["id"])
    assert left == [("queued", s.server_id)]

    async with start_server(db) as after:
        view = await after.call("status", job_id=running["id"])
        assert (view["status"], view["reason"]) == ("killed", "server shutdown"), view
        assert [t["status"] for t in view["transitions"]] == ["queued", "running", "killed"]
        assert (await after.read_all(running["id"]))[0] == "hi\n"
        ran = await after.wait_done(queued["id"])
        assert (ran["status"], ran["owner"]) == ("completed", after.server_id)
        assert [t["status"] for t in ran["transitions"]] == ["queued", "running", "completed"]
        assert (await after.read_all(queued["id"]))[0] == "queued\n"
        stopped = dict(query(db, "select id, stopped_at from servers"))
        assert stopped[s.server_id] is not None


async def _text_is(server: Server, job_id: str, want: str) -> bool:
    out = await server.call("output", job_id=job_id)
    return bool(out["text"] == want)


async def test_sigkilled_server_jobs_are_reconciled_as_lost(db: Path) -> None:
    async with start_server(db) as doomed:
        counter = await doomed.execute(COUNTER)
        silent = await doomed.execute("sleep 300")
        seen = await wait_for(
            lambda: _last_line(doomed, counter["id"], at_least=20),
            message="the counter to print 20 lines",
        )
        pids = {counter["pid"], silent["pid"]}
        assert all(is_running(p) for p in pids)
        # The job's owner leads to the server's pid, which is the jobs' parent.
        [(owner_pid,)] = query(db, "select pid from servers where id = ?", counter["owner"])
        assert owner_pid == doomed.pid
        assert parent_pid(counter["pid"]) == doomed.pid
        os.kill(doomed.pid, signal.SIGKILL)
        await wait_for(lambda: not is_running(doomed.pid), message="the server to die")
    # The jobs run in their own sessions, so the server's death does not take them along; its
    # watchdog stops them (nothing would store their output).
    await wait_for(
        lambda: not any(is_running(p) for p in pids), message="the lost jobs' processes to end"
    )

    async with start_server(db) as heir:
        for job in (counter, silent):
            view = await heir.wait_done(job["id"])  # reconciled in the background
            assert view["status"] == "failed", view
            assert view["reason"] == "lost: server exited"
            assert view["transitions"][-1]["reason"] == "lost: server exited"
            assert view["ended_at"] is not None
        # Everything the counter wrote up to its end was stored, in order, without gaps.
        text, _ = await heir.read_all(counter["id"])
        numbers = line_numbers(text)
        assert numbers == list(range(len(numbers))), "stored lines are not contiguous from 0"
        assert numbers[-1] >= seen
        view = await heir.call("status", job_id=counter["id"])
        assert view["stdout"]["stored"] == len(text.encode())
        assert view["stdout"]["dropped"] == 0
        assert (await heir.read_all(silent["id"]))[0] == ""
        listed = await heir.call("list", status="failed")
        assert {j["id"] for j in listed["jobs"]} == {counter["id"], silent["id"]}
        # the dead server is recorded as stopped, the heir is not
        stopped = dict(query(db, "select id, stopped_at from servers"))
        assert stopped[doomed.server_id] is not None
        assert stopped[heir.server_id] is None


async def _last_line(server: Server, job_id: str, at_least: int) -> int | None:
    tail = await server.call("tail", job_id=job_id, lines=1)
    m = re.fullmatch(r"line (\d+)\n", tail["text"])
    return int(m[1]) if m and int(m[1]) >= at_least else None


async def test_two_servers_share_one_database(db: Path) -> None:
    ticker = "for i in $(seq 1 3000); do echo tick $i; sleep 0.1; done"
    async with start_server(db) as a:
        long = await a.execute(ticker, labels=["from-a"])
        async with start_server(db) as b:
            assert b.server_id != a.server_id
            # B's start-up reconciliation left A's job alone...
            view = await b.call("status", job_id=long["id"])
            assert view["status"] == "running"
            assert view["owner"] == a.server_id
            # ...and so do its periodic ones: wait spans more than one reconcile period.
            r = await b.call("wait", job_id=long["id"], timeout_s=6)
            assert r["finished"] is False
            assert r["job"]["status"] == "running"
            assert is_running(long["pid"])

            # B sees A's job's output as it is produced.
            out = await b.call("output", job_id=long["id"])
            assert out["text"].startswith("tick 1\ntick 2\n")
            assert out["status"] == "running"
            assert out["end"] is False
            tail = await b.call("tail", job_id=long["id"], lines=2)
            assert tail["lines"] == 2
            assert re.fullmatch(r"tick \d+\ntick \d+\n", tail["text"])
            view = await b.call("status", job_id=long["id"])
            assert view["stdout"]["stored"] >= len(out["text"])

            # Only A holds the job's stdin: B says so instead of pretending to write.
            with pytest.raises(ToolError, match="another server"):
                await b.call("interact", job_id=long["id"], input="x\n", wait_s=0)

            own = await b.execute("echo from b", labels=["from-b"])
            await b.wait_done(own["id"])

            # Both servers list every job.
            for srv in (a, b):
                ids = {j["id"] for j in (await srv.call("list"))["jobs"]}
                assert ids == {long["id"], own["id"]}, srv.server_id

            # B can kill A's job; A records how it ended.
            killed = await b.call("kill", job_id=long["id"], grace_s=2)
            assert killed["status"] == "killed", killed
            assert not is_running(long["pid"])
            seen_by_a = await a.call("status", job_id=long["id"])
            assert seen_by_a["status"] == "killed"
            assert seen_by_a["owner"] == a.server_id
            r = await a.call("wait", job_id=long["id"], timeout_s=5)
            assert r["finished"] is True
