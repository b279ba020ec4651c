"""Interactive programs and scheduling through the real stdio server (issue #6): a Python REPL,
a program that asks two questions, Ctrl-C of a loop, a progress bar read as a person sees it,
priorities, a dependency chain with a failure in the middle, rerun, idle timeout, and the
queue surviving a crashed server, taken over by two servers at once without a job run twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fastmcp.exceptions import ToolError

from .helpers import Server, is_running, job_processes, query, start_server, stored_bytes, wait_for

RECORD = 'echo "$MCP_BACKGROUND_JOB_ID" >> ran'


async def test_python_repl_session(db: Path) -> None:
    async with start_server(db) as s:
        repl = await s.execute("python3 -i -q", pty=True)
        assert (repl["status"], repl["pty"], repl["rows"], repl["cols"]) == (
            "running",
            True,
            24,
            120,
        )
        # wait for the first prompt with a regex
        r = await s.call("interact", job_id=repl["id"], until=r"^>>> $")
        assert (r["returned_because"], r["output"], r["render"]) == ("prompt", ">>> ", "plain")
        # define a variable: no regex needed, the REPL is seen waiting for input again
        r = await s.call("interact", job_id=repl["id"], input="answer = 6 * 7\n")
        assert (r["returned_because"], r["output"]) == ("waiting_for_input", "answer = 6 * 7\n>>> ")
        # use it, in a statement that takes a while: interact waits for the next prompt
        r = await s.call(
            "interact",
            job_id=repl["id"],
            input="import time; time.sleep(0.5); print(answer + 1)\n",
        )
        assert r["returned_because"] == "waiting_for_input"
        assert r["output"] == "import time; time.sleep(0.5); print(answer + 1)\n43\n>>> "
        r = await s.call(
            "interact", job_id=repl["id"], input="print('with until')\n", until=">>> $"
        )
        assert (r["returned_because"], r["output"]) == (
            "prompt",
            "print('with until')\nwith until\n>>> ",
        )
        # the transcript reads as the terminal showed it; the raw bytes are kept
        t = await s.call("tail", job_id=repl["id"], lines=2)
        assert t["text"] == "with until\n>>> "
        assert b"with until\r\n>>> " in stored_bytes(db, repl["id"])
        # Ctrl-D at the prompt ends it
        r = await s.call("interact", job_id=repl["id"], eof=True)
        assert (r["returned_because"], r["status"]) == ("ended", "completed")


async def test_a_program_that_asks_two_questions(db: Path) -> None:
    program = (
        'read -p "Name? " name; read -p "Favourite colour? " colour; echo "$name likes $colour"'
    )
    async with start_server(db) as s:
        job = await s.execute(program, pty=True)
        r = await s.call("interact", job_id=job["id"], until=r"Name\? $")
        assert (r["returned_because"], r["output"]) == ("prompt", "Name? ")
        r = await s.call("interact", job_id=job["id"], input="Ada\n")
        assert r["returned_because"] == "waiting_for_input"
        assert r["output"] == "Ada\nFavourite colour? "
        r = await s.call("interact", job_id=job["id"], input="green\n")
        assert (r["returned_because"], r["status"]) == ("ended", "completed")
        assert r["output"] == "green\nAda likes green\n"


async def test_ctrl_c_stops_a_long_loop_on_a_pty(db: Path) -> None:
    loop = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
    async with start_server(db) as s:
        job = await s.execute(loop, pty=True)

        async def ticked() -> bool:
            return "tick 3\n" in (await s.call("output", job_id=job["id"]))["text"]

        await wait_for(ticked, message="three ticks")
        r = await s.call("interact", job_id=job["id"], keys=["C-c"])
        assert (r["returned_because"], r["status"]) == ("ended", "killed")
        view = await s.call("status", job_id=job["id"])
        assert view["signal"] == "SIGINT"
        assert view["reason"] == "interrupted by Ctrl-C sent with interact; ended by signal SIGINT"
        assert not job_processes(job["id"])
        assert not is_running(job["pid"])


async def test_progress_bar_reads_as_its_final_line(db: Path) -> None:
    bar = (
        'python3 -c "import sys, time\n'
        "for i in range(0, 101, 4):\n"
        "    sys.stdout.write('\\r\\x1b[32mDownloading\\x1b[0m [' + '#' * (i // 5)"
        " + ' ' * (20 - i // 5) + '] %3d%%' % i); sys.stdout.flush(); time.sleep(0.01)\n"
        "print(); print('saved to disk')\""
    )
    async with start_server(db) as s:
        job = await s.execute(bar, pty=True)
        await s.wait_done(job["id"])
        final = "Downloading [####################] 100%"
        t = await s.call("tail", job_id=job["id"], lines=2)
        assert (t["text"], t["lines"], t["render"]) == (f"{final}\nsaved to disk\n", 2, "plain")
        out = await s.call("output", job_id=job["id"])
        assert out["text"] == f"{final}\nsaved to disk\n"
        raw = await s.call("output", job_id=job["id"], render="raw")
        # Raw keeps the carriage returns; escape sequences never reach a client (issue 3: a job's
        # output must not drive the client's terminal). The stored bytes keep them.
        assert raw["text"].count("\r") > 20 and "\x1b" not in raw["text"]
        assert raw["cursor"] == out["cursor"]  # cursors count raw bytes either way


async def test_queued_jobs_start_in_priority_order(db: Path, tmp_path: Path) -> None:
    async with start_server(db, env={"MCP_BACKGROUND_JOB_MAX_CONCURRENT": "1"}) as s:
        gate = await s.execute("read go")
        names = [("low", -1), ("normal", 0), ("urgent", 5), ("also-normal", 0), ("also-urgent", 5)]
        jobs = []
        for name, priority in names:
            job = await s.execute(f"echo {name} >> order", cwd=str(tmp_path), priority=priority)
            assert (job["status"], job["priority"]) == ("queued", priority)
            jobs.append(job)
        await s.call("interact", job_id=gate["id"], input="\n", wait_s=0)
        for job in jobs:
            assert (await s.wait_done(job["id"]))["status"] == "completed"
        order = (tmp_path / "order").read_text().split()
        assert order == ["urgent", "also-urgent", "normal", "also-normal", "low"]


async def test_a_dependency_chain_with_a_failure_in_the_middle(db: Path, tmp_path: Path) -> None:
    cwd = str(tmp_path)
    async with start_server(db) as s:
        build = await s.execute(f"{RECORD}; sleep 0.5; echo built", cwd=cwd)
        test = await s.execute(f"{RECORD}; echo 2 failures; exit 2", cwd=cwd, after=[build["id"]])
        deploy = await s.execute(RECORD, cwd=cwd, after=[test["id"]])
        report = await s.execute(
            f"{RECORD}; echo report", cwd=cwd, after=[test["id"]], run_anyway=True
        )
        for job in (test, deploy, report):
            assert job["status"] == "queued"
        assert test["waiting_on"] == [build["id"]] and test["after"] == [build["id"]]

        assert (await s.wait_done(build["id"]))["status"] == "completed"
        failed = await s.wait_done(test["id"])
        assert (failed["status"], failed["exit_code"]) == ("failed", 2)
        skipped = await s.wait_done(deploy["id"])
        assert (skipped["status"], skipped["reason"]) == (
            "failed",
            f"dependency {test['id']} failed (exit code 2)",
        )
        assert [t["status"] for t in skipped["transitions"]] == ["queued", "failed"]
        assert skipped["started_at"] is None
        assert (await s.wait_done(report["id"]))["status"] == "completed"
        assert (tmp_path / "ran").read_text().split() == [build["id"], test["id"], report["id"]]

        # cycles cannot be made (dependencies name existing jobs), unknown ids are refused
        msg = await _tool_error(s, "execute", command="true", after=["0123456789ab"])
        assert "after: no job with id '0123456789ab'" in msg


async def _tool_error(s: Server, tool: str, **args: Any) -> str:
    with pytest.raises(ToolError) as info:
        await s.call(tool, **args)
    return str(info.value)


async def test_rerun(db: Path, tmp_path: Path) -> None:
    async with start_server(db) as s:
        first = await s.execute(
            'echo "run $(cat count 2>/dev/null || echo 0)"; echo x >> count; test -t 1 && echo tty',
            cwd=str(tmp_path),
            env={"A": "1"},
            labels=["flaky"],
            pty=True,
        )
        await s.wait_done(first["id"])
        again = await s.call("rerun", job_id=first["id"])
        assert again["id"] != first["id"] and again["rerun_of"] == first["id"]
        for key in ("command", "cwd", "env_keys", "labels", "pty", "rows", "cols"):
            assert again[key] == first[key], key
        await s.wait_done(again["id"])
        assert (await s.call("output", job_id=again["id"]))["text"] == "run x\ntty\n"
        msg = await _tool_error(s, "rerun", job_id="ffffffffffff")
        assert "No job with id" in msg


async def test_idle_timeout(db: Path) -> None:
    async with start_server(db) as s:
        hung = await s.execute("echo collecting tests; exec sleep 300", idle_timeout_s=1)
        assert hung["idle_timeout_s"] == 1
        done = await s.wait_done(hung["id"])
        assert (done["status"], done["signal"]) == ("timed_out", "SIGTERM")
        assert done["reason"] == "idle timeout: no output for 1 s; ended by signal SIGTERM"
        assert not is_running(done["pid"])


async def test_the_queue_survives_a_crash_and_two_servers_share_it(
    db: Path, tmp_path: Path
) -> None:
    """A server dies with jobs queued behind a running one; two servers start on the database
    at once: the running job is failed as lost, the queued ones run exactly once, in
    dependency order."""
    cwd = str(tmp_path)
    env = {"MCP_BACKGROUND_JOB_MAX_CONCURRENT": "1"}
    async with start_server(db, env=env) as doomed:
        blocker = await doomed.execute("sleep 300", cwd=cwd)
        first = await doomed.execute(f"{RECORD}; sleep 0.2", cwd=cwd)
        second = await doomed.execute(RECORD, cwd=cwd, after=[first["id"]])
        independent = [await doomed.execute(RECORD, cwd=cwd, priority=p) for p in range(4)]
        os.kill(doomed.pid, signal.SIGKILL)
        await wait_for(lambda: not is_running(doomed.pid), message="the server to die")
    queued = [first, second, *independent]
    rows = query(db, "select status from jobs where id != ?", blocker["id"])
    assert [r[0] for r in rows] == ["queued"] * len(queued)

    async with contextlib.AsyncExitStack() as stack:
        a, _ = await asyncio.gather(
            *(stack.enter_async_context(start_server(db)) for _ in range(2))
        )
        successors = {
            r[0] for r in query(db, "select id from servers where id != ?", doomed.server_id)
        }
        assert len(successors) == 2
        lost = await a.wait_done(blocker["id"])
        assert (lost["status"], lost["reason"]) == ("failed", "lost: server exited")
        for job in queued:
            done = await a.wait_done(job["id"])
            assert done["status"] == "completed", done
            assert done["owner"] in successors
        ran = (tmp_path / "ran").read_text().split()
        assert Counter(ran) == {job["id"]: 1 for job in queued}
        assert ran.index(first["id"]) < ran.index(second["id"])
