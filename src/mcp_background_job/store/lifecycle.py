"""Jobs and the queue: create, load, guarded status changes, owners and servers.

Plain functions of a ``Connection``, run by the ``Store`` facade on the writer thread (writes)
or a reader thread (reads), each in one transaction. A status change is a compare-and-set on
the status with its event row, in the caller's transaction (``transition``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    true,
    union,
    update,
)
from sqlalchemy.orm import aliased

from ..db import (
    AuditEventRow,
    JobDependencyRow,
    JobEventRow,
    JobLabelRow,
    JobRow,
    ServerRow,
    utcnow,
)
from ..errors import InvalidRequest, JobNotFound, TransitionConflict
from ..jobs import (
    ACTIVE,
    TERMINAL,
    EndCause,
    Job,
    JobStatus,
    ServerInstance,
    decide_outcome,
    dependency_failure,
    sources_of,
)
from .records import (
    JOB_COLUMNS,
    Change,
    QueueState,
    event_of,
    job_of,
    job_row,
    server_of,
    server_row,
    transition_values,
)

_DEP = aliased(JobRow, name="dep")


def _has_dependency(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """True for a job with a dependency (``_DEP``) meeting ``conditions``."""
    return exists(
        select(1)
        .select_from(JobDependencyRow)
        .join(_DEP, _DEP.id == JobDependencyRow.depends_on)
        .where(JobDependencyRow.job_id == JobRow.id, *conditions)
    )


# The statements run for every job (loads and status changes) are built once, with bind
# parameters: building one per call cost more than running it (its cache key is computed anew
# each time; a built statement keeps its own).
_LOAD_JOB = select(*JOB_COLUMNS).where(JobRow.id == bindparam("job_id"))
_WAITING_ON = (
    select(_DEP.id)
    .select_from(JobDependencyRow)
    .join(_DEP, _DEP.id == JobDependencyRow.depends_on)
    .where(JobDependencyRow.job_id == bindparam("job_id"), _DEP.status.in_(ACTIVE))
    .order_by(_DEP.id)
)
_EVENTS = (
    select(JobEventRow).where(JobEventRow.job_id == bindparam("job_id")).order_by(JobEventRow.id)
)
#: The SET clause comes from the parameters given with it (``b_`` names are the WHERE's).
_SET_STATUS = update(JobRow).where(
    JobRow.id == bindparam("b_id"), JobRow.status == bindparam("b_from")
)


def load(conn: Connection, job_id: str, events: bool = True) -> Job:
    """The job with its events (``events``) and the dependencies it still waits for."""
    key = {"job_id": job_id}
    row = conn.execute(_LOAD_JOB, key).first()
    if row is None:
        raise JobNotFound(job_id)
    waiting_on: tuple[str, ...] = ()
    if row._mapping["status"] == JobStatus.QUEUED and row._mapping["after"] != "[]":
        waiting_on = tuple(conn.execute(_WAITING_ON, key).scalars().all())
    evs = [event_of(e) for e in conn.execute(_EVENTS, key)] if events else []
    return job_of(row, evs, waiting_on)


def transition(
    conn: Connection,
    job: Job,
    to: JobStatus,
    *,
    server_id: str | None,
    reason: str | None = None,
    only_from: frozenset[JobStatus] | None = None,
    change: Change = Change(),  # noqa: B008 (frozen)
) -> Job:
    """Move ``job`` (as read in this transaction) to ``to``, with its event row."""
    allowed = sources_of(to) & (only_from if only_from is not None else sources_of(to))
    if job.status not in allowed:
        raise TransitionConflict(
            f"job {job.id} is {job.status}; cannot move to {to} "
            f"(allowed from: {', '.join(sorted(allowed))})"
        )
    now = utcnow()
    values = transition_values(to, change, reason, now)
    result = conn.execute(_SET_STATUS, {"b_id": job.id, "b_from": job.status, **values})
    if result.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; never overwrite
        raise TransitionConflict(f"job {job.id} changed status during the update")
    conn.execute(
        insert(JobEventRow),
        {
            "job_id": job.id,
            "at": now,
            "from_status": job.status,
            "to_status": to,
            "reason": reason,
            "server_id": server_id,
        },
    )
    return replace(job, **values)


def create(conn: Connection, job: Job, audit: dict[str, Any] | None = None) -> None:
    """Insert a new queued job with its labels, dependencies, first event and (``audit``) its
    audit row. Every dependency must exist (``InvalidRequest`` otherwise)."""
    after = list(job.after)
    if after:
        found = set(conn.execute(select(JobRow.id).where(JobRow.id.in_(after))).scalars().all())
        missing = [d for d in after if d not in found]
        if missing:
            raise InvalidRequest(
                f"after: no job with id {', '.join(map(repr, missing))}. Give ids of "
                "existing jobs (see `list`)."
            )
    # Parameters rather than .values(): the statement's cache key stays the same.
    conn.execute(insert(JobRow), job_row(job))
    if job.labels:
        conn.execute(
            insert(JobLabelRow),
            [
                {"job_id": job.id, "label": lb, "job_created_at": job.created_at}
                for lb in job.labels
            ],
        )
    if after:
        conn.execute(insert(JobDependencyRow), [{"job_id": job.id, "depends_on": d} for d in after])
    conn.execute(
        insert(JobEventRow),
        {
            "job_id": job.id,
            "at": job.created_at,
            "to_status": job.status,
            "server_id": job.owner_id,
        },
    )
    if audit is not None:
        conn.execute(insert(AuditEventRow), audit)


def mark_start_attempt(conn: Connection, job_id: str, server_id: str, boot_id: str) -> Job:
    """See ``Store.mark_start_attempt``."""
    stmt = (
        update(JobRow)
        .where(
            JobRow.id == job_id,
            JobRow.status == JobStatus.QUEUED,
            JobRow.owner_id == server_id,
            JobRow.start_attempted_at.is_(None),
        )
        .values(start_attempted_at=bindparam("at"), boot_id=boot_id)
    )
    if conn.execute(stmt, {"at": utcnow()}).rowcount != 1:
        job = load(conn, job_id, events=False)
        raise TransitionConflict(
            f"job {job_id} is {job.status} (owner {job.owner_id}); it cannot be started "
            "by this server"
        )
    return load(conn, job_id, events=False)


def record_exit(
    conn: Connection,
    job_id: str,
    returncode: int,
    ended_at: datetime,
    *,
    server_id: str,
    disk_full: bool,
) -> Job:
    """See ``Store.record_exit``."""
    job = load(conn, job_id, events=False)
    if job.status is JobStatus.QUEUED and job.start_attempted_at is not None:
        job = transition(
            conn,
            job,
            JobStatus.RUNNING,
            server_id=server_id,
            only_from=frozenset({JobStatus.QUEUED}),
            change=Change(started_at=job.start_attempted_at),
        )
    out = decide_outcome(returncode, job.end_cause, job.idle_timeout_s, disk_full=disk_full)
    return transition(
        conn,
        job,
        out.status,
        server_id=server_id,
        reason=out.reason,
        only_from=frozenset({JobStatus.RUNNING}),
        change=Change(exit_code=out.exit_code, signal=out.signal, ended_at=ended_at),
    )


def request_end(conn: Connection, job_id: str, cause: EndCause) -> Job:
    """See ``Store.request_end``."""
    unset: ColumnElement[bool] = JobRow.end_cause.is_(None)
    if cause is not EndCause.INTERRUPT:
        unset = or_(unset, JobRow.end_cause == EndCause.INTERRUPT)
    conn.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), unset)
        .values(end_cause=cause)
    )
    return load(conn, job_id)


def claim(conn: Connection, job_id: str, from_owner: str | None, to_owner: str) -> bool:
    """Take over an active job of a dead server; False if another server took it first."""
    owner = JobRow.owner_id.is_(None) if from_owner is None else JobRow.owner_id == from_owner
    stmt = (
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status.in_(ACTIVE), owner)
        .values(owner_id=to_owner)
    )
    return conn.execute(stmt).rowcount == 1


def note(conn: Connection, job_id: str, reason: str, server_id: str, owner: str) -> bool:
    """An event row on a running job of ``owner`` without a status change (detach: "left
    running", "adopted"); False if it is not running there any more."""
    status = conn.execute(
        select(JobRow.status).where(JobRow.id == job_id, JobRow.owner_id == owner)
    ).scalar_one_or_none()
    if status != JobStatus.RUNNING:
        return False
    conn.execute(
        insert(JobEventRow),
        {
            "job_id": job_id,
            "at": utcnow(),
            "from_status": status,
            "to_status": status,
            "reason": reason,
            "server_id": server_id,
        },
    )
    return True


def adopt(conn: Connection, job_id: str, from_owner: str | None, to_owner: str) -> bool:
    """Claim a running detached job of a server that is gone, with its "adopted" event, in one
    transaction: a compare-and-set on the owner, so one server wins."""
    if not claim(conn, job_id, from_owner, to_owner):
        return False
    return note(conn, job_id, f"adopted from server {from_owner}", to_owner, to_owner)


def queue_state(
    conn: Connection, owner_id: str, limit: int, starting: frozenset[str]
) -> QueueState:
    """See ``Store.queue_state``."""
    # A job with a start intent is being started, or may have run: never started again.
    own = and_(
        JobRow.owner_id == owner_id,
        JobRow.status == JobStatus.QUEUED,
        JobRow.start_attempted_at.is_(None),
    )
    if starting:
        own = and_(own, JobRow.id.not_in(sorted(starting)))
    startable: list[Job] = []
    if limit > 0:
        unfinished = _has_dependency(_DEP.status.in_(ACTIVE))
        unsuccessful = _has_dependency(_DEP.status != JobStatus.COMPLETED)
        rows = conn.execute(
            select(*JOB_COLUMNS)
            .where(own, ~unfinished, or_(JobRow.run_anyway, ~unsuccessful))
            .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
            .limit(limit)
        )
        startable = [job_of(r) for r in rows]
    doomed: dict[str, str] = {}
    for job_id, dep_id, status, exit_code, sig, reason in conn.execute(
        select(JobRow.id, _DEP.id, _DEP.status, _DEP.exit_code, _DEP.signal, _DEP.reason)
        .select_from(JobRow)
        .join(JobDependencyRow, JobDependencyRow.job_id == JobRow.id)
        .join(_DEP, _DEP.id == JobDependencyRow.depends_on)
        .where(own, JobRow.run_anyway.is_(False), _DEP.status.in_(TERMINAL - {JobStatus.COMPLETED}))
        .order_by(JobRow.created_at, _DEP.id)
    ):
        doomed.setdefault(
            job_id, dependency_failure(dep_id, JobStatus(status), exit_code, sig, reason)
        )
    queued = conn.execute(select(func.count()).select_from(JobRow).where(own)).scalar_one()
    return QueueState(startable, list(doomed.items()), queued)


def get_jobs(conn: Connection, job_ids: Iterable[str]) -> list[Job]:
    """The jobs of these ids that exist, without events."""
    query = select(*JOB_COLUMNS).where(JobRow.id.in_(sorted(set(job_ids))))
    return [job_of(r) for r in conn.execute(query)]


def ended_among(conn: Connection, job_ids: Sequence[str]) -> set[str]:
    """Those of the jobs that have ended, or no longer exist (pruned)."""
    query = select(JobRow.id, JobRow.status).where(JobRow.id.in_(job_ids))
    active = {i for i, status in conn.execute(query) if JobStatus(status) in ACTIVE}
    return set(job_ids) - active


def orphaned_jobs(
    conn: Connection, dead_owner_ids: Sequence[str], host: str | None = None
) -> list[Job]:
    """See ``Store.orphaned_jobs``."""
    stopped = select(ServerRow.id).where(ServerRow.stopped_at.is_not(None))
    here = true() if host is None else or_(JobRow.host == host, JobRow.host.is_(None))
    query = (
        select(*JOB_COLUMNS)
        .where(
            here,
            JobRow.status.in_(ACTIVE),
            or_(
                JobRow.owner_id.in_(dead_owner_ids),
                JobRow.owner_id.is_(None),
                JobRow.owner_id.in_(stopped),
            ),
        )
        .order_by(JobRow.created_at, JobRow.id)
    )
    return [job_of(r) for r in conn.execute(query)]


def ids_with_prefix(conn: Connection, prefix: str, *, audited: bool) -> list[str]:
    """Up to two job ids starting with ``prefix`` (``audited``: ids in the audit log count)."""
    ids: Any = select(JobRow.id.label("id")).where(JobRow.id >= prefix, JobRow.id < prefix + "g")
    if audited:
        a = AuditEventRow.job_id
        ids = union(ids, select(a.label("id")).where(a >= prefix, a < prefix + "g")).subquery()
        query = select(ids.c.id).order_by(ids.c.id).limit(2)
    else:
        query = ids.order_by(JobRow.id).limit(2)
    return list(conn.execute(query).scalars().all())


# --- servers ----------------------------------------------------------------------------------


def register_server(conn: Connection, server: ServerInstance, version: str) -> None:
    conn.execute(insert(ServerRow), server_row(server, version))


def mark_server_stopped(conn: Connection, server_id: str) -> None:
    conn.execute(
        update(ServerRow)
        .where(ServerRow.id == server_id, ServerRow.stopped_at.is_(None))
        .values(stopped_at=utcnow())
    )


def servers_not_stopped(conn: Connection, exclude: str) -> list[ServerInstance]:
    query = select(ServerRow).where(ServerRow.stopped_at.is_(None), ServerRow.id != exclude)
    return [server_of(r) for r in conn.execute(query)]


def get_server(conn: Connection, server_id: str) -> ServerInstance | None:
    row = conn.execute(select(ServerRow).where(ServerRow.id == server_id)).first()
    return None if row is None else server_of(row)
