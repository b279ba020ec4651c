"""The operations behind the tools, in-process, with real subprocesses and a real database."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.errors import InvalidRequest, JobNotFound, JobStateError
from mcp_background_job.jobs import Job, JobStatus
from mcp_background_job.models import OutputResult

from .conftest import wait_for


@pytest.fixture
def settings(db_target: Path | str) -> Settings:
    """The app tests run on each engine (``db_target``): an SQLite file and PostgreSQL."""
    return Settings(db=db_target, subreaper=False, kill_grace_s=2.0)


async def _ended(app: App, job_id: str, timeout: float = 15) -> Job:
    assert await app.runner.wait_end(job_id, timeout), "job did not end"
    return await app.store.get_job(job_id)


async def _read_all(app: App, job_id: str, stream: str = "stdout", max_bytes: int = 65536) -> str:
    parts, cursor = [], None
    while True:
        r = await app.output(job_id, stream, cursor, max_bytes)  # type: ignore[arg-type]
        parts.append(r.text)
        cursor = r.cursor
        if not r.more:
            return "".join(parts)


async def test_exit_codes_and_signals(app: App) -> None:
    ok = await app.execute("echo hi")
    bad = await app.execute("exit 3")
    sig = await app.execute("kill -USR1 $$")
    assert (await _ended(app, ok.id)).status is JobStatus.COMPLETED
    failed = await _ended(app, bad.id)
    assert (failed.status, failed.exit_code, failed.reason) == (JobStatus.FAILED, 3, None)
    killed_itself = await _ended(app, sig.id)
    assert (killed_itself.status, killed_itself.signal) == (JobStatus.FAILED, "SIGUSR1")
    assert "not sent by this server" in (killed_itself.reason or "")


async def test_shell_features_env_and_cwd(app: App, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    view = await app.execute(
        "ls *.txt | tr a-z A-Z && echo $GREETING > out && cat out; echo $MCP_BACKGROUND_JOB_ID",
        cwd=str(tmp_path),
        env={"GREETING": "hello world"},
    )
    await _ended(app, view.id)
    assert await _read_all(app, view.id) == f"F.TXT\nhello world\n{view.id}\n"
    assert view.env_keys == ["GREETING"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"command": "  "}, "command is empty"),
        ({"command": "true", "cwd": "/no/such/dir"}, "does not exist"),
        ({"command": "true", "env": {"1BAD": "x"}}, "not valid"),
        ({"command": "true", "timeout_s": 0}, "greater than 0"),
        ({"command": "true", "labels": ["has space"]}, "label"),
    ],
)
async def test_execute_rejects_bad_input(app: App, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await app.execute(**kwargs)


async def test_bad_reads_say_what_to_do(app: App) -> None:
    view = await app.execute("echo 12345")
    await _ended(app, view.id)
    with pytest.raises(JobNotFound, match="Call `list`"):
        await app.status("ffffffffffff")
    with pytest.raises(InvalidRequest, match="Invalid cursor"):
        await app.output(view.id, cursor="abc")
    with pytest.raises(InvalidRequest, match="points past"):
        await app.output(view.id, cursor="7:0")
    with pytest.raises(InvalidRequest, match="0 or more"):
        await app.tail(view.id, lines=-1)
    with pytest.raises(JobStateError, match="has ended"):
        await app.interact(view.id, "x")
    with pytest.raises(InvalidRequest, match="Unknown signal"):
        await app.kill(view.id, "NOPE")


async def test_main_exit_ends_the_job_even_if_a_grandchild_holds_stdout(app: App) -> None:
    view = await app.execute("sleep 30 & echo started")
    job = await _ended(app, view.id, timeout=10)
    assert job.status is JobStatus.COMPLETED
    assert (await app.tail(view.id)).text == "started\n"
    await app.kill(view.id, grace_s=0)  # clear out the sleep left behind


async def test_tail_lines_and_streams(app: App) -> None:
    view = await app.execute("seq 1 1000; echo oops >&2; printf 'last'")
    await _ended(app, view.id)
    t = await app.tail(view.id, lines=3)
    assert (t.text, t.lines) == ("999\n1000\nlast", 3)
    assert (await app.tail(view.id, lines=0)).text == ""
    assert (await app.tail(view.id, lines=5, stream="stderr")).text == "oops\n"
    assert (await app.tail(view.id, lines=2000)).lines == 1001


async def test_output_reads_a_running_job_promptly(app: App) -> None:
    view = await app.execute("echo first; sleep 30")
    r = await wait_for(lambda: _has_text(app, view.id), timeout=5)
    assert r.text == "first\n" and not r.end and r.status is JobStatus.RUNNING
    await app.kill(view.id, grace_s=0)
    done = await app.output(view.id, cursor=r.cursor)
    assert done.text == "" and done.end


async def _has_text(app: App, job_id: str) -> OutputResult | None:
    r = await app.output(job_id)
    return r if r.text else None


async def test_interact_and_eof(app: App) -> None:
    view = await app.execute("while read line; do echo got:$line; done; echo bye")
    r = await app.interact(view.id, "a\nb\n", wait_s=0.5)
    assert r.output == "got:a\ngot:b\n" and r.status is JobStatus.RUNNING
    r = await app.interact(view.id, "", wait_s=5, eof=True)
    assert r.output == "bye\n" and r.ended and r.status is JobStatus.COMPLETED


async def test_interact_never_blocks_on_a_job_that_does_not_read(app: App) -> None:
    view = await app.execute("sleep 30")
    big = "x" * 600_000
    await app.interact(view.id, big, wait_s=0)
    with pytest.raises(JobStateError, match="not reading its stdin"):
        await app.interact(view.id, big, wait_s=0)
    await app.kill(view.id, grace_s=0)


async def test_timeout(app: App) -> None:
    view = await app.execute("sleep 30", timeout_s=0.3)
    job = await _ended(app, view.id)
    assert job.status is JobStatus.TIMED_OUT and job.signal == "SIGTERM"


async def test_kill_escalates_for_a_job_ignoring_term(app: App) -> None:
    view = await app.execute("trap '' TERM; echo ready; while true; do sleep 0.1; done")
    await wait_for(lambda: _has_text(app, view.id), timeout=5)
    final = await app.kill(view.id, "TERM", grace_s=0.5)
    assert final.status is JobStatus.KILLED and final.signal == "SIGKILL"
    assert [t.status for t in final.transitions][-1] is JobStatus.KILLED


async def test_queue_respects_max_concurrent(tmp_path: Path) -> None:
    app = await App.open(Settings(db=tmp_path / "jobs.db", max_concurrent=2, subreaper=False))
    try:
        views = [await app.execute(f"sleep 0.3; echo {i}") for i in range(5)]
        assert [v.status for v in views] == ["running", "running", "queued", "queued", "queued"]
        for v in views:
            assert (await _ended(app, v.id)).status is JobStatus.COMPLETED
        jobs = [await app.store.get_job(v.id) for v in views]
        assert all(j.started_at for j in jobs)
        starts = [j.started_at for j in jobs if j.started_at]
        assert starts == sorted(starts)  # queued jobs start in submission order
        busy = [await app.execute("sleep 30") for _ in range(2)]
        queued = await app.execute("true")
        assert queued.status is JobStatus.QUEUED
        k = await app.kill(queued.id)
        assert (k.status, k.reason) == (JobStatus.KILLED, "killed before it started")
        for b in busy:
            await app.kill(b.id, grace_s=0)
    finally:
        await app.close()


async def test_wait_reports_progress_and_timeout(app: App) -> None:
    view = await app.execute("sleep 30")
    r = await app.wait(view.id, timeout_s=0.2)
    assert not r.finished and "call wait again" in r.message
    await app.kill(view.id, grace_s=0)
    r = await app.wait(view.id, timeout_s=5)
    assert r.finished and r.job.status is JobStatus.KILLED


async def test_many_submissions_at_once_keep_the_limit_and_the_order(tmp_path: Path) -> None:
    """Concurrent executes start themselves outside the start lock: the limit must still hold
    at every moment, and queued jobs must still start oldest first."""
    app = await App.open(Settings(db=tmp_path / "jobs.db", max_concurrent=3, subreaper=False))
    try:
        ran = tmp_path / "ran"
        record = f'echo "$MCP_BACKGROUND_JOB_ID" >> {ran}'
        views = await asyncio.gather(
            *(app.execute(f"{record}; sleep 0.05; exit {i % 2}") for i in range(30))
        )
        assert sum(v.status is JobStatus.RUNNING for v in views) == 3
        ended = [await _ended(app, v.id) for v in views]
        assert [j.exit_code for j in ended] == [i % 2 for i in range(30)]
        # Never more than 3 at once, from the recorded start and end times.
        edges = sorted(
            [(j.started_at, 1) for j in ended] + [(j.ended_at, -1) for j in ended],
            key=lambda e: (e[0], e[1]),
        )
        running = peak = 0
        for _, step in edges:
            running += step
            peak = max(peak, running)
        assert peak == 3
        assert sorted(ran.read_text().split()) == sorted(v.id for v in views)  # each ran once
        queued = [j for j, v in zip(ended, views, strict=True) if v.status is JobStatus.QUEUED]
        assert all(j.started_at for j in queued)
        starts = [j.started_at for j in queued if j.started_at]
        assert starts == sorted(starts)
    finally:
        await app.close()


async def test_wait_many(app: App) -> None:
    ok, bad = await app.execute("true"), await app.execute("exit 3")
    r = await app.wait_many([bad.id[:6], ok.id], timeout_s=10)
    assert r.finished and r.counts == {"failed": 1, "completed": 1}
    assert [(j.id, j.exit_code) for j in r.jobs] == [(bad.id, 3), (ok.id, 0)]
    quick = await app.execute("sleep 0.2", labels=["shard"])
    slow = await app.execute("sleep 30", labels=["shard"])
    r = await app.wait_many(label="shard", return_when="first", timeout_s=10)
    assert r.finished and r.counts == {"completed": 1, "running": 1}
    assert [j.id for j in r.jobs] == [quick.id, slow.id]
    r = await app.wait_many([quick.id], label="shard", timeout_s=0.2)
    assert not r.finished and "call wait_many again" in r.message
    assert [j.id for j in r.jobs] == [quick.id, slow.id]  # the label adds only active jobs
    await app.kill(slow.id, grace_s=0)
    r = await app.wait_many(label="shard", timeout_s=1)  # none active any more
    assert r.finished and r.jobs == []
    with pytest.raises(InvalidRequest, match="Pass job_ids, a label, or both"):
        await app.wait_many()
    with pytest.raises(JobNotFound):
        await app.wait_many([ok.id, "0123456789ab"])
    with pytest.raises(InvalidRequest, match="at most 500"):
        await app.wait_many([f"{i:012x}" for i in range(501)])


async def test_shutdown_kills_running_jobs_and_the_next_server_runs_queued_ones(
    tmp_path: Path,
) -> None:
    settings = Settings(db=tmp_path / "jobs.db", max_concurrent=1, subreaper=False)
    app = await App.open(settings)
    running = await app.execute("sleep 30")
    queued = await app.execute("echo later")
    await app.close()
    app = await App.open(settings)
    try:
        job = await app.store.get_job(running.id)
        assert (job.status, job.reason) == (JobStatus.KILLED, "server shutdown")
        assert not _alive(running.pid)
        later = await _ended(app, queued.id)
        assert (later.status, later.owner_id) == (JobStatus.COMPLETED, app.runner.server_id)
        assert (await app.output(queued.id)).text == "later\n"
    finally:
        await app.close()


async def test_tree_kill_reaches_setsid_and_nohup_children(tmp_path: Path) -> None:
    app = await App.open(Settings(db=tmp_path / "jobs.db", subreaper=True))
    try:
        view = await app.execute(
            "setsid sleep 301 & nohup sleep 302 >/dev/null 2>&1 & "
            "(trap '' TERM; sleep 303) & echo up; wait"
        )
        await wait_for(lambda: _has_text(app, view.id), timeout=5)
        marker = f"MCP_BACKGROUND_JOB_ID={view.id}".encode()
        assert len(_marked(marker)) >= 4
        final = await app.kill(view.id, grace_s=0.5)
        assert final.status is JobStatus.KILLED
        await wait_for(lambda: not _marked(marker), timeout=5)
    finally:
        await app.close()


def _marked(marker: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if marker + b"\0" in env and state != b"Z":
                found.append(int(entry))
    return found


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_list_and_status_views(app: App) -> None:
    a = await app.execute("echo a", labels=["x"])
    await app.execute("echo b")
    await _ended(app, a.id)
    page = await app.list_jobs(label="x")
    assert [j.id for j in page.jobs] == [a.id]
    view = await app.status(a.id[:6])
    assert view.stdout.written == view.stdout.stored == 2
    assert [t.status for t in view.transitions] == ["queued", "running", "completed"]
    assert view.duration_s is not None and view.duration_s >= 0
    with pytest.raises(InvalidRequest, match="limit"):
        await app.list_jobs(limit=0)


async def test_reads_while_a_big_job_runs_stay_exact(app: App) -> None:
    view = await app.execute("seq 1 300000")
    await _ended(app, view.id)
    text = await _read_all(app, view.id, max_bytes=10_000)
    assert text == "".join(f"{i}\n" for i in range(1, 300001))
    await asyncio.sleep(0)
