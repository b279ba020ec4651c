"""Output: storing ingested chunks with the job's byte counters, and reading them back.

Plain functions of a ``Connection``. Reads cut rows in SQL (``substr``), so reading 64 KiB out
of 1 MiB rows moves 64 KiB, and walk chunks by sequence a few rows per round trip, so a read
costs what it returns, not what the job wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

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
    """Store new chunks, drop trimmed ones and update the byte counters.

    On PostgreSQL the transaction commits without waiting for its WAL flush
    (``synchronous_commit = off``, this transaction only): what SQLite does in WAL mode with
    ``synchronous=NORMAL``. A crash of our server loses nothing committed; a crash of the
    database server's machine may lose the last moments of output (and what was committed with
    it), never half a transaction. Waiting for a disk flush every 4 MiB batch made output storage
    1.0-1.7x slower than SQLite's.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
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


def _stream_reads() -> tuple[Select[Any], dict[bool, tuple[Select[Any], Select[Any]]]]:
    """``read_stream``'s statements, built once with bound parameters: building them per call
    (a literal per offset) cost ~4 ms of CPU a read, 4x the read itself (measured on a 64 KiB
    page of a 20 MB job, issue 13). By ``whole_rows``: the rows in a range, the next row."""
    start, n = bindparam("start", type_=Integer), bindparam("n", type_=Integer)
    base = and_(_c.job_id == bindparam("j"), _c.stream == bindparam("s"))
    floor = select(func.max(_c.byte_offset)).where(base, _c.byte_offset <= start)
    cut = func.substr(_c.data, func.max(1, start - _c.byte_offset + 1), n)
    reads = {}
    for whole, piece in ((True, _c.data), (False, cut)):
        query = select(_c.byte_offset, func.length(_c.data), piece).where(base)
        in_range = query.where(_c.byte_offset >= bindparam("lo"), _c.byte_offset < bindparam("hi"))
        after = query.where(_c.byte_offset > start).order_by(_c.byte_offset).limit(1)
        reads[whole] = (in_range.order_by(_c.byte_offset), after)
    return floor, reads


_FLOOR, _STREAM_READS = _stream_reads()


def read_stream(
    conn: Connection, job_id: str, stream: Stream, start: int, max_bytes: int, whole_rows: bool
) -> list[Chunk]:
    """See ``Store.read_stream``."""
    key = {"j": job_id, "s": stream, "start": start, "n": min(max_bytes, _SQL_MAX)}
    lo = conn.execute(_FLOOR, key).scalar_one_or_none()
    in_range, after = _STREAM_READS[whole_rows]
    rows = conn.execute(in_range, {**key, "lo": lo or 0, "hi": start + max_bytes}).all()
    if not any(o + n > start for o, n, _ in rows):
        rows = conn.execute(after, key).all()  # in a dropped gap: the next stored chunk
    return [
        Chunk(stream, o if whole_rows else max(o, start), d)
        for o, n, d in rows
        if o + n > start and d
    ]


def read_around(
    conn: Connection, job_id: str, stream: Stream, start: int, max_bytes: int, context: int
) -> tuple[list[Chunk], list[Chunk], list[Chunk]]:
    """See ``Store.read_around``."""
    page = read_stream(conn, job_id, stream, start, max_bytes, False)
    lo = max(0, start - context)
    before = read_stream(conn, job_id, stream, lo, start - lo, False) if start > lo else []
    end = page[-1].end if page else start
    return page, before, read_stream(conn, job_id, stream, end, context, False)


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
