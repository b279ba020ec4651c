"""Spool files to SQLite: bytes kept exactly, the output limit, crash recovery, disk bounds."""

from __future__ import annotations

import os
import random
from pathlib import Path

from mcp_background_job.capture import Ingester, spool_paths
from mcp_background_job.config import Settings
from mcp_background_job.db import utcnow
from mcp_background_job.jobs import ServerInstance, Stream
from mcp_background_job.store import Store

JOB = "abc000000001"


async def _setup(store: Store) -> None:
    await store.register_server(
        ServerInstance("srv000000001", 1, None, "b", "h", utcnow(), None), version="t"
    )
    await store.create_job(
        job_id=JOB, command="x", cwd="/", shell="/bin/sh", env={}, labels=(),
        timeout_s=None, owner_id="srv000000001",
    )  # fmt: skip


async def _stored(store: Store, stream: Stream = Stream.STDOUT) -> bytes:
    chunks = await store.read_stream(JOB, stream, 0, 1 << 40)
    return b"".join(c.data for c in chunks)


async def test_bytes_are_stored_exactly_and_spool_removed(settings: Settings, store: Store) -> None:
    await _setup(store)
    ing = Ingester(settings, store)
    fds = ing.create_spool(JOB)
    data = random.Random(1).randbytes(1_500_000)  # binary, no line structure
    for i in range(0, len(data), 100_000):
        os.write(fds[Stream.STDOUT], data[i : i + 100_000])
        if i % 300_000 == 0:
            await ing.flush(JOB)
    os.write(fds[Stream.STDERR], b"no newline at the end")
    for fd in fds.values():
        os.close(fd)
    await ing.finish(JOB)
    assert await _stored(store) == data
    assert await _stored(store, Stream.STDERR) == b"no newline at the end"
    job = await store.get_job(JOB)
    assert (job.stdout_bytes, job.stdout_stored, job.stdout_dropped) == (len(data), len(data), 0)
    assert not any(p.exists() for p in spool_paths(settings.spool_path, JOB).values())


async def test_output_limit_keeps_head_and_recent_tail(tmp_path: Path) -> None:
    limit = 64 * 1024
    settings = Settings(db=tmp_path / "jobs.db", max_output_bytes=limit, chunk_bytes=4096)
    store = Store(settings.db)
    await store.open()
    try:
        await _setup(store)
        ing = Ingester(settings, store)
        fds = ing.create_spool(JOB)
        data = b"".join(b"%07d\n" % i for i in range(200_000))  # 1.6 MB
        # Slow writer (trimmed as it goes), then a burst (skipped unread).
        for i in range(0, 400_000, 20_000):
            os.write(fds[Stream.STDOUT], data[i : i + 20_000])
            await ing.flush(JOB)
        os.write(fds[Stream.STDOUT], data[400_000:])
        await ing.finish(JOB)
        for fd in fds.values():
            os.close(fd)
        job = await store.get_job(JOB)
        stored = await _stored(store)
        assert job.stdout_bytes == len(data)
        assert job.stdout_stored == len(stored) <= limit
        assert job.stdout_stored + job.stdout_dropped == len(data)
        assert stored[: limit // 4] == data[: limit // 4]
        chunks = await store.read_stream(JOB, Stream.STDOUT, limit // 4, 1 << 40)
        tail = b"".join(c.data for c in chunks)
        assert data.endswith(tail) and len(tail) > limit // 2
    finally:
        await store.close()


async def test_adopt_stores_the_rest_after_a_crash(settings: Settings, store: Store) -> None:
    await _setup(store)
    crashed = Ingester(settings, store)
    fds = crashed.create_spool(JOB)
    os.write(fds[Stream.STDOUT], b"before the crash\n")
    await crashed.flush(JOB)
    os.write(fds[Stream.STDOUT], b"written while no server ran\n")
    os.write(fds[Stream.STDERR], b"err\n")
    for fd in fds.values():
        os.close(fd)
    # The crashed ingester is simply abandoned; a new one resumes from the stored counters.
    job = await store.get_job(JOB)
    await Ingester(settings, store).adopt(job)
    assert await _stored(store) == b"before the crash\nwritten while no server ran\n"
    assert await _stored(store, Stream.STDERR) == b"err\n"
    job = await store.get_job(JOB)
    assert job.stdout_bytes == job.stdout_stored == 45


async def test_adopt_without_spool_files(settings: Settings, store: Store) -> None:
    await _setup(store)
    await Ingester(settings, store).adopt(await store.get_job(JOB))
    assert await _stored(store) == b""


async def test_stored_prefix_of_a_spool_file_is_freed_on_disk(
    settings: Settings, store: Store
) -> None:
    await _setup(store)
    ing = Ingester(settings, store)
    fds = ing.create_spool(JOB)
    path = spool_paths(settings.spool_path, JOB)[Stream.STDOUT]
    for _ in range(8):
        os.write(fds[Stream.STDOUT], b"x" * 1_000_000)
        await ing.flush(JOB)
        await ing.flush(JOB)
    await ing.flush(JOB)
    st = path.stat()
    assert st.st_size == 8_000_000
    assert st.st_blocks * 512 < 2_500_000  # at most the not-yet-freed remainder
    for fd in fds.values():
        os.close(fd)
    await ing.finish(JOB)
    assert len(await _stored(store)) == 8_000_000
