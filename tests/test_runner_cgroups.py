"""The runner and per-job cgroups: a kill also kills through the job's group (what escaped its
process tree dies too), and the group is removed once nothing of the job is left in it."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mcp_background_job import cgroup, proctree
from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.jobs import JobStatus

from .conftest import wait_for

CG = cgroup.detect(None, 100)
pytestmark = pytest.mark.skipif(isinstance(CG, str), reason=f"no writable cgroup here: {CG}")

#: A descendant that leaves the job's tree every way proctree can see: a new session and group,
#: its parent gone (re-parented to init), and the job marker cleared from its environment.
ESCAPE = "(setsid sh -c 'echo $$ > {pidfile}; exec env -i sleep 301' &); exec sleep 302"


def _alive(pid: int) -> bool:
    return bool(proctree.live({pid}))


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[App]:
    settings = Settings(db=tmp_path / "state" / "jobs.db", subreaper=False, kill_grace_s=1.0,
                        isolation="rlimits", limit_processes=100)  # fmt: skip
    app = await App.open(settings)
    assert app.isolation.cgroups is not None
    yield app
    await app.close()


async def test_kill_stops_an_escaped_descendant_and_removes_the_job_cgroup(
    limited: App, tmp_path: Path
) -> None:
    cgroups = limited.isolation.cgroups
    assert cgroups is not None
    pidfile = tmp_path / "escaped.pid"
    view = await limited.execute(ESCAPE.format(pidfile=pidfile), cwd=str(tmp_path))
    await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
    escaped = int(pidfile.read_text())
    job = await limited.store.get_job(view.id)
    try:
        await wait_for(lambda: escaped in cgroups.procs(view.id))
        # Out of the tree: proctree alone would leave it running.
        assert escaped not in proctree.job_tree(view.id, job.pid, job.pid_start)
        assert any(d.is_dir() for d in cgroups.dirs(view.id))

        killed = await limited.kill(view.id)
        assert killed.status is JobStatus.KILLED
        await wait_for(lambda: not _alive(escaped), timeout=10)
        await wait_for(lambda: not any(d.exists() for d in cgroups.dirs(view.id)), timeout=10)
    finally:
        if _alive(escaped):
            os.kill(escaped, signal.SIGKILL)


async def test_a_job_that_ends_by_itself_leaves_no_cgroup(limited: App, tmp_path: Path) -> None:
    cgroups = limited.isolation.cgroups
    assert cgroups is not None
    view = await limited.execute("echo done", cwd=str(tmp_path))
    assert await limited.runner.wait_end(view.id, 15)
    await wait_for(lambda: not any(d.exists() for d in cgroups.dirs(view.id)), timeout=10)
