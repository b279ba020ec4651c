"""Output: storing ingested chunks with the job's byte counters, and reading them back.

Plain functions of a ``Connection``. Reads cut rows in SQL (``substr``), so reading 64 KiB out
of 1 MiB rows moves 64 KiB, and walk chunks by sequence a few rows per round trip, so a read
costs what it returns, not what the job wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, and_, bindparam, case, delete, func, insert, or_, select, update

from ..db import JobRow, OutputChunkRow
from ..db.dialects import tail_bytes
from ..jobs import Chunk, Stream
from .records import OutputBatch, counter_values

#: SQLite's substr() takes lengths below 2**31; rows are far smaller anyway.
_SQL_MAX = 1 << 30
#: Chunks fetched per round trip when walking output in order or backwards.
_ROWS_PER_FETCH = 16

_c = OutputChunkRow
#: Masked output replaces the bytes of a stored chunk (same offset, same length).
_REWRITE = (
    update(_c)
    .where(
        _c.job_id == bindparam("j"),
        _c.stream == bindparam("s"),
        _c.byte_offset == bindparam("o"),
        func.length(_c.data) == bindparam("n"),
    )
    .values(data=bindparam("d"))
)


def write_output(conn: Connection, batches: Sequence[OutputBatch]) -> None:
    """Store new chunks, drop trimmed ones and update the byte counters."""
    rows = [
        {
            "job_id": b.job_id,
            "stream": k.stream,
            "seq": k.seq,
            "byte_offset": k.offset,
            "data": k.data,
        }
        for b in batches
        for k in b.chunks
    ]
    if rows:
        conn.execute(insert(_c), rows)
    for b in batches:
        for drop in b.drops:
            conn.execute(
                delete(_c).where(
                    _c.job_id == b.job_id,
                    _c.stream == drop.stream,
                    _c.byte_offset >= drop.lo,
                    _c.byte_offset < drop.hi,
                )
            )
        if b.counters:
            conn.execute(
                update(JobRow).where(JobRow.id == b.job_id).values(counter_values(b.counters))
            )


def rewrite_chunks(
    conn: Connection, job_id: str, stream: Stream, updates: Sequence[tuple[int, bytes]]
) -> None:
    """Replace the bytes of stored chunks at these offsets (same lengths: masked output)."""
    params = [{"j": job_id, "s": stream, "o": o, "n": len(d), "d": d} for o, d in updates]
    conn.execute(_REWRITE, params)


def chunk_layout(
    conn: Connection, job_id: str, stream: Stream
) -> tuple[list[tuple[int, int]], int]:
    """(offset, length) of every stored chunk of a stream, and the highest seq of the job."""
    layout = [
        (r[0], r[1])
        for r in conn.execute(
            select(_c.byte_offset, func.length(_c.data))
            .where(_c.job_id == job_id, _c.stream == stream)
            .order_by(_c.byte_offset)
        )
    ]
    top = conn.execute(select(func.max(_c.seq)).where(_c.job_id == job_id)).scalar_one()
    return layout, (top if top is not None else -1)


def read_stream(
    conn: Connection, job_id: str, stream: Stream, start: int, max_bytes: int, whole_rows: bool
) -> list[Chunk]:
    """See ``Store.read_stream``."""
    base = and_(_c.job_id == job_id, _c.stream == stream)
    piece = (
        _c.data
        if whole_rows
        else func.substr(_c.data, func.max(1, start - _c.byte_offset + 1), min(max_bytes, _SQL_MAX))
    )
    lo = conn.execute(
        select(func.max(_c.byte_offset)).where(base, _c.byte_offset <= start)
    ).scalar_one_or_none()
    query = select(_c.byte_offset, func.length(_c.data), piece).where(base).order_by(_c.byte_offset)
    rows = conn.execute(
        query.where(_c.byte_offset >= (lo or 0), _c.byte_offset < start + max_bytes)
    ).all()
    if not any(o + n > start for o, n, _ in rows):
        rows = conn.execute(query.where(_c.byte_offset > start).limit(1)).all()
    return [
        Chunk(stream, o if whole_rows else max(o, start), d)
        for o, n, d in rows
        if o + n > start and d
    ]


def _first_seq(conn: Connection, job_id: str, starts: Mapping[Stream, int]) -> int:
    """The seq just before the first chunk (of either stream) holding an unread byte."""
    firsts = []
    for s in Stream:
        floor = (
            select(func.max(_c.byte_offset))
            .where(_c.job_id == job_id, _c.stream == s, _c.byte_offset <= starts[s])
            .scalar_subquery()
        )
        firsts.append(
            conn.execute(
                select(func.min(_c.seq)).where(
                    _c.job_id == job_id, _c.stream == s, _c.byte_offset >= func.coalesce(floor, 0)
                )
            ).scalar_one_or_none()
        )
    known = [f for f in firsts if f is not None]
    return min(known) - 1 if known else -1


def read_interleaved(
    conn: Connection, job_id: str, starts: Mapping[Stream, int], max_bytes: int
) -> list[Chunk]:
    """Chunks of both streams in the order they were stored, from the given stream offsets."""
    unread = or_(
        *(and_(_c.stream == s, _c.byte_offset + func.length(_c.data) > starts[s]) for s in Stream)
    )
    start_of = case(
        (_c.stream == Stream.STDOUT, starts[Stream.STDOUT]), else_=starts[Stream.STDERR]
    )
    piece = func.substr(
        _c.data, func.max(1, start_of - _c.byte_offset + 1), min(max_bytes, _SQL_MAX)
    )
    out: list[Chunk] = []
    total = 0
    seq = _first_seq(conn, job_id, starts)
    while total < max_bytes:
        rows = conn.execute(
            select(_c.seq, _c.stream, _c.byte_offset, piece)
            .where(_c.job_id == job_id, _c.seq > seq, unread)
            .order_by(_c.seq)
            .limit(_ROWS_PER_FETCH)
        ).all()
        if not rows:
            break
        for q, name, o, d in rows:
            seq = q
            stream = Stream(name)
            out.append(Chunk(stream, max(o, starts[stream]), d))
            total += len(d)
            if total >= max_bytes:
                break
    return out


def read_backwards(
    conn: Connection, job_id: str, streams: Sequence[Stream], enough: int, max_bytes: int
) -> list[Chunk]:
    """See ``Store.read_backwards``."""
    tail = tail_bytes(_c.data, min(max_bytes, _SQL_MAX))  # only the end of a big row
    out: list[Chunk] = []
    newlines = total = 0
    seq: int | None = None
    while newlines < enough and total < max_bytes:
        query = select(_c.seq, _c.stream, _c.byte_offset, func.length(_c.data), tail).where(
            _c.job_id == job_id, _c.stream.in_(list(streams))
        )
        if seq is not None:
            query = query.where(_c.seq < seq)
        rows = conn.execute(query.order_by(_c.seq.desc()).limit(4)).all()
        if not rows:
            break
        for q, name, o, n, d in rows:
            seq = q
            out.append(Chunk(Stream(name), o + n - len(d), d))
            newlines += d.count(b"\n")
            total += len(d)
            if newlines >= enough or total >= max_bytes:
                break
    out.reverse()
    return out
