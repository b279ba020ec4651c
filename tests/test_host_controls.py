"""kill and interact on another host's job go through the database to its server, and hosts
that stop heart-beating are declared dead. "Hosts" are servers with different ``host`` settings
on one machine and one database, on each engine (``db_target``)."""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from mcp_background_job import commands, db, history, proctree
from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.db import JobControlRow, ServerRow
from mcp_background_job.errors import InvalidRequest, JobStateError, NoAnswer, StorageError
from mcp_background_job.jobs import JobOptions, JobStatus, ServerInstance, Stream
from mcp_background_job.store import Store

from .conftest import wait_for


@pytest.fixture
async def hosts() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def _open(stack: AsyncExitStack, target: Path | str, tmp: Path, host: str, **kw: Any) -> App:
    # Each "machine" has its own spool directory, as separate machines would.
    settings = Settings(db=target, host=host, spool_dir=tmp / f"spool-{host}", subreaper=False,
                        kill_grace_s=2.0, **kw)  # fmt: skip
    app = await App.open(settings)
    stack.push_async_callback(app.close)
    return app


def _sql(target: Path | str, stmt: Any) -> list[Any]:
    """A statement on the database as another program would run it (the test's own view)."""
    engine = db.make_sync_engine(target, pool_size=1)
    try:
        with engine.begin() as conn:
            result = conn.execute(stmt)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def _controls_left(target: Path | str) -> int:
    return int(_sql(target, select(func.count()).select_from(JobControlRow))[0][0])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def _running(app: App, job_id: str) -> bool:
    return (await app.status(job_id)).status is JobStatus.RUNNING


async def test_a_kill_from_another_host_stops_the_whole_tree_there(
    hosts: AsyncExitStack, db_target: Path | str, tmp_path: Path
) -> None:
    alpha = await _open(hosts, db_target, tmp_path, "alpha")
    beta = await _open(hosts, db_target, tmp_path, "beta")
    child = tmp_path / "child.pid"
    job = await alpha.execute(f"sleep 300 & echo $! > {child}; sleep 300")
    await wait_for(lambda: child.exists() and child.read_text().strip(), timeout=30)
    pid = int(child.read_text())
    killed = await beta.kill(job.id, grace_s=1)  # beta cannot see alpha's pids: asks alpha
    assert killed.status is JobStatus.KILLED, killed
    await wait_for(lambda: not _alive(pid), timeout=10)  # the background child too
    stored = await beta.store.get_job(job.id)
    assert stored.end_cause == "kill" and stored.events[-1].server_id == alpha.runner.server_id
    assert _controls_left(db_target) == 0  # the request row is gone once answered
    # A job queued for a host is only a row: any server may cancel it, no request needed.
    queued = await alpha.execute("true", host="gamma", cwd=str(tmp_path))
    assert (await beta.kill(queued.id)).status is JobStatus.KILLED


async def test_interact_from_another_host_writes_a_line_and_returns_the_reply(
    hosts: AsyncExitStack, db_target: Path | str, tmp_path: Path
) -> None:
    alpha = await _open(hosts, db_target, tmp_path, "alpha")
    beta = await _open(hosts, db_target, tmp_path, "beta")
    job = await alpha.execute('while IFS= read -r l; do echo "got:$l"; done')
    await wait_for(lambda: _running(alpha, job.id), timeout=30)
    result = await beta.interact(job.id, "hello\n", until="got:hello", wait_s=20)
    assert result.returned_because == "prompt", result
    assert "got:hello" in result.output and result.bytes_written == 6
    # The owner's refusals come back as they were raised there, saying which host answered.
    with pytest.raises(InvalidRequest, match=r"not a valid regular expression.*host 'alpha'"):
        await beta.interact(job.id, "", until="(", wait_s=1)
    again = await beta.interact(job.id, "", eof=True, wait_s=20)  # end of input: it ends
    assert again.ended and again.status is JobStatus.COMPLETED, again
    assert _controls_left(db_target) == 0


async def test_a_request_no_server_takes_times_out_saying_so_and_is_withdrawn(
    hosts: AsyncExitStack, db_target: Path | str, tmp_path: Path
) -> None:
    alpha = await _open(hosts, db_target, tmp_path, "alpha")
    beta = await _open(hosts, db_target, tmp_path, "beta", control_take_s=0.5)
    job = await alpha.execute("sleep 300")
    await alpha.remote.close()  # alpha still runs the job, but takes no request any more
    for act in (lambda: beta.kill(job.id), lambda: beta.interact(job.id, "x\n")):
        with pytest.raises(NoAnswer, match=r"No server on host 'alpha' took the \w+ of job .* "
                           r"within 0.5 s \(control_take_s\), so nothing was done"):  # fmt: skip
            await act()
    assert _controls_left(db_target) == 0  # withdrawn: never applied later
    assert (await beta.status(job.id)).status is JobStatus.RUNNING
    assert (await alpha.kill(job.id, grace_s=0)).status is JobStatus.KILLED


async def test_a_silent_host_is_declared_dead_and_its_running_jobs_fail(
    hosts: AsyncExitStack, db_target: Path | str, tmp_path: Path
) -> None:
    alpha = await _open(hosts, db_target, tmp_path, "alpha", host_dead_after_s=5)
    beta = await _open(hosts, db_target, tmp_path, "beta")
    job = await beta.execute("sleep 300")
    await beta.runner.caught_up()  # its first heartbeat is written
    # Beta goes silent: its servers' last beats an hour ago (its next is 30 s away).
    _sql(db_target, update(ServerRow).where(ServerRow.hostname == "beta")
         .values(heartbeat_at=datetime.now(UTC) - timedelta(hours=1)))  # fmt: skip
    lost = await wait_for(lambda: _ended(alpha, job.id), timeout=30)  # alpha's reconcile
    assert lost.status is JobStatus.FAILED
    assert lost.reason == "lost: host beta stopped answering"
    server = await alpha.store.get_server(beta.runner.server_id)
    assert server is not None and server.stopped_at is not None
    events = (await alpha.store.get_job(job.id)).events
    failed = [e.server_id for e in events if e.to_status is JobStatus.FAILED]
    assert failed == [alpha.runner.server_id]  # one guarded change, with its event
    # Alpha itself is never declared dead by its own reconcile, and beats on.
    assert (await alpha.store.get_server(alpha.runner.server_id)).stopped_at is None  # type: ignore[union-attr]


async def _ended(app: App, job_id: str) -> object:
    view = await app.status(job_id)
    return view if view.status.is_terminal else None


async def _owned_by(app: App, job_id: str) -> bool:
    return (await app.store.get_job(job_id, events=False)).owner_id == app.runner.server_id


async def test_a_host_is_declared_dead_only_when_none_of_its_servers_beat(
    db_target: Path | str,
) -> None:
    store = Store(db_target)
    await store.open()
    try:
        now = datetime.now(UTC)
        for n in (1, 2):
            await store.register_server(ServerInstance(id=f"beta{n}", pid=1, pid_start=None,
                                        boot_id=None, hostname="beta", started_at=now,
                                        stopped_at=None), "test")  # fmt: skip
        plain, detached = await _running_on_beta(store, False), await _running_on_beta(store, True)
        await store.heartbeat("beta2")  # beta1 is silent since `now`, but beta2 beats
        await asyncio.sleep(0.01)
        assert await store.silent_hosts(now, exclude="alpha") == []
        assert await store.declare_dead("beta", now, "alpha1", "lost") is None
        later = datetime.now(UTC) + timedelta(seconds=1)
        assert await store.silent_hosts(later, exclude="alpha") == ["beta"]
        assert await store.silent_hosts(later, exclude="beta") == []  # never its own host
        assert await store.declare_dead("beta", later, "alpha1", "lost") == [plain]
        assert (await store.get_job(plain)).reason == "lost"
        # A detached job runs on under its keeper: it waits for its host to come back.
        assert (await store.get_job(detached)).status is JobStatus.RUNNING
        assert await store.declare_dead("beta", later, "alpha2", "lost") is None  # once
        assert await store.servers_not_stopped() == []
    finally:
        await store.close()


async def _running_on_beta(store: Store, detached: bool) -> str:
    job_id = "deadbeef000" + str(int(detached))
    await store.create_job(job_id=job_id, command="sleep 300", cwd="/", shell="/bin/sh", env={},
                           labels=(), timeout_s=None, owner_id="beta1", host="beta",
                           options=JobOptions(detached=detached))  # fmt: skip
    await store.transition(job_id, JobStatus.RUNNING, server_id="beta1", pid=1)
    return job_id


async def test_the_cli_counts_this_hosts_servers_by_the_host_setting(tmp_path: Path) -> None:
    # A server whose host setting is not the hostname is still a server of this machine.
    settings = Settings(db=tmp_path / "jobs.db", host="alpha", subreaper=False)
    app = await App.open(settings)
    try:
        with pytest.raises(StorageError, match="A server is using"):
            await commands.vacuum(argparse.Namespace(), settings)
    finally:
        await app.close()


async def test_follow_judges_the_owner_by_pid_on_the_host_setting(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    await store.open()
    try:
        gone = ServerInstance(id="alpha1", pid=_dead_pid(), pid_start=None,
                              boot_id=proctree.boot_id(), hostname="alpha",
                              started_at=datetime.now(UTC), stopped_at=None)  # fmt: skip
        await store.register_server(gone, "test")
        await store.create_job(job_id="feedface0001", command="sleep 300", cwd="/",
                               shell="/bin/sh", env={}, labels=(), timeout_s=None,
                               owner_id="alpha1", host="alpha")  # fmt: skip
        await store.transition("feedface0001", JobStatus.RUNNING, server_id="alpha1", pid=1)
        sink = history.FileSink({Stream.STDOUT: io.BytesIO()}, io.StringIO())
        follow = history.follow(store, "feedface0001", [Stream.STDOUT], {Stream.STDOUT: 0},
                                sink, poll_s=0.05, host="alpha")  # fmt: skip
        with pytest.raises(JobStateError, match="server that ran it has exited"):
            await asyncio.wait_for(follow, 20)
    finally:
        await store.close()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
