"""Many machines on one database: jobs record their host, ``list`` filters by it, and a job
queued for another host is claimed and run by a server there, once. "Hosts" here are servers
with different ``host`` settings on one machine, on each engine (``db_target``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.errors import InvalidRequest
from mcp_background_job.jobs import JobStatus

from .conftest import wait_for
from .pg import PgServer

CLI = Path(sys.executable).with_name("mcp-background-job")


@pytest.fixture
async def hosts() -> AsyncIterator[AsyncExitStack]:
    """The servers a test opens (``_open``), closed at its end."""
    async with AsyncExitStack() as stack:
        yield stack


async def _open(stack: AsyncExitStack, db: Path | str, tmp: Path, host: str) -> App:
    # Each "machine" has its own spool directory, as separate machines would.
    settings = Settings(
        db=db, host=host, spool_dir=tmp / f"spool-{host}", subreaper=False, kill_grace_s=2.0
    )
    app = await App.open(settings)
    stack.push_async_callback(app.close)
    return app


async def test_jobs_record_their_host_and_list_filters_by_it(
    hosts: AsyncExitStack, db_target: Path | str, tmp_path: Path
) -> None:
    alpha = await _open(hosts, db_target, tmp_path, "alpha")
    beta = await _open(hosts, db_target, tmp_path, "beta")
    a = await alpha.execute("echo a")
    b = await beta.execute("echo b")
    assert a.host == "alpha" and b.host == "beta"
    for app in (alpha, beta):  # either machine sees both
        listed = await app.list_jobs(host="alpha")
        assert [j.id for j in listed.jobs] == [a.id]
        assert {j.id for j in (await app.list_jobs()).jobs} == {a.id, b.id}
    assert (await alpha.status(b.id)).host == "beta"


async def test_a_job_queued_for_another_host_runs_there_and_its_output_is_read_here(
    hosts: AsyncExitStack, db_target: Path | str, tmp_path: Path
) -> None:
    alpha = await _open(hosts, db_target, tmp_path, "alpha")
    queued = await alpha.execute("echo ran-on-beta; echo err >&2", host="beta", cwd=str(tmp_path))
    assert queued.status is JobStatus.QUEUED and queued.host == "beta" and queued.owner is None
    await asyncio.sleep(0)  # alpha never starts it: it is not its host's
    assert (await alpha.status(queued.id)).status is JobStatus.QUEUED
    beta = await _open(hosts, db_target, tmp_path, "beta")
    done = await wait_for(
        lambda: _ended(alpha, queued.id), timeout=30
    )  # claimed by beta's reconciler
    assert done.status is JobStatus.COMPLETED
    assert done.owner == beta.runner.server_id
    assert (await alpha.tail(queued.id, lines=5)).text == "ran-on-beta\n"


async def _ended(app: App, job_id: str) -> object:
    view = await app.status(job_id)
    return view if view.status.is_terminal else None


async def test_a_queued_job_is_claimed_once_by_a_race_of_four_servers(
    hosts: AsyncExitStack, db_target: Path | str, tmp_path: Path
) -> None:
    alpha = await _open(hosts, db_target, tmp_path, "alpha")
    ids = [
        (await alpha.execute(f"echo job-{n}", host="gamma", cwd=str(tmp_path))).id
        for n in range(12)
    ]
    workers = await asyncio.gather(
        *(_open(hosts, db_target, tmp_path / f"w{n}", "gamma") for n in range(4))
    )
    server_ids = {w.runner.server_id for w in workers}

    async def all_ended() -> bool:
        return all([await _ended(alpha, i) for i in ids])

    await wait_for(all_ended, timeout=60)
    for n, job_id in enumerate(ids):
        job = await alpha.store.get_job(job_id)
        assert job.status is JobStatus.COMPLETED, job
        assert job.owner_id in server_ids
        started = [e for e in job.events if e.to_status is JobStatus.RUNNING]
        assert len(started) == 1, job.events  # started once, by one server
        assert (await alpha.tail(job_id, lines=5)).text == f"job-{n}\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cwd": "relative/dir"}, "absolute directory on that machine"),
        ({}, "absolute directory on that machine"),
        ({"cwd": "/tmp", "pty": True}, "terminal job runs where it is submitted"),
        ({"cwd": "/tmp", "env": {"API_TOKEN": "x"}}, "secret values are kept"),
    ],
)
async def test_a_job_for_another_host_is_refused_when_it_could_not_run_there(
    app: App, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        await app.execute("true", host="elsewhere", **kwargs)  # type: ignore[arg-type]
    assert (await app.list_jobs()).jobs == []


async def test_a_worker_runs_its_hosts_jobs_without_a_client_and_the_cli_lists_them(
    hosts: AsyncExitStack, pg_server: PgServer, tmp_path: Path
) -> None:
    url = pg_server.new_database()
    alpha = await _open(hosts, url, tmp_path, "alpha")
    queued = await alpha.execute("echo from-worker", host="beta", cwd=str(tmp_path))
    env = {**os.environ, "MCP_BACKGROUND_JOB_SPOOL_DIR": str(tmp_path / "worker-spool")}
    worker = subprocess.Popen(
        [str(CLI), "worker", "--db", url, "--host", "beta"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        done = await wait_for(lambda: _ended(alpha, queued.id), timeout=60)
        assert done.status is JobStatus.COMPLETED
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert out == b""  # never prints to stdout
    assert b"worker_started host=beta" in err
    listed = subprocess.run(
        [str(CLI), "list", "--db", url, "--host", "beta"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert queued.id in listed.stdout and "echo from-worker" in listed.stdout
    other = subprocess.run(
        [str(CLI), "list", "--db", url, "--host", "gamma"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert queued.id not in other.stdout
