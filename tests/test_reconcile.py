"""Start-up reconciliation: running jobs of dead servers fail as lost (output kept, processes
killed), their queued jobs are claimed and run; jobs of live servers are never touched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mcp_background_job import proctree
from mcp_background_job.app import App
from mcp_background_job.capture import spool_paths
from mcp_background_job.config import Settings
from mcp_background_job.db import utcnow
from mcp_background_job.jobs import JobStatus, ServerInstance, Stream
from mcp_background_job.store import Store


async def _orphan_job(
    store: Store, settings: Settings, server: ServerInstance, job_id: str
) -> subprocess.Popen[bytes]:
    """A running job as a crashed server leaves it: a live process writing to its spool file."""
    await store.create_job(
        job_id=job_id, command="sleep", cwd="/", shell="/bin/sh", env={}, labels=(),
        timeout_s=None, owner_id=server.id,
    )  # fmt: skip
    settings.spool_path.mkdir(parents=True, exist_ok=True)
    paths = spool_paths(settings.spool_path, job_id)
    with open(paths[Stream.STDOUT], "wb") as out, open(paths[Stream.STDERR], "wb") as err:
        proc = subprocess.Popen(
            ["sh", "-c", "echo written after the crash; exec sleep 300"],
            stdout=out,
            stderr=err,
            start_new_session=True,
            env={**os.environ, proctree.MARKER: job_id},
        )
    await store.transition(
        job_id,
        JobStatus.RUNNING,
        server_id=server.id,
        pid=proc.pid,
        pid_start=proctree.start_time(proc.pid),
        boot_id=proctree.boot_id(),
    )
    return proc


def _server(sid: str, pid: int) -> ServerInstance:
    return ServerInstance(
        sid, pid, proctree.start_time(pid), proctree.boot_id(), os.uname().nodename, utcnow(), None
    )


async def test_dead_servers_running_jobs_fail_queued_ones_run_live_ones_left_alone(
    settings: Settings, tmp_path: Path
) -> None:
    store = Store(settings.db)
    await store.open()
    gone = subprocess.Popen(["true"])
    dead = _server("deadserver01", gone.pid)
    gone.wait()  # its pid now names no process (or another one, with another start time)
    live = _server("liveserver01", os.getpid())
    for srv in (dead, live):
        await store.register_server(srv, version="t")
    orphan = await _orphan_job(store, settings, dead, "aaa000000001")
    await store.create_job(
        job_id="aaa000000002", command="echo adopted", cwd="/", shell="/bin/sh", env={},
        labels=(), timeout_s=None, owner_id=dead.id,
    )  # fmt: skip
    await store.create_job(
        job_id="bbb000000001", command="x", cwd="/", shell="/bin/sh", env={}, labels=(),
        timeout_s=None, owner_id=live.id,
    )  # fmt: skip
    await store.close()

    app = await App.open(settings)
    try:
        await app.runner.caught_up()  # reconciling runs in the background
        lost = await app.store.get_job("aaa000000001")
        assert (lost.status, lost.reason) == (JobStatus.FAILED, "lost: server exited")
        assert orphan.wait(timeout=5) is not None  # its process was killed
        tail = await app.tail("aaa000000001")
        assert tail.text == "written after the crash\n"
        assert await app.runner.wait_end("aaa000000002", 15)
        adopted = await app.store.get_job("aaa000000002")
        assert (adopted.status, adopted.owner_id) == (JobStatus.COMPLETED, app.runner.server_id)
        assert (await app.output("aaa000000002")).text == "adopted\n"
        untouched = await app.store.get_job("bbb000000001")
        assert untouched.status is JobStatus.QUEUED and untouched.owner_id == live.id
        others = await app.store.servers_not_stopped(exclude=app.runner.server_id)
        assert [s.id for s in others] == [live.id]
    finally:
        await app.close()


async def test_reused_pid_is_not_taken_for_the_server(settings: Settings) -> None:
    store = Store(settings.db)
    await store.open()
    # Same pid as a live process but another start time: that server is dead.
    me = _server("imposter0001", os.getpid())
    impostor = ServerInstance(
        me.id, me.pid, (me.pid_start or 0) + 1, me.boot_id, me.hostname, me.started_at, None
    )
    await store.register_server(impostor, version="t")
    await store.create_job(
        job_id="ccc000000001", command="true", cwd="/", shell="/bin/sh", env={}, labels=(),
        timeout_s=None, owner_id=impostor.id,
    )  # fmt: skip
    await store.close()
    app = await App.open(settings)
    try:
        await app.runner.caught_up()
        # The impostor's queued job was taken over (and run) by the new server.
        job = await app.store.get_job("ccc000000001")
        assert job.owner_id == app.runner.server_id
        others = await app.store.servers_not_stopped(exclude=app.runner.server_id)
        assert impostor.id not in [s.id for s in others]
    finally:
        await app.close()
