"""Reads for finding things in output (``grep``, ``wait`` until a line, ``search``).

Plain functions of a ``Connection`` in SQLAlchemy Core (no SQLite-only SQL: the same queries run
on PostgreSQL). They run on the reader pool: a search never holds the writer.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select

from ..db import OutputChunkRow
from ..jobs import Stream

_c = OutputChunkRow


def other_stream_offset(conn: Connection, job_id: str, stream: Stream, offset: int) -> int:
    """How many bytes of the other stream were stored before the chunk of ``stream`` that holds
    byte ``offset``: with ``offset``, a cursor that reads both streams from that point."""
    other = Stream.STDERR if stream is Stream.STDOUT else Stream.STDOUT
    seq = conn.execute(
        select(func.max(_c.seq)).where(
            _c.job_id == job_id, _c.stream == stream, _c.byte_offset <= offset
        )
    ).scalar_one_or_none()
    if seq is None:
        return 0
    end = conn.execute(
        select(func.max(_c.byte_offset + func.length(_c.data))).where(
            _c.job_id == job_id, _c.stream == other, _c.seq < seq
        )
    ).scalar_one_or_none()
    return int(end or 0)


def newlines_before(conn: Connection, job_id: str, stream: Stream, offset: int) -> int:
    """How many line feeds the stored bytes of ``stream`` hold before ``offset`` (the line
    number of a search that starts there, minus one). Counted in Python: neither SQLite nor
    PostgreSQL counts a byte in a blob portably."""
    count = 0
    rows = conn.execute(
        select(_c.byte_offset, _c.data)
        .where(_c.job_id == job_id, _c.stream == stream, _c.byte_offset < offset)
        .order_by(_c.byte_offset)
        .execution_options(yield_per=64)
    )
    for at, data in rows:
        count += data.count(b"\n", 0, max(0, offset - at))
    return count
