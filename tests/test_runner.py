"""The runner on its own (without ``App``): callbacks given to its constructor, and a start that
fails undoing every step of it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from mcp_background_job.capture import Ingester, spool_paths
from mcp_background_job.config import Settings
from mcp_background_job.jobs import JobOptions, JobStatus, Stream
from mcp_background_job.runner import Runner
from mcp_background_job.store import Store


async def test_on_ended_given_to_the_constructor_runs_with_the_output_stored_before_the_end(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    seen: list[tuple[str, JobStatus, bytes]] = []

    async def on_ended(job_id: str) -> None:
        job = await store.get_job(job_id, events=False)
        chunks = await store.read_stream(job_id, Stream.STDOUT, 0, 1024)
        seen.append((job_id, job.status, b"".join(c.data for c in chunks)))

    runner = Runner(settings, store, Ingester(settings, store), on_ended=on_ended)
    await runner.start()
    try:
        job = await runner.submit(
            "echo hello", cwd=str(tmp_path), env={}, labels=(), timeout_s=None
        )
        assert await runner.wait_end(job.id, 15)
        assert (await store.get_job(job.id)).status is JobStatus.COMPLETED
        assert seen == [(job.id, JobStatus.RUNNING, b"hello\n")]
    finally:
        await runner.shutdown()


def _open_fds() -> set[tuple[str, str]]:
    """(descriptor, what it is) of this process: a leaked one shows even under a reused number."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, gone already)
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return found


@pytest.mark.parametrize("pty", [False, True])
async def test_a_start_that_fails_leaves_no_descriptor_spool_file_or_process(
    settings: Settings, store: Store, tmp_path: Path, pty: bool
) -> None:
    runner = Runner(settings, store, Ingester(settings, store))
    await runner.start()
    try:
        # Warm up: the first job opens what stays open (the ingester's, the event loop's).
        ok = await runner.submit("true", cwd=str(tmp_path), env={}, labels=(), timeout_s=None)
        assert await runner.wait_end(ok.id, 15)
        before = _open_fds()
        # Popen itself fails (the runner has no App to check the directory first).
        job = await runner.submit(
            "true", cwd=str(tmp_path / "gone"), env={}, labels=(), timeout_s=None,
            options=JobOptions(pty=pty),
        )  # fmt: skip
        assert job.status is JobStatus.FAILED and job.reason is not None
        assert job.reason.startswith("failed to start: ") and "gone" in job.reason
        # The pipe or terminal, the spool descriptors: all closed (the warm-up job's may close).
        assert _open_fds() - before == set()
        assert not any(p.exists() for p in spool_paths(settings.spool_path, job.id).values())
        assert not runner.owns(job.id)
    finally:
        await runner.shutdown()
