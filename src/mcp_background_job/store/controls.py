"""Requests to another host's server, and the health of hosts, in SQL.

``job_controls`` rows: ``kill`` and ``interact`` on a job another host runs (see ``remote``).
The caller writes a row (``ask``) for the job's host; the server owning the job finds it
(``pending``), takes it by a compare-and-set on ``taken_by`` (``take``), applies it and writes
the answer (``answer``); the caller reads it (``get``) and deletes the row (``forget``), or takes
back a request no server took in time (``withdraw``: only while untaken, so a request is applied
or withdrawn, never both). On PostgreSQL ``ask`` and ``answer`` NOTIFY in the same transaction
(delivered at commit), so neither end has to poll for them.

Hosts: servers write ``heartbeat_at`` now and then (``heartbeat``); a host none of whose servers
did for a while is declared dead by one guarded update (``declare_dead``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, not_, select, text, update

from ..db import JobControlRow, JobRow, ServerRow, utcnow
from ..errors import TransitionConflict
from ..jobs import JobStatus
from .lifecycle import load, transition

#: NOTIFY channels (PostgreSQL): a request for a host (payload: the host), an answer (its id).
CONTROL_CHANNEL = "mbj_control"
ANSWER_CHANNEL = "mbj_answer"


@dataclass(frozen=True, slots=True)
class Control:
    """One row of ``job_controls``."""

    id: int
    job_id: str
    host: str
    kind: str
    request: str
    taken_by: str | None
    answered_at: datetime | None
    answer: str | None
    error: str | None


_COLUMNS = (
    JobControlRow.id,
    JobControlRow.job_id,
    JobControlRow.host,
    JobControlRow.kind,
    JobControlRow.request,
    JobControlRow.taken_by,
    JobControlRow.answered_at,
    JobControlRow.answer,
    JobControlRow.error,
)


def _notify(conn: Connection, channel: str, payload: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": channel, "p": payload})


def ask(conn: Connection, job_id: str, host: str, kind: str, request: str) -> int:
    """Write a request for the server of ``host`` that owns the job; its id."""
    row = {"job_id": job_id, "host": host, "kind": kind, "request": request,
           "created_at": utcnow()}  # fmt: skip
    key = conn.execute(insert(JobControlRow), row).inserted_primary_key
    assert key is not None  # (a single-row insert)
    control_id = int(key[0])
    _notify(conn, CONTROL_CHANNEL, host)
    return control_id


def pending(conn: Connection, host: str, server_id: str) -> list[Control]:
    """The untaken requests for jobs ``server_id`` owns on ``host``, oldest first."""
    query = (
        select(*_COLUMNS)
        .join(JobRow, JobRow.id == JobControlRow.job_id)
        .where(
            JobControlRow.host == host,
            JobControlRow.taken_by.is_(None),
            JobRow.owner_id == server_id,
        )
        .order_by(JobControlRow.id)
    )
    return [Control(*r) for r in conn.execute(query)]


def take(conn: Connection, control_id: int, server_id: str) -> bool:
    """Take a request to apply it; False if another server took it, or it was withdrawn."""
    stmt = (
        update(JobControlRow)
        .where(JobControlRow.id == control_id, JobControlRow.taken_by.is_(None))
        .values(taken_by=server_id)
    )
    return conn.execute(stmt).rowcount == 1


def answer(conn: Connection, control_id: int, answer: str | None, error: str | None) -> None:
    conn.execute(
        update(JobControlRow)
        .where(JobControlRow.id == control_id, JobControlRow.answered_at.is_(None))
        .values(answered_at=utcnow(), answer=answer, error=error)
    )
    _notify(conn, ANSWER_CHANNEL, str(control_id))


def get(conn: Connection, control_id: int) -> Control | None:
    row = conn.execute(select(*_COLUMNS).where(JobControlRow.id == control_id)).first()
    return None if row is None else Control(*row)


def withdraw(conn: Connection, control_id: int) -> bool:
    """Delete a request no server has taken; False if one has (it is being applied)."""
    stmt = delete(JobControlRow).where(
        JobControlRow.id == control_id, JobControlRow.taken_by.is_(None)
    )
    return conn.execute(stmt).rowcount == 1


def forget(conn: Connection, control_id: int) -> None:
    conn.execute(delete(JobControlRow).where(JobControlRow.id == control_id))


# --- hosts ------------------------------------------------------------------------------------

_BEAT = func.coalesce(ServerRow.heartbeat_at, ServerRow.started_at)


def heartbeat(conn: Connection, server_id: str) -> None:
    conn.execute(
        update(ServerRow)
        .where(ServerRow.id == server_id, ServerRow.stopped_at.is_(None))
        .values(heartbeat_at=utcnow())
    )


def silent_hosts(conn: Connection, before: datetime, exclude: str) -> list[str]:
    """Hosts other than ``exclude`` with servers not stopped, none of which beat since
    ``before``."""
    query = (
        select(ServerRow.hostname)
        .where(ServerRow.stopped_at.is_(None), ServerRow.hostname != exclude)
        .group_by(ServerRow.hostname)
        .having(func.max(_BEAT) < before)
        .order_by(ServerRow.hostname)
    )
    return list(conn.execute(query).scalars())


def declare_dead(
    conn: Connection, host: str, before: datetime, server_id: str, reason: str
) -> list[str] | None:
    """Declare ``host`` dead if none of its servers beat since ``before``: one guarded update
    marks them all stopped (a server that beat meanwhile, or another declarer first, makes it
    change nothing), then its running jobs that are not detached are failed with ``reason``,
    each with its event row, in the same transaction. Detached jobs stay running: a server of
    that host adopts them when it comes back. Returns the ids of the jobs failed (None: not
    declared)."""
    alive = (
        select(ServerRow.id)
        .where(ServerRow.hostname == host, ServerRow.stopped_at.is_(None), before <= _BEAT)
        .exists()
    )
    marked = conn.execute(
        update(ServerRow)
        .where(ServerRow.hostname == host, ServerRow.stopped_at.is_(None), not_(alive))
        .values(stopped_at=utcnow())
    )
    if marked.rowcount == 0:
        return None
    running = conn.execute(
        select(JobRow.id).where(
            JobRow.host == host, JobRow.status == JobStatus.RUNNING, JobRow.detached.is_(False)
        )
    ).scalars()
    failed: list[str] = []
    for job_id in list(running):
        try:
            transition(conn, load(conn, job_id, events=False), JobStatus.FAILED,
                       server_id=server_id, reason=reason,
                       only_from=frozenset({JobStatus.RUNNING}))  # fmt: skip
        except TransitionConflict:  # (cannot happen in this transaction; never overwrite)
            continue
        failed.append(job_id)
    return failed
