"""Every tool through MCP over stdio, the errors an agent can run into, and both protocol eras."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
from pathlib import Path
from typing import Any, Literal

import pytest
from fastmcp.exceptions import ToolError

from .helpers import is_running, server_command, start_server


def statuses(view: dict[str, Any]) -> list[str]:
    return [t["status"] for t in view["transitions"]]


async def test_every_tool(db: Path, tmp_path: Path) -> None:
    async with start_server(db) as s:
        # execute + wait + status
        ok = await s.execute("echo one; echo two; echo three >&2", labels=["alpha"])
        assert ok["status"] in ("running", "completed")
        assert ok["labels"] == ["alpha"]
        assert ok["cwd"] == str(tmp_path)
        assert ok["owner"] == s.server_id
        done = await s.wait_done(ok["id"])
        assert done["status"] == "completed"
        assert done["exit_code"] == 0
        assert done["signal"] is None
        view = await s.call("status", job_id=ok["id"])
        assert view["id"] == ok["id"]
        assert view["command"] == "echo one; echo two; echo three >&2"
        assert view["status"] == "completed"
        assert view["pid"] is not None
        assert view["ended_at"] is not None and view["started_at"] is not None
        assert view["duration_s"] is not None and view["duration_s"] >= 0
        assert view["stdout"] == {"written": 8, "stored": 8, "dropped": 0}
        assert view["stderr"] == {"written": 6, "stored": 6, "dropped": 0}
        assert statuses(view) == ["queued", "running", "completed"]
        assert all(t["at"] for t in view["transitions"])

        # a unique prefix of the id works too
        assert (await s.call("status", job_id=ok["id"][:8]))["id"] == ok["id"]

        # output, per stream and both
        out = await s.call("output", job_id=ok["id"])
        assert out["text"] == "one\ntwo\n"
        assert out["cursor"] == "8:0"
        assert out["bytes"] == 8
        assert (out["more"], out["end"], out["dropped_bytes"]) == (False, True, 0)
        assert out["status"] == "completed"
        err = await s.call("output", job_id=ok["id"], stream="stderr")
        assert err["text"] == "three\n"
        both = await s.call("output", job_id=ok["id"], stream="both")
        assert sorted(both["text"].splitlines()) == ["one", "three", "two"]
        assert both["cursor"] == "8:6"
        assert both["end"] is True
        # reading on from the end cursor gives nothing more
        again = await s.call("output", job_id=ok["id"], stream="both", cursor=both["cursor"])
        assert (again["text"], again["bytes"], again["end"]) == ("", 0, True)

        # tail
        t = await s.call("tail", job_id=ok["id"], lines=1)
        assert (t["text"], t["lines"], t["truncated"]) == ("two\n", 1, False)
        t = await s.call("tail", job_id=ok["id"], lines=50)
        assert (t["text"], t["lines"]) == ("one\ntwo\n", 2)
        t = await s.call("tail", job_id=ok["id"], lines=5, stream="stderr")
        assert t["text"] == "three\n"
        t = await s.call("tail", job_id=ok["id"], lines=0)
        assert (t["text"], t["lines"]) == ("", 0)

        # cwd and env reach the job; the view names the variables but never shows their values
        sub = tmp_path / "sub dir"
        sub.mkdir()
        envjob = await s.execute(
            'echo "$GREETING"; pwd', cwd=str(sub), env={"GREETING": "hi there"}, timeout_s=60
        )
        env_view = await s.wait_done(envjob["id"])
        assert env_view["cwd"] == str(sub)
        assert env_view["env_keys"] == ["GREETING"]
        assert env_view["timeout_s"] == 60
        assert "hi there" not in str(env_view)
        assert (await s.call("output", job_id=envjob["id"]))["text"] == f"hi there\n{sub}\n"

        # more jobs for list
        bad = await s.execute("echo failing; exit 3", labels=["beta"])
        third = await s.execute("echo third", labels=["alpha", "gamma"])
        fourth = await s.execute("true")
        fifth = await s.execute("echo fifth")
        for job in (bad, third, fourth, fifth):
            await s.wait_done(job["id"])
        bad_view = await s.call("status", job_id=bad["id"])
        assert (bad_view["status"], bad_view["exit_code"]) == ("failed", 3)

        newest_first = [fifth["id"], fourth["id"], third["id"], bad["id"], envjob["id"], ok["id"]]
        everything = await s.call("list")
        assert [j["id"] for j in everything["jobs"]] == newest_first
        assert everything["next_cursor"] is None
        by_id = {j["id"]: j for j in everything["jobs"]}
        assert by_id[bad["id"]]["exit_code"] == 3
        assert by_id[third["id"]]["labels"] == ["alpha", "gamma"]

        async def ids(**flt: Any) -> list[str]:
            return [j["id"] for j in (await s.call("list", **flt))["jobs"]]

        assert await ids(status="failed") == [bad["id"]]
        assert await ids(status="completed") == [j for j in newest_first if j != bad["id"]]
        assert await ids(status="running") == []
        assert await ids(label="alpha") == [third["id"], ok["id"]]
        assert await ids(label="gamma") == [third["id"]]
        assert await ids(label="nope") == []
        assert await ids(command_contains="fail") == [bad["id"]]
        assert await ids(command_contains="echo t") == [third["id"], ok["id"]]
        assert await ids(command_contains="GREETING") == [envjob["id"]]
        assert await ids(command_contains="%") == []  # LIKE wildcards are literal
        assert await ids(since="1h") == newest_first
        assert await ids(since=third["created_at"]) == newest_first[:3]
        assert await ids(since="2100-01-01T00:00:00Z") == []
        assert await ids(status="completed", label="alpha") == [third["id"], ok["id"]]

        # paging with limit=2: every job exactly once, in order, then no cursor
        pages: list[list[str]] = []
        cursor = None
        while True:
            args: dict[str, Any] = {"limit": 2}
            if cursor is not None:
                args["cursor"] = cursor
            page = await s.call("list", **args)
            pages.append([j["id"] for j in page["jobs"]])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(pages) < 10
        assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:6]]

        # interact with cat: echoed back, then eof ends the job
        cat = await s.execute("cat")
        assert cat["status"] == "running"
        r = await s.call("interact", job_id=cat["id"], input="hello\n", wait_s=1)
        assert r["bytes_written"] == 6
        assert r["eof_sent"] is False
        assert r["ended"] is False
        assert r["status"] == "running"
        assert r["output"] == "hello\n"
        r = await s.call("interact", job_id=cat["id"], input="bye\n", wait_s=10, eof=True)
        assert (r["eof_sent"], r["ended"], r["status"]) == (True, True, "completed")
        assert r["output"] == "bye\n"
        assert r["cursor"] == "10:0"
        cat_view = await s.call("status", job_id=cat["id"])
        assert (cat_view["status"], cat_view["exit_code"]) == ("completed", 0)
        assert (await s.read_all(cat["id"]))[0] == "hello\nbye\n"

        # kill
        sleeper = await s.execute("sleep 300")
        assert sleeper["status"] == "running"
        killed = await s.call("kill", job_id=sleeper["id"], grace_s=5)
        assert killed["status"] == "killed"
        assert killed["signal"] == "SIGTERM"
        assert killed["exit_code"] is None
        assert "killed on request" in killed["reason"]
        assert statuses(killed) == ["queued", "running", "killed"]
        assert not is_running(killed["pid"])
        assert await ids(status="killed") == [sleeper["id"]]


async def test_errors_are_tool_errors_with_a_next_step(db: Path, tmp_path: Path) -> None:
    async with start_server(db) as s:
        done = await s.execute("echo hi")
        await s.wait_done(done["id"])

        async def fails(tool: str, match: str, **args: Any) -> str:
            with pytest.raises(ToolError, match=match) as info:
                await s.call(tool, **args)
            return str(info.value)

        # unknown job id, for every tool that takes one
        tools_with_id: list[tuple[str, dict[str, Any]]] = [
            ("status", {}),
            ("output", {}),
            ("tail", {}),
            ("wait", {"timeout_s": 0}),
            ("kill", {}),
            ("interact", {"input": "x"}),
        ]
        for tool, extra in tools_with_id:
            msg = await fails(tool, "No job with id 'ffffffffffff'", job_id="ffffffffffff", **extra)
            assert "Call `list`" in msg
        await fails("status", "No job with id 'not-an-id'", job_id="not-an-id")

        # execute: missing cwd, empty command
        missing = tmp_path / "does-not-exist"
        msg = await fails("execute", "does not exist", command="true", cwd=str(missing))
        assert str(missing) in msg
        assert "omit cwd" in msg
        await fails("execute", "command is empty", command="")
        await fails("execute", "command is empty", command="   \n")

        # output: garbage cursor and a cursor one past the end of the stored output
        await fails("output", "Invalid cursor 'garbage'", job_id=done["id"], cursor="garbage")
        await fails("output", "Invalid cursor", job_id=done["id"], cursor="1:2:3")
        msg = await fails("output", "points past", job_id=done["id"], cursor="4:0")
        assert "3 bytes" in msg
        await fails("output", "points past", job_id=done["id"], cursor="0:1")
        await fails("output", "points past|Invalid", job_id=done["id"], cursor="-1:0")
        # ...while the exact end is a valid cursor
        end = await s.call("output", job_id=done["id"], cursor="3:0")
        assert (end["text"], end["end"]) == ("", True)

        # interact on a finished job
        msg = await fails("interact", "has ended", job_id=done["id"], input="x\n")
        assert "execute" in msg

        # tail with negative lines
        await fails("tail", "`lines`.* an integer from 0 to 10000", job_id=done["id"], lines=-1)

        # kill with an unknown signal name
        msg = await fails("kill", "Unknown signal 'BOGUS'", job_id=done["id"], signal="BOGUS")
        assert "TERM" in msg

        # list with a garbage cursor
        await fails("list", "Invalid list cursor", cursor="!!!")

        # arguments outside their documented ranges are refused, not clamped
        await fails("list", "limit", limit=0)
        await fails("output", "max_bytes", job_id=done["id"], max_bytes=0)
        await fails("execute", "timeout_s", command="true", timeout_s=0)
        await fails("execute", "label", command="true", labels=["has space"])
        await fails("execute", "env variable", command="true", env={"1BAD": "x"})

        # the server is still fine after all that
        assert (await s.call("status", job_id=done["id"]))["status"] == "completed"


@pytest.mark.parametrize(
    ("mode", "version", "console_script"),
    [
        pytest.param("auto", "2026-07-28", False, id="auto-python-m"),
        pytest.param("legacy", "2025-11-25", True, id="legacy-console-script"),
    ],
)
async def test_round_trip_in_both_protocol_eras(
    db: Path, mode: Literal["auto", "legacy"], version: str, console_script: bool
) -> None:
    """The default client negotiates the sessionless 2026-07-28 era, mode="legacy" 2025-11-25;
    the second server is also started through the installed console script."""
    async with start_server(db, mode=mode, console_script=console_script) as s:
        assert s.client.protocol_version == version
        tools = {t.name for t in await s.client.list_tools()}
        assert tools == {
            "execute", "list", "status", "output", "tail", "grep", "search", "interact", "kill",
            "wait", "wait_many", "audit", "rerun",
        }  # fmt: skip
        job = await s.execute("printf 'era %s\\n' ok")
        done = await s.wait_done(job["id"])
        assert (done["status"], done["exit_code"]) == ("completed", 0)
        out = await s.call("output", job_id=job["id"])
        assert (out["text"], out["end"]) == ("era ok\n", True)


async def test_database_is_private_and_readable_by_sqlite3_cli(db: Path) -> None:
    async with start_server(db) as s:
        done = await s.execute("exit 4")
        await s.wait_done(done["id"])
        running = await s.execute("sleep 300")

        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        for side in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            if side.exists():
                assert stat.S_IMODE(side.stat().st_mode) == 0o600, side

        out = subprocess.run(
            ["sqlite3", str(db), "select id, status, exit_code from jobs order by created_at"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert out.stdout.splitlines() == [f"{done['id']}|failed|4", f"{running['id']}|running|"]
        # the server still works while (and after) another process reads the file
        assert (await s.call("status", job_id=running["id"]))["status"] == "running"


async def test_many_jobs_at_once_then_wait_many(db: Path) -> None:
    """Submitted concurrently, as an agent's parallel tool calls are: the concurrency limit
    holds, every job runs, and one wait_many call reports them all."""
    async with start_server(db, env={"MCP_BACKGROUND_JOB_MAX_CONCURRENT": "3"}) as s:
        jobs = await asyncio.gather(*(s.execute(f"exit {i % 3}") for i in range(24)))
        ids = [j["id"] for j in jobs]
        r = await s.call("wait_many", job_ids=ids, timeout_s=30)
        assert r["finished"], r
        assert r["counts"] == {"completed": 8, "failed": 16}
        assert [j["id"] for j in r["jobs"]] == ids
        assert [j["exit_code"] for j in r["jobs"]] == [i % 3 for i in range(24)]
        with pytest.raises(ToolError, match="Pass job_ids, a label, or both"):
            await s.call("wait_many")


async def test_stdio_is_served_by_the_event_loop(db: Path) -> None:
    async with start_server(db) as s:
        await s.call("list")
        assert "stdio_transport mode=event-loop" in s.log.read_text()


def test_stdin_from_a_file_falls_back_to_the_sdk_transport(db: Path, tmp_path: Path) -> None:
    """A regular file cannot be watched by the event loop: the SDK's threads read it instead."""
    requests = tmp_path / "requests.jsonl"
    init = {"protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "file", "version": "1"}}  # fmt: skip
    requests.write_text(
        "\n".join(
            json.dumps(m)
            for m in (
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": init},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
            )
        )
        + "\n"
    )
    command, args = server_command(db)
    with requests.open("rb") as stdin:
        done = subprocess.run(
            [command, *args], stdin=stdin, capture_output=True, timeout=60, check=False
        )
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    # (At the end of the file the SDK stops serving: later requests may go unanswered.)
    assert [r.get("id") for r in replies] == [1], done.stderr.decode()
    assert replies[0]["result"]["serverInfo"]["name"] == "mcp-background-job"
    assert b"stdio_transport mode=sdk-threads" in done.stderr
