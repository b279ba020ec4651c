"""The history list: filters, newest-first pages with a cursor, and the command search.

``list_query`` builds the statement from a ``JobFilter`` (on the event loop); ``list_page`` runs
it on a reader thread, asking the trigram index for candidates first when that helps.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Integer,
    Select,
    and_,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.orm import aliased

from ..db import SEARCH_TABLE, JobLabelRow, JobRow
from ..errors import InvalidRequest
from ..jobs import Job
from .records import JOB_COLUMNS, JobFilter, job_of

# ``command_contains`` on a big history. The trigram index gives candidates (jobs holding some
# trigrams of the text), LIKE checks them. Costs measured on 100,000 jobs (64 KiB pages): a job
# looked up by rowid ~11 us (a page read each); a step along the created_at index ~0.08 us; a
# job scanned with LIKE ~0.5 us; each common trigram in the index query ~0.45 us per 1,000 jobs.
#: Up to this many candidates, they are looked up by rowid and sorted.
SEARCH_LOOKUP_MAX = 200
#: Up to this many, the newest-first index walk checks each entry's rowid against them (rows are
#: read only for candidates). More mean the text is common: the plain LIKE scan, newest first,
#: finds a page sooner than collecting them would.
SEARCH_MAX_CANDIDATES = 5000
#: Most trigrams in one index query: each common one costs a pass over its whole list.
_SEARCH_MAX_TRIGRAMS = 8
# The table name is a constant of ours; the text searched for is a bound parameter.
_SEARCH = f"SELECT rowid FROM {SEARCH_TABLE} WHERE {SEARCH_TABLE} MATCH ? LIMIT ?"  # noqa: S608
_ROWID: ColumnElement[int] = literal_column("jobs.rowid", Integer)
# A unary plus keeps SQLite from looking the candidates up by rowid: it walks the created_at
# index instead and checks the rowid in each entry (no row read unless it is a candidate).
_ROWID_NOT_INDEXED: ColumnElement[int] = literal_column("+jobs.rowid", Integer)


def search_match(needle: str) -> str | None:
    """An FTS5 query for jobs whose command holds trigrams of ``needle`` that cover all of it (a
    superset of those containing it: the trigram tokenizer folds case, as ``LIKE`` does for
    ASCII), or None when the index cannot help: under 3 characters, or a NUL (which ends an
    FTS5 string)."""
    if len(needle) < 3 or "\x00" in needle:
        return None
    # Trigrams side by side (and the last one) cover every character; overlapping ones would
    # hardly narrow the candidates and each costs a pass over its list.
    starts = [*range(0, len(needle) - 2, 3), len(needle) - 3]
    grams = list(dict.fromkeys(needle[i : i + 3] for i in starts))
    if len(grams) > _SEARCH_MAX_TRIGRAMS:
        step = (len(grams) - 1) / (_SEARCH_MAX_TRIGRAMS - 1)
        grams = [grams[round(i * step)] for i in range(_SEARCH_MAX_TRIGRAMS)]
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


def _search_candidates(conn: Connection, match: str) -> list[int] | None:
    """Rowids of the jobs the index finds for ``match``; None if over ``SEARCH_MAX_CANDIDATES``.

    Read with the driver's cursor, in the same transaction: thousands of bare integers through
    SQLAlchemy's result rows cost ~0.3 ms more.
    """
    driver: Any = conn.connection.driver_connection
    rows = driver.execute(_SEARCH, (match, SEARCH_MAX_CANDIDATES + 1)).fetchall()
    return [r[0] for r in rows] if len(rows) <= SEARCH_MAX_CANDIDATES else None


def encode_list_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_list_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"Invalid list cursor {cursor!r}: pass the next_cursor value of a previous `list` "
            "result unchanged, or omit cursor to start from the newest job."
        ) from exc


def list_query(flt: JobFilter, limit: int, cursor: str | None) -> Select[Any]:
    """Up to ``limit + 1`` jobs matching ``flt``, newest first, after ``cursor``.

    A label walks the ``(label, job_created_at)`` index of ``job_labels`` newest first instead
    of sorting every job with the label.
    """
    if flt.label is not None:
        by_label = aliased(JobLabelRow, name="by_label")
        query = (
            select(*JOB_COLUMNS)
            .join_from(by_label, JobRow, JobRow.id == by_label.job_id)
            .where(by_label.label == flt.label)
        )
        # The job's time and id as the label index holds them: the order needs no sort.
        created, ident = by_label.job_created_at, by_label.job_id
    else:
        query = select(*JOB_COLUMNS)
        created, ident = JobRow.created_at, JobRow.id
    if flt.status is not None:
        query = query.where(JobRow.status == flt.status)
    if flt.command_contains:
        pattern = flt.command_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(JobRow.command.like(f"%{pattern}%", escape="\\"))
    if flt.since is not None:
        query = query.where(created >= flt.since)
    if flt.until is not None:
        query = query.where(created < flt.until)
    if flt.statuses:
        query = query.where(JobRow.status.in_(sorted(flt.statuses)))
    if flt.exit_code is not None:
        query = query.where(JobRow.exit_code == flt.exit_code)
    if flt.host is not None:
        query = query.where(JobRow.host == flt.host)
    if cursor is not None:
        after, last_id = decode_list_cursor(cursor)
        query = query.where(or_(created < after, and_(created == after, ident < last_id)))
    return query.order_by(created.desc(), ident.desc()).limit(limit + 1)


def list_page(conn: Connection, query: Select[Any], command_contains: str | None) -> list[Job]:
    """Run ``list_query``'s statement; ``command_contains`` of 3 characters or more asks the
    trigram index for candidates first and keeps ``LIKE`` as the exact test (see
    ``SEARCH_LOOKUP_MAX``)."""
    # PostgreSQL: the trigram index (pg_trgm, migration 0005) serves the LIKE itself.
    trigrams = conn.dialect.name == "sqlite"
    match = search_match(command_contains) if command_contains and trigrams else None
    hits = None if match is None else _search_candidates(conn, match)
    if hits is not None:
        if not hits:
            return []
        listed = func.json_each(json.dumps(hits)).table_valued("value")
        rowid = _ROWID if len(hits) <= SEARCH_LOOKUP_MAX else _ROWID_NOT_INDEXED
        query = query.where(rowid.in_(select(listed.c.value)))
    return [job_of(r) for r in conn.execute(query)]
