"""The storage gateway on a real migrated database: an SQLite file and a PostgreSQL database
(every test that takes ``store`` runs on both)."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import threading
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import pytest
from sqlalchemy.exc import IntegrityError

import mcp_background_job
from mcp_background_job import db
from mcp_background_job.db import AuditEventRow, JobRow, utcnow
from mcp_background_job.errors import (
    InvalidRequest,
    JobNotFound,
    StorageError,
    TransitionConflict,
)
from mcp_background_job.jobs import (
    AUDIT_KINDS,
    AuditEvent,
    AuditKind,
    EndCause,
    JobOptions,
    JobStatus,
    ServerInstance,
    Stream,
)
from mcp_background_job.models import AuditView
from mcp_background_job.store import (
    JobFilter,
    NewChunk,
    OutputBatch,
    QueueState,
    Store,
    StreamCounters,
)

from .conftest import wait_for


@pytest.fixture
async def store(db_target: Path | str) -> Any:
    """This module's store: on each engine (``db_target``)."""
    s = Store(db_target)
    await s.open()
    yield s
    await s.close()


async def _server(store: Store, sid: str = "srv000000001") -> str:
    await store.register_server(
        ServerInstance(sid, 1, None, "boot", "host", utcnow(), None), version="test"
    )
    return sid


async def _job(
    store: Store, job_id: str, command: str = "true", labels: Iterable[str] = ()
) -> None:
    sid = await _server(store, "srv" + job_id)
    await store.create_job(
        job_id=job_id,
        command=command,
        cwd="/",
        shell="/bin/sh",
        env={"A": "1"},
        labels=labels,
        timeout_s=None,
        owner_id=sid,
    )


async def test_create_records_a_queued_event(store: Store) -> None:
    await _job(store, "aaa000000001", labels=["build", "ci", "build"])
    job = await store.get_job("aaa000000001")
    assert job.status is JobStatus.QUEUED
    assert job.labels == ("build", "ci")
    assert job.env == {"A": "1"}
    assert [(e.from_status, e.to_status) for e in job.events] == [(None, JobStatus.QUEUED)]


async def test_transitions_are_guarded_and_logged(store: Store) -> None:
    await _job(store, "aaa000000001")
    await store.transition("aaa000000001", JobStatus.RUNNING, server_id="s", pid=7)
    job = await store.transition("aaa000000001", JobStatus.COMPLETED, server_id="s", exit_code=0)
    assert job.pid == 7 and job.exit_code == 0 and job.ended_at is not None
    assert job == await store.get_job("aaa000000001", events=False)
    job = await store.get_job("aaa000000001")
    assert [e.to_status for e in job.events] == ["queued", "running", "completed"]
    with pytest.raises(TransitionConflict):
        await store.transition("aaa000000001", JobStatus.FAILED, server_id="s")
    with pytest.raises(TransitionConflict):
        await store.transition("aaa000000001", JobStatus.RUNNING, server_id="s")
    with pytest.raises(JobNotFound):
        await store.transition("bbb000000001", JobStatus.RUNNING, server_id="s")
    assert len((await store.get_job("aaa000000001")).events) == 3


async def test_concurrent_transitions_exactly_one_wins(store: Store) -> None:
    await _job(store, "aaa000000001")
    await store.transition("aaa000000001", JobStatus.RUNNING, server_id="s")
    results = await asyncio.gather(
        *(
            store.transition("aaa000000001", status, server_id="s")
            for status in (JobStatus.COMPLETED, JobStatus.KILLED, JobStatus.TIMED_OUT)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert sum(isinstance(r, TransitionConflict) for r in results) == 2


async def test_a_second_process_sees_the_same_data(store: Store) -> None:
    await _job(store, "aaa000000001")
    engine = db.make_sync_engine(store.path, writer=False, pool_size=1)
    with engine.connect() as con:
        assert con.exec_driver_sql("select status from jobs").all() == [("queued",)]
    engine.dispose()


async def test_resolve_id_by_prefix(store: Store) -> None:
    await _job(store, "abc000000001")
    await _job(store, "abc000000002")
    await _job(store, "def000000001")
    assert await store.resolve_id("def") == "def000000001"
    assert await store.resolve_id("ABC000000001") == "abc000000001"
    with pytest.raises(InvalidRequest, match="several"):
        await store.resolve_id("abc")
    for bad in ("zzz", "", "0'; drop table jobs; --"):
        with pytest.raises(JobNotFound):
            await store.resolve_id(bad)


async def test_list_newest_first_with_filters_and_cursor(store: Store) -> None:
    for i in range(7):
        await _job(
            store, f"aaa00000000{i}", command=f"make target{i}", labels=["odd"] if i % 2 else []
        )
    await store.transition("aaa000000003", JobStatus.RUNNING, server_id="s")
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await store.list_jobs(JobFilter(), limit=3, cursor=cursor)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == [f"aaa00000000{i}" for i in reversed(range(7))]
    odd, _ = await store.list_jobs(JobFilter(label="odd"), limit=10)
    assert [j.id for j in odd] == ["aaa000000005", "aaa000000003", "aaa000000001"]
    running, _ = await store.list_jobs(JobFilter(status=JobStatus.RUNNING), limit=10)
    assert [j.id for j in running] == ["aaa000000003"]
    found, _ = await store.list_jobs(JobFilter(command_contains="target4"), limit=10)
    assert [j.id for j in found] == ["aaa000000004"]
    none, _ = await store.list_jobs(JobFilter(command_contains="%"), limit=10)
    assert none == []
    recent, _ = await store.list_jobs(JobFilter(since=utcnow() + timedelta(hours=1)), limit=10)
    assert recent == []
    with pytest.raises(InvalidRequest, match="cursor"):
        await store.list_jobs(JobFilter(), limit=3, cursor="not-a-cursor")


async def test_output_reads_forward_interleaved_and_backwards(store: Store) -> None:
    await _job(store, "aaa000000001")
    await store.write_output(
        [
            OutputBatch(
                "aaa000000001",
                chunks=[
                    NewChunk(Stream.STDOUT, 0, 0, b"one\ntwo\n"),
                    NewChunk(Stream.STDERR, 1, 0, b"warn\n"),
                    NewChunk(Stream.STDOUT, 2, 8, b"three\n"),
                ],
                counters=[
                    StreamCounters(Stream.STDOUT, written=14, stored=14, dropped=0),
                    StreamCounters(Stream.STDERR, written=5, stored=0, dropped=0),
                ],
            )
        ]
    )
    job = await store.get_job("aaa000000001")
    assert (job.stdout_bytes, job.stdout_stored, job.stderr_bytes) == (14, 14, 5)
    chunks = await store.read_stream("aaa000000001", Stream.STDOUT, 5, 100)
    assert [(c.offset, c.data) for c in chunks] == [(5, b"wo\n"), (8, b"three\n")]
    cut = await store.read_stream("aaa000000001", Stream.STDOUT, 2, 3)
    assert [(c.offset, c.data) for c in cut] == [(2, b"e\nt")]
    both = await store.read_interleaved("aaa000000001", {Stream.STDOUT: 4, Stream.STDERR: 0}, 100)
    assert [c.data for c in both] == [b"two\n", b"warn\n", b"three\n"]
    after = await store.read_interleaved("aaa000000001", {Stream.STDOUT: 8, Stream.STDERR: 5}, 100)
    assert [c.data for c in after] == [b"three\n"]
    back = await store.read_backwards("aaa000000001", [Stream.STDOUT], 2, 1000)
    assert [c.data for c in back] == [b"one\ntwo\n", b"three\n"]
    short = await store.read_backwards("aaa000000001", [Stream.STDOUT], 10, 4)
    assert [(c.offset, c.data) for c in short] == [(10, b"ree\n")]


async def test_read_stream_jumps_over_a_dropped_gap(store: Store) -> None:
    await _job(store, "aaa000000001")
    await store.write_output(
        [
            OutputBatch(
                "aaa000000001",
                chunks=[
                    NewChunk(Stream.STDOUT, 0, 0, b"head"),
                    NewChunk(Stream.STDOUT, 1, 100, b"tail"),
                ],
            )
        ]
    )
    chunks = await store.read_stream("aaa000000001", Stream.STDOUT, 4, 10)
    assert [(c.offset, c.data) for c in chunks] == [(100, b"tail")]


async def test_read_around_is_the_page_and_its_context_in_one_read(store: Store) -> None:
    """``read_around`` returns what three ``read_stream`` calls return (issue 13: one trip)."""
    await _job(store, "aaa000000001")
    data = bytes(range(256)) * 8  # 2048 bytes in rows of 300, a gap from 1500 to 1700
    rows = [(o, data[o : o + 300]) for o in range(0, 1500, 300)] + [(1700, data[1700:])]
    await store.write_output(
        [
            OutputBatch(
                "aaa000000001",
                chunks=[NewChunk(Stream.STDOUT, i, o, d) for i, (o, d) in enumerate(rows)],
            )
        ]
    )

    async def one(start: int, n: int) -> list[tuple[int, bytes]]:
        return [
            (c.offset, c.data)
            for c in await store.read_stream("aaa000000001", Stream.STDOUT, start, n)
        ]

    for start, n in ((0, 100), (250, 400), (1000, 400), (1490, 100), (1600, 50), (2000, 100)):
        page, before, after = await store.read_around("aaa000000001", Stream.STDOUT, start, n, 120)
        got = [(c.offset, c.data) for c in page]
        assert got == await one(start, n)
        lo = max(0, start - 120)
        assert [(c.offset, c.data) for c in before] == (await one(lo, start - lo) if start else [])
        end = page[-1].end if page else start
        assert [(c.offset, c.data) for c in after] == await one(end, 120)


async def test_claim_only_once(store: Store) -> None:
    await _job(store, "aaa000000001")
    job = await store.get_job("aaa000000001")
    await _server(store, "newowner0001")
    assert await store.claim(job.id, job.owner_id, "newowner0001")
    assert not await store.claim(job.id, job.owner_id, "newowner0001")


# --- scheduling: priorities, dependencies, orphans -----------------------------------------


async def _queued(store: Store, job_id: str, owner: str, **options: Any) -> None:
    await store.create_job(
        job_id=job_id, command="true", cwd="/", shell="/bin/sh", env={}, labels=(),
        timeout_s=None, owner_id=owner, options=JobOptions(**options),
    )  # fmt: skip


async def _end(store: Store, job_id: str, status: JobStatus, exit_code: int | None) -> None:
    await store.transition(job_id, JobStatus.RUNNING, server_id="s")
    await store.transition(job_id, status, server_id="s", exit_code=exit_code)


async def test_queue_starts_highest_priority_first_then_oldest(store: Store) -> None:
    me = await _server(store)
    for job_id, priority in [("aaa1", 0), ("aaa2", 5), ("aaa3", 0), ("aaa4", 5), ("aaa5", -1)]:
        await _queued(store, job_id.ljust(12, "0"), me, priority=priority)
    state = await store.queue_state(me, limit=10)
    assert [j.id[:4] for j in state.startable] == ["aaa2", "aaa4", "aaa1", "aaa3", "aaa5"]
    assert state.queued == 5 and state.doomed == []
    assert [j.id[:4] for j in (await store.queue_state(me, limit=2)).startable] == ["aaa2", "aaa4"]
    assert (await store.queue_state(me, limit=0)).startable == []
    other = await _server(store, "srv000000002")
    assert (await store.queue_state(other, limit=10)).queued == 0  # only a server's own jobs


async def test_dependencies_hold_a_job_until_they_end(store: Store) -> None:
    me = await _server(store)
    await _queued(store, "dep000000001", me)
    await _queued(store, "dep000000002", me)
    await _queued(store, "waiter000001", me, after=("dep000000001", "dep000000002"))
    job = await store.get_job("waiter000001")
    assert job.after == ("dep000000001", "dep000000002")
    assert job.waiting_on == ("dep000000001", "dep000000002")

    def startable(state: QueueState) -> list[str]:
        return [j.id for j in state.startable]

    assert startable(await store.queue_state(me, 10)) == ["dep000000001", "dep000000002"]
    await _end(store, "dep000000001", JobStatus.COMPLETED, exit_code=0)
    assert (await store.get_job("waiter000001")).waiting_on == ("dep000000002",)
    assert "waiter000001" not in startable(await store.queue_state(me, 10))
    await _end(store, "dep000000002", JobStatus.COMPLETED, exit_code=0)
    assert startable(await store.queue_state(me, 10)) == ["waiter000001"]
    assert (await store.get_job("waiter000001")).waiting_on == ()


async def test_a_dependency_that_did_not_complete_dooms_the_job(store: Store) -> None:
    me = await _server(store)
    await _queued(store, "dep000000001", me)
    await _queued(store, "dep000000002", me)
    await _queued(store, "strict000001", me, after=("dep000000001", "dep000000002"))
    await _queued(store, "lenient00001", me, after=("dep000000001",), run_anyway=True)
    await _end(store, "dep000000001", JobStatus.FAILED, exit_code=2)
    state = await store.queue_state(me, 10)
    # doomed at once, without waiting for the other dependency
    assert state.doomed == [("strict000001", "dependency dep000000001 failed (exit code 2)")]
    assert [j.id for j in state.startable] == ["dep000000002", "lenient00001"]


async def test_dependencies_must_exist(store: Store) -> None:
    me = await _server(store)
    with pytest.raises(InvalidRequest, match="after: no job with id 'nope00000000'"):
        await _queued(store, "waiter000001", me, after=("nope00000000",))
    with pytest.raises(JobNotFound):
        await store.get_job("waiter000001")  # nothing was written


async def test_orphaned_jobs(store: Store) -> None:
    live, dead, stopped = [await _server(store, f"srv00000000{i}") for i in range(3)]
    for owner in (live, dead, stopped):
        await _queued(store, f"q{owner[-4:]}0000000", owner)
        await _queued(store, f"r{owner[-4:]}0000000", owner)
        await store.transition(f"r{owner[-4:]}0000000", JobStatus.RUNNING, server_id=owner)
    await store.mark_server_stopped(stopped)
    ids = [j.id for j in await store.orphaned_jobs([dead])]
    # The dead server's jobs, and the stopped server's: a running job of a server that stopped
    # is one whose end it could not record (its end file tells the next server).
    want = [f"{kind}{owner[-4:]}0000000" for kind in "qr" for owner in (dead, stopped)]
    assert sorted(ids) == sorted(want)


async def test_an_interrupt_note_gives_way_to_a_stop_request(store: Store) -> None:
    await _job(store, "aaa000000001")
    await store.transition("aaa000000001", JobStatus.RUNNING, server_id="s")
    job = await store.request_end("aaa000000001", EndCause.INTERRUPT)
    assert job.end_cause is EndCause.INTERRUPT
    job = await store.request_end("aaa000000001", EndCause.KILL)
    assert job.end_cause is EndCause.KILL
    for cause in (EndCause.INTERRUPT, EndCause.TIMEOUT):  # the first real cause stays
        assert (await store.request_end("aaa000000001", cause)).end_cause is EndCause.KILL


async def _hold_writer(writer: Any) -> tuple[asyncio.Future[Any], threading.Event]:
    """Keep the writer thread busy in one unit until the returned event is set."""
    entered, gate = threading.Event(), threading.Event()

    def hold(_conn: Any) -> None:
        entered.set()
        gate.wait(10)

    blocked = asyncio.ensure_future(writer.run(hold))
    await wait_for(entered.is_set)
    return blocked, gate


def _writer(tmp_path: Any) -> Any:
    from mcp_background_job.db import make_sync_engine
    from mcp_background_job.store.writer import Writer

    engine = make_sync_engine(tmp_path / "w.db")
    return Writer(engine), engine


async def test_writer_groups_commits_and_an_error_undoes_only_its_unit(tmp_path: Any) -> None:
    from sqlalchemy import text

    writer, engine = _writer(tmp_path)
    writer.start()
    await writer.run(lambda c: c.exec_driver_sql("CREATE TABLE t (x INTEGER)"))
    blocked, gate = await _hold_writer(writer)

    def insert(x: int) -> Any:
        def work(c: Any) -> int:
            c.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
            if x == 5:
                raise ValueError("unit 5 fails after its insert")
            return x

        return work

    units = [asyncio.ensure_future(writer.run(insert(x))) for x in range(10)]
    await asyncio.sleep(0)  # the tasks run once: all ten units are queued, as one group
    gate.set()
    await blocked
    results = await asyncio.gather(*units, return_exceptions=True)
    assert isinstance(results[5], ValueError)
    assert [r for i, r in enumerate(results) if i != 5] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    rows = await writer.run(lambda c: c.exec_driver_sql("SELECT x FROM t ORDER BY x").all())
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    await writer.close()
    engine.dispose()


async def test_writer_finishes_a_cancelled_callers_write_and_refuses_after_close(
    tmp_path: Any,
) -> None:

    writer, engine = _writer(tmp_path)
    writer.start()
    await writer.run(lambda c: c.exec_driver_sql("CREATE TABLE t (x INTEGER)"))
    blocked, gate = await _hold_writer(writer)
    sql = "INSERT INTO t VALUES (1)"
    call = asyncio.ensure_future(writer.run(lambda c: c.exec_driver_sql(sql)))
    await asyncio.sleep(0)  # queued
    call.cancel()
    gate.set()
    await blocked
    rows = await writer.run(lambda c: c.exec_driver_sql("SELECT count(*) FROM t").scalar())
    assert rows == 1
    await writer.close()
    with pytest.raises(StorageError, match="closed"):
        await writer.run(lambda c: None)
    engine.dispose()


# --- one definition per record; typed writes -------------------------------------------------


async def test_the_audit_record_is_one_definition_stored_and_shown_whole(store: Store) -> None:
    """``AuditEvent`` is the record: the table has its columns, the tool's view its fields, and
    an event with every field set comes back from the store (and into the view) unchanged."""
    event_fields = [f.name for f in dataclasses.fields(AuditEvent)]
    assert set(event_fields) == {c.name for c in AuditEventRow.__table__.columns}
    assert set(AuditView.model_fields) == set(event_fields)
    assert get_args(AuditView.model_fields["kind"].annotation) == get_args(AuditKind)
    assert get_args(AuditKind) == AUDIT_KINDS and db.AUDIT_KINDS is AUDIT_KINDS
    await _job(store, "aaa000000001")
    for kind in AUDIT_KINDS:
        given = AuditEvent(
            kind=kind, server_id="srv1", decision="refused", rule="deny:rm", matched="rm -rf",
            job_id="aaa000000001", command="rm -rf /", cwd="/tmp", client_name="c",
            client_version="1.0", session_id="sess", detail={"n": 3, "flag": True},
        )  # fmt: skip
        recorded = await store.record_audit(given)
        assert recorded.id is not None and recorded.at is not None
        assert dataclasses.replace(recorded, id=None, at=None) == given
        (listed,) = await store.list_audit(kind=kind, limit=1)
        assert listed == recorded
        view = AuditView.of(listed).model_dump()
        assert view == {f: getattr(listed, f) for f in event_fields}
    engine = db.make_sync_engine(store.path, pool_size=1)
    with pytest.raises(IntegrityError), engine.begin() as con:
        # The CHECK constraint holds the column to the same kinds.
        con.exec_driver_sql(
            "insert into audit_events (at, server_id, kind, detail) "
            "values ('2026-01-01 00:00:00', 's', 'nonsense', '{}')"
        )
    engine.dispose()


async def test_output_counters_are_typed_per_stream(store: Store) -> None:
    """A counter update names a stream and its three counters; it leaves the other stream."""
    await _job(store, "aaa000000001")
    batch = OutputBatch("aaa000000001")
    batch.counters.append(StreamCounters(Stream.STDOUT, written=10, stored=6, dropped=4))
    await store.write_output([batch])
    batch = OutputBatch("aaa000000001", counters=[StreamCounters(Stream.STDERR, 3, 2, 1)])
    await store.write_output([batch])
    job = await store.get_job("aaa000000001")
    assert (job.stdout_bytes, job.stdout_stored, job.stdout_dropped) == (10, 6, 4)
    assert (job.stderr_bytes, job.stderr_stored, job.stderr_dropped) == (3, 2, 1)


async def test_transition_records_typed_values_and_none_leaves_them(store: Store) -> None:
    await _job(store, "aaa000000001")
    at = utcnow() - timedelta(seconds=5)
    job = await store.transition(
        "aaa000000001", JobStatus.RUNNING, server_id="s", pid=42, pid_start=7, boot_id="b",
        started_at=at,
    )  # fmt: skip
    assert (job.pid, job.pid_start, job.boot_id, job.started_at) == (42, 7, "b", at)
    ended = await store.transition(
        "aaa000000001", JobStatus.FAILED, server_id="s", reason="why", signal="SIGTERM"
    )
    assert ended == await store.get_job("aaa000000001", events=False)
    assert (ended.pid, ended.started_at, ended.exit_code, ended.signal) == (42, at, None, "SIGTERM")
    assert ended.reason == "why" and ended.ended_at is not None and ended.ended_at > at
    params = inspect.signature(Store.transition).parameters
    assert "values" not in params
    assert all("Mapping" not in str(p.annotation) for p in params.values())


def test_capture_and_runner_do_not_name_the_jobs_columns() -> None:
    """Only the store names columns: the modules that write output and status changes pass
    typed values (a dict keyed by column names, or a name built from a stream, would be a
    second place that knows the table)."""
    src = Path(mcp_background_job.__file__).parent
    columns = {c.name for c in JobRow.__table__.columns} - {"id", "command", "status", "signal"}
    modules = [*src.glob("capture*.py"), *src.glob("runner*.py"), *src.glob("runner/*.py")]
    assert modules
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                assert not keys & columns, f"{path.name}:{node.lineno} names {keys & columns}"
            if isinstance(node, ast.JoinedStr):
                tail = "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
                assert tail not in ("_bytes", "_stored", "_dropped"), f"{path.name}:{node.lineno}"
