"""The runner on its own (without ``App``): callbacks given to its constructor."""

from __future__ import annotations

from pathlib import Path

from mcp_background_job.capture import Ingester
from mcp_background_job.config import Settings
from mcp_background_job.jobs import JobStatus, Stream
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
