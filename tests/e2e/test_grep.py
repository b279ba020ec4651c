"""grep, wait until a line, and search, through a real MCP client over stdio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastmcp.exceptions import ToolError

from .helpers import start_server

GITHUB = "ghp_1234567890abcdefghijABCDEFGHIJ123456"


async def test_grep_a_finished_job(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute(
            "for i in $(seq 1 300); do echo line $i; done; echo 'ERROR: boom' >&2; echo done"
        )
        await s.wait_done(job["id"])
        r = await s.call("grep", job_id=job["id"], pattern=r"line 1\d$", context=1)
        assert r["total_matches"] == 10
        assert [m["line"] for m in r["matches"]][:2] == ["line 10", "line 11"]
        first = r["matches"][0]
        assert (first["stream"], first["line_number"]) == ("stdout", 10)
        assert first["before"] == ["line 9"] and first["after"] == ["line 11"]
        stdout = sum(len(f"line {i}\n") for i in range(1, 301)) + len("done\n")
        assert r["bytes_searched"] == stdout + len("ERROR: boom\n")
        # the cursor reads from the matching line with `output`
        page = await s.call("output", job_id=job["id"], cursor=first["cursor"], max_bytes=8)
        assert page["text"] == "line 10\n"
        # max_matches: a cursor to go on, which gives the rest with the right line numbers
        r2 = await s.call("grep", job_id=job["id"], pattern=r"^line 1\d$", max_matches=4)
        assert [m["line_number"] for m in r2["matches"]] == [10, 11, 12, 13]
        assert r2["total_matches"] == 10 and r2["next_cursor"]
        r3 = await s.call("grep", job_id=job["id"], pattern=r"^line 1\d$",
                          cursor=r2["next_cursor"])  # fmt: skip
        assert [m["line_number"] for m in r3["matches"]] == list(range(14, 20))
        assert r3["next_cursor"] is None
        # streams
        err = await s.call("grep", job_id=job["id"], pattern="error", ignore_case=True)
        assert [(m["stream"], m["line"], m["line_number"]) for m in err["matches"]] == [
            ("stderr", "ERROR: boom", 1)
        ]
        only_out = await s.call("grep", job_id=job["id"], pattern="ERROR", stream="stdout")
        assert only_out["total_matches"] == 0 and only_out["matches"] == []


async def test_grep_rejects_patterns_re2_cannot_run(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute("echo aa")
        await s.wait_done(job["id"])
        for pattern, construct in [(r"(a)\1", "backreference"), ("a(?=b)", "lookahead"),
                                   ("(?<=a)b", "lookbehind"), ("a(", "missing")]:  # fmt: skip
            with pytest.raises(ToolError, match=construct):
                await s.call("grep", job_id=job["id"], pattern=pattern)
        with pytest.raises(ToolError, match="lookahead"):
            await s.call("wait", job_id=job["id"], until="x(?!y)")


async def test_grep_cannot_probe_a_secret(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute(f"echo 'token {GITHUB} here'; echo 'plain ghp_ text'")
        await s.wait_done(job["id"])
        # Every prefix of the secret's hidden part finds nothing: the matching is on masked text.
        for n in range(5, 12):
            r = await s.call("grep", job_id=job["id"], pattern="token " + GITHUB[:n])
            assert r["total_matches"] == 0, GITHUB[:n]
        r = await s.call("grep", job_id=job["id"], pattern="token", context=1)
        assert r["total_matches"] == 1
        assert GITHUB not in r["matches"][0]["line"] and "***" in r["matches"][0]["line"]
        assert all(GITHUB[6:] not in x for x in r["matches"][0]["after"])


async def test_grep_a_running_job_and_a_pty_job(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute("echo first; echo needle-one; sleep 30")
        r = await s.call("grep", job_id=job["id"], pattern="needle")
        for _ in range(100):
            if r["total_matches"]:
                break
            await asyncio.sleep(0.05)
            r = await s.call("grep", job_id=job["id"], pattern="needle")
        assert r["matches"][0]["line"] == "needle-one" and r["status"] == "running"
        await s.call("kill", job_id=job["id"])
        # A PTY job: colours and \r overwrites are matched and shown as plain text.
        pty = await s.execute(
            r"printf 'progress 10%%\rprogress 100%%\n\033[31mFAILED\033[0m test_x\n'", pty=True
        )
        await s.wait_done(pty["id"])
        r = await s.call("grep", job_id=pty["id"], pattern=r"^FAILED test_x$")
        assert [m["line"] for m in r["matches"]] == ["FAILED test_x"]
        r = await s.call("grep", job_id=pty["id"], pattern="progress 10%$")
        assert r["total_matches"] == 0  # overwritten: not on the screen


async def test_grep_reports_the_dropped_middle_as_a_gap(db: Path) -> None:
    env = {"MCP_BACKGROUND_JOB_MAX_OUTPUT_BYTES": "65536"}
    async with start_server(db, env=env) as s:
        job = await s.execute("seq 1 200000")
        await s.wait_done(job["id"])
        r = await s.call("grep", job_id=job["id"], pattern=r"^(1|100000|200000)$")
        assert [m["line"] for m in r["matches"]] == ["1", "200000"]  # 100000 was dropped
        [gap] = r["gaps"]
        assert gap["stream"] == "stdout" and gap["bytes"] > 1_000_000
        assert r["bytes_searched"] == 65536


async def test_wait_until_a_line(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute(
            "echo 'Listening on old'; sleep 0.5; echo starting; sleep 0.3; "
            "echo 'Listening on http://localhost:3000'; sleep 30"
        )
        r = await s.call("wait", job_id=job["id"], until="Listening on http", timeout_s=20)
        assert r["until"] == "matched" and not r["finished"]
        assert r["match"]["line"] == "Listening on http://localhost:3000"
        # the cursor after it: nothing more is written, so waiting again times out
        again = await s.call("wait", job_id=job["id"], until="Listening", cursor=r["cursor"],
                             timeout_s=0.5)  # fmt: skip
        assert again["until"] == "timeout"
        await s.call("kill", job_id=job["id"])
        ended = await s.execute("echo bye")
        r = await s.call("wait", job_id=ended["id"], until="never", timeout_s=20)
        assert r["until"] == "ended" and r["finished"]


async def test_search_the_history(db: Path) -> None:
    async with start_server(db) as s:
        ids = []
        for i in range(3):
            j = await s.execute(f"echo run {i}; echo {'Segmentation fault' if i != 1 else 'ok'}")
            await s.wait_done(j["id"])
            ids.append(j["id"])
        r = await s.call("search", pattern="Segmentation fault")
        assert [h["job_id"] for h in r["jobs"]] == [ids[2], ids[0]]
        assert r["jobs"][0]["match_count"] == 1 and r["jobs_scanned"] == 3
        page = await s.call("search", pattern="Segmentation", limit=1)
        assert [h["job_id"] for h in page["jobs"]] == [ids[2]] and page["next_cursor"]
        rest = await s.call("search", pattern="Segmentation", limit=1, cursor=page["next_cursor"])
        assert [h["job_id"] for h in rest["jobs"]] == [ids[0]]


async def test_search_filters_and_an_output_without_a_final_newline(db: Path) -> None:
    async with start_server(db) as s:
        # The last line has no newline: search must finish the job, not resume at that line.
        tail = await s.execute("seq 1 3000; printf 'needle at the end'", labels=["ci"])
        await s.wait_done(tail["id"])
        running = await s.execute("echo needle running; sleep 30")
        r = await s.call("search", pattern="needle")
        for _ in range(100):
            if len(r["jobs"]) == 2:
                break
            await asyncio.sleep(0.05)
            r = await s.call("search", pattern="needle")
        assert [h["job_id"] for h in r["jobs"]] == [running["id"], tail["id"]]
        assert r["next_cursor"] is None and r["jobs"][1]["complete"]
        by_status = await s.call("search", pattern="needle", status="running")
        assert [h["job_id"] for h in by_status["jobs"]] == [running["id"]]
        by_label = await s.call("search", pattern="needle", label="ci")
        assert [h["job_id"] for h in by_label["jobs"]] == [tail["id"]]
        assert (await s.call("search", pattern="needle", since="2000-01-01"))["jobs"]
        future = await s.call("search", pattern="needle", since="2999-01-01T00:00:00Z")
        assert future["jobs"] == [] and future["jobs_scanned"] == 0
        await s.call("kill", job_id=running["id"])


async def test_invalid_cursors_are_refused(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute("echo a")
        await s.wait_done(job["id"])
        for bad in ("nonsense", "1:2:3:4", "abc:x:y"):
            with pytest.raises(ToolError, match="cursor"):
                await s.call("search", pattern="a", cursor=bad)
        for bad in ("nonsense", "-5:0", "x:y"):
            with pytest.raises(ToolError, match=r"(?i)cursor"):
                await s.call("grep", job_id=job["id"], pattern="a", cursor=bad)
