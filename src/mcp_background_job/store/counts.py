"""Job counts by status (the web page's live counts): one grouped query on the status index."""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from ..db import JobRow
from ..jobs import JobStatus


def by_status(conn: Connection) -> dict[JobStatus, int]:
    rows = conn.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all()
    counts = dict.fromkeys(JobStatus, 0)
    counts.update({JobStatus(s): n for s, n in rows})
    return counts
