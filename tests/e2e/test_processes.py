"""Processes: killing whole trees, stubborn jobs, timeouts, background grandchildren, the queue,
and waiting."""

from __future__ import annotations

from pathlib import Path

from .helpers import (
    Server,
    is_running,
    job_processes,
    pids_with_cmdline,
    session_id,
    start_server,
    wait_for,
)


async def test_kill_reaches_the_whole_process_tree(db: Path) -> None:
    command = "sleep 300 & setsid sleep 301 & nohup sleep 302 >/dev/null 2>&1 & sleep 303; wait"
    async with start_server(db) as s:
        job = await s.execute(command)
        jid = job["id"]

        def tree() -> dict[str, set[int]] | None:
            mine = job_processes(jid)
            found = {n: pids_with_cmdline("sleep", n) & mine for n in ("300", "301", "302", "303")}
            return found if all(found.values()) else None

        found = await wait_for(tree, message="all four sleeps to start")
        (setsid_pid,) = found["301"]
        # setsid put it in a session of its own: a process-group kill would miss it.
        assert session_id(setsid_pid) != job["pid"]
        assert is_running(setsid_pid)

        killed = await s.call("kill", job_id=jid, grace_s=2)
        assert killed["status"] == "killed"

        assert job_processes(jid) == set(), "processes of the job survived the kill"
        assert not is_running(setsid_pid), "the setsid child survived the kill"
        for pids in found.values():
            assert not any(is_running(p) for p in pids)


async def test_kill_escalates_to_sigkill_for_a_job_ignoring_sigterm(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute("trap '' TERM; echo ready; sleep 300")
        await wait_for(lambda: _output(s, job["id"]), message="the trap to be set (ready printed)")
        # The call itself is bounded: it has to come back soon after the 1 s grace.
        killed = await s.call("kill", timeout=15, job_id=job["id"], signal="TERM", grace_s=1)
        assert killed["status"] == "killed"
        assert killed["signal"] == "SIGKILL"
        assert "killed on request" in killed["reason"]
        assert not is_running(job["pid"])
        assert job_processes(job["id"]) == set()


async def _output(s: Server, job_id: str) -> str:
    out = await s.call("output", job_id=job_id)
    return str(out["text"])


async def test_timeout_ends_a_job_as_timed_out(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute("sleep 30", timeout_s=1)
        assert job["timeout_s"] == 1
        done = await s.wait_done(job["id"], timeout_s=20)
        assert done["status"] == "timed_out"
        assert done["signal"] == "SIGTERM"
        assert "timeout" in done["reason"]
        assert [t["status"] for t in done["transitions"]] == ["queued", "running", "timed_out"]
        assert not is_running(job["pid"])
        listed = await s.call("list", status="timed_out")
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]


async def test_background_grandchild_holding_stdout_does_not_keep_job_running(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute("sleep 60 & echo started")
        r = await s.call("wait", job_id=job["id"], timeout_s=10)
        assert r["finished"] is True, r
        assert r["job"]["status"] == "completed"
        assert r["job"]["exit_code"] == 0
        out = await s.call("output", job_id=job["id"])
        assert out["text"] == "started\n"

        grandchildren = job_processes(job["id"])
        assert grandchildren, "the background sleep should still be running"
        # kill on an ended job clears out what it left behind; the job stays completed
        after = await s.call("kill", job_id=job["id"], grace_s=1)
        assert after["status"] == "completed"
        assert after["exit_code"] == 0
        assert not any(is_running(p) for p in grandchildren)


async def test_concurrency_limit_queues_jobs(db: Path) -> None:
    env = {"MCP_BACKGROUND_JOB_MAX_CONCURRENT": "1"}
    async with start_server(db, env=env) as s:
        first = await s.execute("read line; echo got $line")
        assert first["status"] == "running"
        second = await s.execute("echo second")
        assert second["status"] == "queued"
        assert second["pid"] is None and second["started_at"] is None

        # it stays queued while the first one runs
        r = await s.call("wait", job_id=second["id"], timeout_s=0.5)
        assert r["finished"] is False
        assert r["job"]["status"] == "queued"
        listed = await s.call("list", status="queued")
        assert [j["id"] for j in listed["jobs"]] == [second["id"]]

        # a queued job can be killed before it ever starts
        third = await s.execute("echo never")
        assert third["status"] == "queued"
        killed = await s.call("kill", job_id=third["id"])
        assert killed["status"] == "killed"
        assert (killed["pid"], killed["started_at"]) == (None, None)
        assert [t["status"] for t in killed["transitions"]] == ["queued", "killed"]

        r = await s.call("interact", job_id=first["id"], input="go\n", wait_s=10)
        assert r["ended"] is True
        assert r["output"] == "got go\n"

        done = await s.wait_done(second["id"], timeout_s=20)
        assert done["status"] == "completed"
        assert [t["status"] for t in done["transitions"]] == ["queued", "running", "completed"]
        first_view = await s.call("status", job_id=first["id"])
        assert done["started_at"] >= first_view["ended_at"]
        assert (await s.call("output", job_id=second["id"]))["text"] == "second\n"
        third_view = await s.call("status", job_id=third["id"])
        assert (third_view["status"], third_view["pid"]) == ("killed", None)
        assert third_view["stdout"]["written"] == 0


async def test_wait_timeout_is_not_an_error_and_reports_progress(db: Path) -> None:
    async with start_server(db) as s:
        job = await s.execute("sleep 30")
        r = await s.call("wait", job_id=job["id"], timeout_s=0.5)
        assert r["finished"] is False
        assert r["job"]["status"] == "running"
        assert r["waited_s"] >= 0.5
        assert "wait again" in r["message"]

        notified: list[tuple[float, float | None, str | None]] = []

        # fastmcp's ProgressHandler is a Protocol: the parameter names are part of the type.
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            notified.append((progress, total, message))

        result = await s.client.call_tool(
            "wait", {"job_id": job["id"], "timeout_s": 6}, progress_handler=on_progress
        )
        assert result.structured_content is not None
        r = result.structured_content
        assert r["finished"] is False
        assert r["waited_s"] >= 6
        assert len(notified) >= 1, "no progress notification during a 6 s wait"
        done, total, message = notified[0]
        assert 0 < done <= 6
        assert total == 6
        assert message and job["id"] in message

        killed = await s.call("kill", job_id=job["id"])
        assert killed["status"] == "killed"
