"""Upkeep: status changes for subscribers, totals, pruning, vacuum, and the audit log.

Plain functions of a ``Connection``; pruning runs as many short transactions (the ``Store``
facade loops), so other writers wait at most one batch.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select

from ..db import AuditEventRow, JobEventRow, JobRow, OutputChunkRow
from ..db.dialects import page_stats, run_seconds
from ..jobs import TERMINAL, AuditEvent, JobStatus
from .records import JOB_COLUMNS, PruneCandidate, Stats, StatusChange, audit_of, job_of

#: Rows deleted per transaction when pruning: deleting a 1 GiB job this way kept each
#: transaction under ~260 ms, so tool calls of every server wait at most that long.
PRUNE_BATCH_ROWS = 1000
#: ``--keep-failed``: jobs that failed or ran out of time are kept.
FAILURES = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT})
#: Page counts read for ``stats`` (constant names: nothing from outside goes into the SQL).


def status_changes(conn: Connection, after: int, limit: int) -> tuple[list[StatusChange], int]:
    """See ``Store.status_changes``."""
    e = JobEventRow
    rows = conn.execute(
        select(e.id, e.job_id, e.to_status, e.from_status)
        .where(e.id > after)
        .order_by(e.id)
        .limit(limit)
    ).all()
    top = conn.execute(select(func.max(e.id))).scalar_one_or_none() or 0
    return [StatusChange(i, j, JobStatus(to), frm is None) for i, j, to, frm in rows], top


def stats(conn: Connection, longest: int) -> Stats:
    """See ``Store.stats``."""
    j = JobRow
    duration = run_seconds(j.started_at, j.ended_at)
    counts = conn.execute(select(j.status, func.count()).group_by(j.status)).all()
    totals = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(j.stdout_bytes + j.stderr_bytes), 0),
            func.coalesce(func.sum(j.stdout_stored + j.stderr_stored), 0),
            func.coalesce(func.sum(j.stdout_dropped + j.stderr_dropped), 0),
            func.min(j.created_at),
            func.max(j.created_at),
        )
    ).one()
    rows = conn.execute(
        select(*JOB_COLUMNS)
        .where(j.started_at.is_not(None))
        .order_by(duration.desc())
        .limit(longest)
    )
    slow = tuple(job_of(r) for r in rows)
    pages = page_stats(conn)
    order = {s: i for i, s in enumerate(JobStatus)}
    by_status = tuple(sorted(((JobStatus(s), n) for s, n in counts), key=lambda x: order[x[0]]))
    return Stats(
        jobs=totals[0],
        by_status=by_status,
        # int(): PostgreSQL's sum() of bigint is numeric (a Decimal, which JSON refuses)
        written_bytes=int(totals[1]),
        stored_bytes=int(totals[2]),
        dropped_bytes=int(totals[3]),
        first_created=totals[4],
        last_created=totals[5],
        page_size=pages[0],
        page_count=pages[1],
        free_pages=pages[2],
        longest=slow,
    )


def _candidate(r: Any) -> PruneCandidate:
    """A row of ``prune_candidates``' query (``ended_at`` is never NULL there)."""
    return PruneCandidate(r.id, JobStatus(r.status), r.ended_at, r.stored)


def prune_candidates(
    conn: Connection,
    ended_before: datetime | None,
    max_output_bytes: int | None,
    keep_failed: bool,
) -> list[PruneCandidate]:
    """See ``Store.prune_candidates``."""
    j = JobRow
    kept = TERMINAL - FAILURES if keep_failed else TERMINAL
    stored = (j.stdout_stored + j.stderr_stored).label("stored")
    base = select(j.id, j.status, j.ended_at, stored).where(
        j.status.in_(sorted(kept)), j.ended_at.is_not(None)
    )
    chosen: dict[str, PruneCandidate] = {}
    if ended_before is not None:
        for r in conn.execute(base.where(j.ended_at < ended_before)):
            chosen[r.id] = _candidate(r)
    if max_output_bytes is not None:
        total = conn.execute(
            select(func.coalesce(func.sum(j.stdout_stored + j.stderr_stored), 0))
        ).scalar_one()
        excess = total - max_output_bytes - sum(c.stored_bytes for c in chosen.values())
        page = base.order_by(j.ended_at, j.id).limit(PRUNE_BATCH_ROWS)
        offset = 0
        while excess > 0:
            rows = conn.execute(page.offset(offset)).all()
            if not rows:
                break
            offset += len(rows)
            for r in rows:
                if excess <= 0:
                    break
                if r.id not in chosen:
                    chosen[r.id] = _candidate(r)
                    excess -= r.stored
    return sorted(chosen.values(), key=lambda c: (c.ended_at, c.job_id))


def delete_output_batch(conn: Connection, job_ids: list[str], batch_rows: int) -> int:
    """Delete up to ``batch_rows`` output rows of those of the jobs that ended; how many."""
    j, c = JobRow, OutputChunkRow
    ended = select(j.id).where(j.id.in_(job_ids), j.status.in_(sorted(TERMINAL)))
    some_rows = delete(c).where(c.id.in_(select(c.id).where(c.job_id.in_(ended)).limit(batch_rows)))
    return conn.execute(some_rows).rowcount


def delete_ended(conn: Connection, job_ids: list[str]) -> tuple[int, int]:
    """Delete those of the jobs that ended (their events and labels cascade); returns the output
    bytes they held and how many were deleted."""
    j = JobRow
    ended = and_(j.id.in_(job_ids), j.status.in_(sorted(TERMINAL)))
    size = conn.execute(
        select(func.coalesce(func.sum(j.stdout_stored + j.stderr_stored), 0)).where(ended)
    ).scalar_one()
    return size, conn.execute(delete(j).where(ended)).rowcount


def driver_sql(conn: Connection, sql: str) -> None:
    """Run ``sql`` on the driver connection itself, outside any transaction (VACUUM and
    checkpoints cannot run inside one; SQLAlchemy would begin one first)."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    raw.execute(sql).close()


def vacuum(conn: Connection) -> bool:
    """See ``Store.vacuum`` (outside any transaction)."""
    if conn.dialect.name == "postgresql":
        # VACUUM cannot run in a transaction block: autocommit on this very connection (a
        # second one would wait forever for the command line's pool of one).
        conn.rollback()
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.autocommit = True
        try:
            raw.execute("VACUUM")
        finally:
            raw.autocommit = False
        return True
    driver_sql(conn, "VACUUM")
    raw = conn.connection.dbapi_connection
    assert raw is not None
    busy, log_frames, copied = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return not busy and log_frames == copied


def insert_audit(conn: Connection, row: dict[str, Any]) -> int | None:
    """Append one audit row (see ``records.audit_values``); its id."""
    result = conn.execute(insert(AuditEventRow), row)
    return result.inserted_primary_key[0] if result.inserted_primary_key else None


def list_audit(
    conn: Connection,
    *,
    kind: str | None,
    since: datetime | None,
    job_id: str | None,
    limit: int,
    before_id: int | None,
) -> list[AuditEvent]:
    """Audit events newest first (page on with ``before_id`` = the last id returned)."""
    a = AuditEventRow
    query = select(a)
    if kind is not None:
        query = query.where(a.kind == kind)
    if since is not None:
        query = query.where(a.at >= since)
    if job_id is not None:
        query = query.where(a.job_id == job_id)
    if before_id is not None:
        query = query.where(a.id < before_id)
    rows = conn.execute(query.order_by(a.id.desc()).limit(limit)).all()
    return [audit_of(r) for r in rows]
