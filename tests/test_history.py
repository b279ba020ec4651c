"""History queries of the store (stats, change polling, pruning) and automatic retention, on real
databases: the fixture generator's old data and real jobs of a real App."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from mcp_background_job.app import App
from mcp_background_job.config import Settings
from mcp_background_job.db import utcnow
from mcp_background_job.jobs import JobStatus
from mcp_background_job.store import JobFilter, Store

from .conftest import wait_for
from .fixtures.make_db import JOBS, NOW, make_db
from .fixtures.schema import assert_search_in_sync

FIXTURE_IDS = {j.id for j in JOBS}
STORED = {j.id: len(j.stdout) + len(j.stderr) for j in JOBS}


@pytest.fixture
async def old_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(make_db(tmp_path / "jobs.db", "0001"))
    await store.open()
    yield store
    await store.close()


def _ids(path: Path | str) -> set[str]:
    assert isinstance(path, Path), "an SQLite file (these tests use SQLite)"
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("select id from jobs")}
    finally:
        con.close()


async def test_prune_candidates_by_age_size_and_kind(old_store: Store) -> None:
    now = utcnow()
    by_age = await old_store.prune_candidates(ended_before=now - timedelta(days=30))
    assert [c.job_id for c in by_age] == ["aaaa00000001", "aaaa00000002"]  # oldest first
    kept = await old_store.prune_candidates(ended_before=now - timedelta(days=30), keep_failed=True)
    assert [c.job_id for c in kept] == ["aaaa00000001"]
    total = sum(STORED.values())
    just_over = await old_store.prune_candidates(max_output_bytes=total - 1)
    assert [c.job_id for c in just_over] == ["aaaa00000001"]
    # Everything must go: still never the running job, whatever its age.
    everything = await old_store.prune_candidates(ended_before=now, max_output_bytes=0)
    assert {c.job_id for c in everything} == FIXTURE_IDS - {"dddd00000005"}
    assert await old_store.prune_candidates(max_output_bytes=total) == []


async def test_delete_jobs_in_small_batches_with_their_rows(old_store: Store) -> None:
    result = await old_store.delete_jobs(["aaaa00000001", "aaaa00000002"], batch_rows=1)
    assert (result.jobs, result.chunks) == (2, 5)
    assert result.output_bytes == STORED["aaaa00000001"] + STORED["aaaa00000002"]
    con = sqlite3.connect(old_store.path)
    try:
        for table in ("job_events", "job_labels", "output_chunks"):
            left = con.execute(f"select count(*) from {table} where job_id like 'aaaa%'")
            assert left.fetchone() == (0,), table
    finally:
        con.close()
    assert _ids(old_store.path) == FIXTURE_IDS - {"aaaa00000001", "aaaa00000002"}
    assert_search_in_sync(old_store.path)


async def test_active_jobs_are_never_deleted(app: App) -> None:
    running = await app.execute("sleep 30")
    queued = await app.store.create_job(
        job_id="0ueued000001", command="true", cwd="/", shell="/bin/sh", env={}, labels=(),
        timeout_s=None, owner_id=app.runner.server_id,
    )  # fmt: skip
    con = sqlite3.connect(app.settings.db)
    with con:
        con.execute("update jobs set created_at = '2001-01-01 00:00:00.000000'")
    con.close()
    candidates = await app.store.prune_candidates(ended_before=utcnow(), max_output_bytes=0)
    assert candidates == []
    result = await app.store.delete_jobs([running.id, queued.id])
    assert result.jobs == 0
    assert {running.id, queued.id} <= _ids(app.settings.db)
    await app.kill(running.id, "KILL", 0)


async def test_stats_and_status_changes(old_store: Store) -> None:
    stats = await old_store.stats(longest=2)
    assert stats.jobs == len(JOBS)
    assert dict(stats.by_status) == {
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 1,
        JobStatus.KILLED: 1,
        JobStatus.TIMED_OUT: 1,
        JobStatus.RUNNING: 1,
    }
    assert stats.stored_bytes == sum(STORED.values())
    assert stats.dropped_bytes == 1000
    assert stats.page_count > 0 and stats.page_size > 0
    assert [j.id for j in stats.longest] == ["dddd00000005", "cccc00000004"]
    changes, newest = await old_store.status_changes(0)
    assert newest == changes[-1].event_id == len(changes)
    assert sum(c.created for c in changes) == len(JOBS)
    later, _ = await old_store.status_changes(changes[-3].event_id)
    assert later == changes[-2:]


async def test_list_filters(old_store: Store) -> None:
    async def ids(**kw: object) -> list[str]:
        jobs, _ = await old_store.list_jobs(JobFilter(**kw), limit=50)  # type: ignore[arg-type]
        return [j.id for j in jobs]

    assert await ids(exit_code=3) == ["aaaa00000002"]
    assert await ids(statuses=frozenset({JobStatus.KILLED, JobStatus.TIMED_OUT})) == [
        "cccc00000004",
        "bbbb00000003",
    ]
    created = NOW - timedelta(days=50)  # the first fixture job's creation
    assert await ids(until=created + timedelta(seconds=90)) == ["aaaa00000002", "aaaa00000001"]


async def test_retention_prunes_in_the_background_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcp_background_job")
    path = make_db(tmp_path / "jobs.db", "0001")
    settings = Settings(
        db=path, subreaper=False, retention_max_age="30d", retention_interval_s=0.05
    )
    app = await App.open(settings)
    try:
        await wait_for(lambda: _ids(path) == FIXTURE_IDS - {"aaaa00000001", "aaaa00000002"})
        # The next passes find nothing more: the running job is never a candidate.
        await wait_for(lambda: "retention_pruned jobs=2" in caplog.text)
        fresh = await app.execute("echo fresh")
        assert await app.runner.wait_end(fresh.id, 15)
        assert fresh.id in _ids(path)
    finally:
        await app.close()
    assert "dddd00000005" in _ids(path)
    assert_search_in_sync(path)


async def test_retention_by_total_output_size(tmp_path: Path) -> None:
    path = make_db(tmp_path / "jobs.db", "0001")
    limit = sum(STORED.values()) - STORED["aaaa00000001"]
    settings = Settings(db=path, subreaper=False, retention_max_output_bytes=limit)
    before = _ids(path)
    app = await App.open(settings)
    try:
        # The server applies retention right after start, in the background; a second pass
        # finds nothing more to delete.
        await wait_for(lambda: "aaaa00000001" not in _ids(path), timeout=30)
        assert _ids(path) == before - {"aaaa00000001"}
        result = await app.runner.apply_retention()
        assert (result.jobs, result.output_bytes) == (0, 0)
    finally:
        await app.close()
    assert_search_in_sync(path)
