"""Rows to records and back: one mapping per record type, and the typed values the store takes.

Every read of a job selects ``JOB_COLUMNS`` and goes through ``job_of``; every write of a
status change goes through ``transition_values``; every audit row through ``audit_values`` and
``audit_of``. Nothing outside the store names a column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, func, select
from sqlalchemy.orm import InstrumentedAttribute

from ..db import JobDependencyRow, JobLabelRow, JobRow
from ..jobs import (
    AuditEvent,
    EndCause,
    Job,
    JobEvent,
    JobStatus,
    ServerInstance,
    Stream,
)


def _json_list(values: Any, job_id: Any, name: str) -> Any:
    """A column of the job's rows in another table (``values`` where ``job_id`` is the job's),
    as one JSON array."""
    return (
        select(func.json_group_array(values))
        .where(job_id == JobRow.id)
        .correlate(JobRow)
        .scalar_subquery()
        .label(name)
    )


#: What every read of a job selects: its row, its labels and its dependencies.
JOB_COLUMNS = (
    *JobRow.__table__.columns,
    _json_list(JobLabelRow.label, JobLabelRow.job_id, "labels"),
    _json_list(JobDependencyRow.depends_on, JobDependencyRow.job_id, "after"),
)


def job_of(row: Row[Any], events: Sequence[JobEvent] = (), waiting_on: tuple[str, ...] = ()) -> Job:
    """The job of a row selected with ``JOB_COLUMNS``."""
    m = row._mapping
    return Job(
        id=m["id"],
        command=m["command"],
        cwd=m["cwd"],
        shell=m["shell"],
        env=json.loads(m["env"]),
        labels=tuple(json.loads(m["labels"])) if m["labels"] else (),
        status=JobStatus(m["status"]),
        created_at=m["created_at"],
        owner_id=m["owner_id"],
        timeout_s=m["timeout_s"],
        started_at=m["started_at"],
        ended_at=m["ended_at"],
        exit_code=m["exit_code"],
        signal=m["signal"],
        reason=m["reason"],
        pid=m["pid"],
        pid_start=m["pid_start"],
        boot_id=m["boot_id"],
        stdout_bytes=m["stdout_bytes"],
        stderr_bytes=m["stderr_bytes"],
        stdout_stored=m["stdout_stored"],
        stderr_stored=m["stderr_stored"],
        stdout_dropped=m["stdout_dropped"],
        stderr_dropped=m["stderr_dropped"],
        end_cause=EndCause(m["end_cause"]) if m["end_cause"] else None,
        pty=bool(m["pty"]),
        rows=m["term_rows"],
        cols=m["term_cols"],
        priority=m["priority"],
        idle_timeout_s=m["idle_timeout_s"],
        after=tuple(sorted(json.loads(m["after"]))) if m["after"] else (),
        run_anyway=bool(m["run_anyway"]),
        rerun_of=m["rerun_of"],
        start_attempted_at=m["start_attempted_at"],
        detached=bool(m["detached"]),
        host=m["host"],
        waiting_on=waiting_on,
        events=tuple(events),
    )


def job_row(job: Job) -> dict[str, Any]:
    """The ``jobs`` row of a new job (labels and dependencies are rows of their own tables)."""
    return {
        "id": job.id,
        "command": job.command,
        "cwd": job.cwd,
        "shell": job.shell,
        "env": json.dumps(job.env),
        "status": job.status,
        "created_at": job.created_at,
        "timeout_s": job.timeout_s,
        "owner_id": job.owner_id,
        "pty": job.pty,
        "term_rows": job.rows,
        "term_cols": job.cols,
        "priority": job.priority,
        "idle_timeout_s": job.idle_timeout_s,
        "run_anyway": job.run_anyway,
        "rerun_of": job.rerun_of,
        "start_attempted_at": job.start_attempted_at,
        "detached": job.detached,
        "host": job.host,
        "boot_id": job.boot_id,
    }


def event_of(row: Row[Any]) -> JobEvent:
    """A status change from its ``job_events`` row."""
    return JobEvent(
        at=row.at,
        from_status=JobStatus(row.from_status) if row.from_status else None,
        to_status=JobStatus(row.to_status),
        reason=row.reason,
        server_id=row.server_id,
    )


def server_of(row: Row[Any]) -> ServerInstance:
    m = row._mapping
    return ServerInstance(
        id=m["id"],
        pid=m["pid"],
        pid_start=m["pid_start"],
        boot_id=m["boot_id"],
        hostname=m["hostname"],
        started_at=m["started_at"],
        stopped_at=m["stopped_at"],
    )


def server_row(server: ServerInstance, version: str) -> dict[str, Any]:
    return {
        "id": server.id,
        "pid": server.pid,
        "pid_start": server.pid_start,
        "boot_id": server.boot_id,
        "hostname": server.hostname,
        "version": version,
        "started_at": server.started_at,
    }


#: ``AuditEvent``'s fields are the columns of ``audit_events`` (``detail`` as JSON text).
_AUDIT_FIELDS = tuple(f.name for f in fields(AuditEvent))


def audit_values(event: AuditEvent, at: datetime) -> dict[str, Any]:
    """The ``audit_events`` row of an event recorded at ``at`` (its id comes from the insert)."""
    row = {name: getattr(event, name) for name in _AUDIT_FIELDS if name != "id"}
    row["at"] = at
    row["detail"] = json.dumps(event.detail, sort_keys=True, default=str)
    return row


def audit_of(row: Row[Any]) -> AuditEvent:
    """An audit event from its ``audit_events`` row."""
    values = {name: getattr(row, name) for name in _AUDIT_FIELDS}
    values["detail"] = json.loads(row.detail)
    return AuditEvent(**values)


# --- typed write arguments ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """What a status change records besides the status (``None``: left as it is).

    ``started_at`` and ``ended_at`` default to the time of the change when the job starts or
    ends; ``reason`` is written to the row only when the job ends (the event row keeps it
    always).
    """

    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    signal: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    boot_id: str | None = None


def transition_values(
    to: JobStatus, change: Change, reason: str | None, now: datetime
) -> dict[str, Any]:
    """The columns a move to ``to`` sets (their names are those of ``Job``'s fields)."""
    values: dict[str, Any] = {"status": to}
    given = {f.name: getattr(change, f.name) for f in fields(Change)}
    values.update({k: v for k, v in given.items() if v is not None})
    if to is JobStatus.RUNNING:
        values.setdefault("started_at", now)
    if to.is_terminal:
        values.setdefault("ended_at", now)
        values["reason"] = reason
    return values


class NewChunk(NamedTuple):
    """Bytes ``offset..`` of ``stream``, stored as the job's ``seq``-th chunk."""

    stream: Stream
    seq: int
    offset: int
    data: bytes


class Drop(NamedTuple):
    """Stored chunks of ``stream`` starting in ``[lo, hi)`` to delete (the output limit)."""

    stream: Stream
    lo: int
    hi: int


class StreamCounters(NamedTuple):
    """How far a stream has been taken in: ``written`` bytes consumed (stored or dropped),
    ``stored`` kept in the database, ``dropped`` by the output limit."""

    stream: Stream
    written: int
    stored: int
    dropped: int


#: The ``jobs`` columns of each stream's counters.
_COUNTER_COLUMNS: dict[Stream, tuple[InstrumentedAttribute[int], ...]] = {
    Stream.STDOUT: (JobRow.stdout_bytes, JobRow.stdout_stored, JobRow.stdout_dropped),
    Stream.STDERR: (JobRow.stderr_bytes, JobRow.stderr_stored, JobRow.stderr_dropped),
}


def counter_values(counters: Sequence[StreamCounters]) -> dict[str, int]:
    """The ``jobs`` columns that hold these counters, by name."""
    values: dict[str, int] = {}
    for c in counters:
        columns = _COUNTER_COLUMNS[c.stream]
        values.update(zip((col.key for col in columns), c[1:], strict=True))
    return values


@dataclass(slots=True)
class OutputBatch:
    """What one ingestion pass learned about one job, stored in one transaction with the others."""

    job_id: str
    chunks: list[NewChunk] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)
    counters: list[StreamCounters] = field(default_factory=list)


# --- query arguments and results ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueState:
    """One server's queue as one read saw it (see ``Store.queue_state``)."""

    startable: list[Job]
    doomed: list[tuple[str, str]]  # (job id, why it can never start)
    queued: int


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: JobStatus | None = None
    label: str | None = None
    command_contains: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    statuses: frozenset[JobStatus] = frozenset()  # any of these (with ``status``: both apply)
    exit_code: int | None = None
    host: str | None = None  # jobs of this machine (the ``host`` setting of its servers)


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One row of ``job_events``: a job was created (``created``) or changed status."""

    event_id: int
    job_id: str
    status: JobStatus
    created: bool


@dataclass(frozen=True, slots=True)
class PruneCandidate:
    job_id: str
    status: JobStatus
    ended_at: datetime
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    jobs: int = 0
    chunks: int = 0
    output_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """Totals over the whole database. Byte totals come from the job rows (no data is read)."""

    jobs: int
    by_status: tuple[tuple[JobStatus, int], ...]
    written_bytes: int
    stored_bytes: int
    dropped_bytes: int
    first_created: datetime | None
    last_created: datetime | None
    page_size: int
    page_count: int
    free_pages: int
    longest: tuple[Job, ...]
