"""Priorities, dependencies, rerun, idle timeouts and the queue across servers, in-process."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_background_job import proctree
from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.db import utcnow
from mcp_background_job.errors import InvalidRequest
from mcp_background_job.jobs import Job, JobStatus, ServerInstance
from mcp_background_job.store import Store

from .conftest import wait_for

RECORD = 'echo "$MCP_BACKGROUND_JOB_ID" >> ran'


async def _ended(app: App, job_id: str, timeout: float = 30) -> Job:
    assert await app.runner.wait_end(job_id, timeout), f"job {job_id} did not end"
    return await app.store.get_job(job_id)


@pytest.fixture
async def one_slot(tmp_path: Path) -> AsyncIterator[App]:
    app = await App.open(Settings(db=tmp_path / "jobs.db", max_concurrent=1, subreaper=False))
    yield app
    await app.close()


async def test_queued_jobs_start_by_priority_then_submission(one_slot: App, tmp_path: Path) -> None:
    app = one_slot
    blocker = await app.execute("read go", cwd=str(tmp_path))
    jobs = {}
    for name, priority in [("low", -5), ("first", 0), ("urgent", 10), ("second", 0), ("high", 10)]:
        view = await app.execute(f"echo {name} >> order", cwd=str(tmp_path), priority=priority)
        assert (view.status, view.priority) == (JobStatus.QUEUED, priority)
        jobs[name] = view
    await app.interact(blocker.id, "\n", wait_s=0)
    for view in jobs.values():
        assert (await _ended(app, view.id)).status is JobStatus.COMPLETED
    order = (tmp_path / "order").read_text().split()
    assert order == ["urgent", "high", "first", "second", "low"]


async def test_a_dependency_chain_with_a_failure_in_the_middle(app: App, tmp_path: Path) -> None:
    cwd = str(tmp_path)
    build = await app.execute(f"{RECORD}; sleep 0.3", cwd=cwd, labels=["build"])
    tests = await app.execute(f"{RECORD}; exit 2", cwd=cwd, after=[build.id])
    deploy = await app.execute(RECORD, cwd=cwd, after=[tests.id[:8]])  # a prefix works
    notify = await app.execute(RECORD, cwd=cwd, after=[deploy.id])
    cleanup = await app.execute(RECORD, cwd=cwd, after=[tests.id], run_anyway=True)
    assert (tests.status, tests.after, tests.waiting_on) == (
        JobStatus.QUEUED,
        [build.id],
        [build.id],
    )
    assert deploy.after == [tests.id]
    assert (await _ended(app, build.id)).status is JobStatus.COMPLETED
    failed = await _ended(app, tests.id)
    assert (failed.status, failed.exit_code) == (JobStatus.FAILED, 2)
    never = await _ended(app, deploy.id)
    assert (never.status, never.reason) == (
        JobStatus.FAILED,
        f"dependency {tests.id} failed (exit code 2)",
    )
    assert (never.started_at, never.pid) == (None, None)
    assert [e.to_status for e in never.events] == ["queued", "failed"]
    transitive = await _ended(app, notify.id)
    assert transitive.reason == f"dependency {deploy.id} failed ({never.reason})"
    assert (await _ended(app, cleanup.id)).status is JobStatus.COMPLETED
    ran = (tmp_path / "ran").read_text().split()
    assert ran == [build.id, tests.id, cleanup.id]


async def test_dependencies_are_checked_at_submission(app: App) -> None:
    with pytest.raises(InvalidRequest, match="after: no job with id 'ffffff'"):
        await app.execute("true", after=["ffffff"])
    with pytest.raises(InvalidRequest, match="after: no job with id 'ffffffffffff'"):
        await app.execute("true", after=["ffffffffffff"])
    done = await app.execute("true")
    await _ended(app, done.id)
    # a dependency that has already completed holds nothing back
    view = await app.execute("echo ok", after=[done.id, done.id])
    assert view.after == [done.id]
    assert (await _ended(app, view.id)).status is JobStatus.COMPLETED


async def test_rerun_repeats_the_job(app: App, tmp_path: Path) -> None:
    first = await app.execute(
        'echo "$GREETING from $(pwd)"; stty size',
        cwd=str(tmp_path),
        env={"GREETING": "hello"},
        labels=["nightly"],
        pty=True,
        rows=20,
        cols=50,
        priority=3,
        timeout_s=60,
        idle_timeout_s=30,
    )
    await _ended(app, first.id)
    again = await app.rerun(first.id[:6])
    assert again.id != first.id
    assert again.rerun_of == first.id
    same = ("command", "cwd", "env_keys", "labels", "pty", "rows", "cols", "priority",
            "timeout_s", "idle_timeout_s")  # fmt: skip
    assert {k: getattr(again, k) for k in same} == {k: getattr(first, k) for k in same}
    await _ended(app, again.id)
    assert (await app.output(again.id)).text == f"hello from {tmp_path}\n20 50\n"
    assert (await app.store.get_job(first.id)).rerun_of is None


async def test_idle_timeout(app: App) -> None:
    quiet = await app.execute("echo started; exec sleep 60", idle_timeout_s=0.5)
    job = await _ended(app, quiet.id)
    assert (job.status, job.signal) == (JobStatus.TIMED_OUT, "SIGTERM")
    assert job.reason == "idle timeout: no output for 0.5 s; ended by signal SIGTERM"
    assert (await app.output(quiet.id)).text == "started\n"
    # output keeps it alive: it prints for longer than the idle limit
    chatty = await app.execute(
        "for i in $(seq 25); do echo $i; sleep 0.1; done", idle_timeout_s=1.5
    )
    assert (await _ended(app, chatty.id)).status is JobStatus.COMPLETED
    with pytest.raises(InvalidRequest, match="idle_timeout_s must be greater than 0"):
        await app.execute("true", idle_timeout_s=0)


async def test_every_job_starts_exactly_once_while_others_end(tmp_path: Path) -> None:
    """Submissions race with the scheduler (woken by ends): none may start a job twice."""
    settings = Settings(db=tmp_path / "jobs.db", max_concurrent=2, subreaper=False)
    app = await App.open(settings)
    try:
        views = []
        for i in range(30):
            views.append(await app.execute(f"{RECORD}; sleep 0.0{i % 3}", cwd=str(tmp_path)))
        jobs = [await _ended(app, v.id) for v in views]
        assert [j.status for j in jobs] == [JobStatus.COMPLETED] * 30
        assert Counter((tmp_path / "ran").read_text().split()) == {v.id: 1 for v in views}
    finally:
        await app.close()


async def _dead_server(store: Store) -> str:
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process (or another one, with another start time)
    srv = ServerInstance(
        "deadserver01", gone.pid, 1, proctree.boot_id(), os.uname().nodename, utcnow(), None
    )
    await store.register_server(srv, version="t")
    return srv.id


async def test_two_servers_share_a_dead_servers_queue_without_running_a_job_twice(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    store = Store(db)
    await store.open()
    dead = await _dead_server(store)
    ids = [f"{i:012x}" for i in range(1, 13)]
    for job_id in ids:
        await store.create_job(
            job_id=job_id, command=RECORD, cwd=str(tmp_path), shell="/bin/sh", env={},
            labels=(), timeout_s=None, owner_id=dead,
        )  # fmt: skip
    await store.close()
    apps = await asyncio.gather(
        *(App.open(Settings(db=db, max_concurrent=2, subreaper=False)) for _ in range(2))
    )
    try:
        for job_id in ids:
            await wait_for(lambda job_id=job_id: _done(apps[0], job_id), timeout=30)
        owners = {(await apps[0].store.get_job(j)).owner_id for j in ids}
        assert owners <= {a.runner.server_id for a in apps}
        assert Counter((tmp_path / "ran").read_text().split()) == dict.fromkeys(ids, 1)
    finally:
        await asyncio.gather(*(a.close() for a in apps))


async def _done(app: App, job_id: str) -> bool:
    return (await app.store.get_job(job_id, events=False)).status is JobStatus.COMPLETED


async def test_a_live_server_takes_over_the_queue_of_one_that_stopped(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    first = await App.open(Settings(db=db, max_concurrent=1, subreaper=False))
    second = await App.open(Settings(db=db, subreaper=False))
    try:
        await first.execute("sleep 60")
        prepare = await first.execute("echo prepare", priority=1)
        waiting = await first.execute("echo after prepare", after=[prepare.id])
        assert (prepare.status, waiting.status) == (JobStatus.QUEUED, JobStatus.QUEUED)
        await first.close()
        # the second server's periodic reconcile claims both and runs them in order
        for view in (prepare, waiting):
            await wait_for(lambda v=view: _done(second, v.id), timeout=30)
            job = await second.store.get_job(view.id)
            assert job.owner_id == second.runner.server_id
        assert (await second.output(waiting.id)).text == "after prepare\n"
    finally:
        await second.close()
