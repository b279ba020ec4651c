"""Reading the history for people: byte-exact copies of stored output, the last lines of it, and
following a job's output while a server stores it. Used by the command line: no MCP here, and
no process is touched (the owner's liveness is only read from ``/proc``).

Import rule: reads through ``store``; imports neither ``app`` nor ``runner`` nor ``report``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, TextIO

from . import proctree
from .errors import JobStateError
from .jobs import Chunk, Stream
from .store import Store

if TYPE_CHECKING:
    from .jobs import Job

#: Most bytes fetched from the database per read while copying output.
COPY_READ_BYTES = 4 * 1024 * 1024
#: Most bytes looked at backwards for ``--tail`` (a few very long lines stop there).
TAIL_MAX_BYTES = 64 * 1024 * 1024
#: How often ``follow`` checks that the server running the job is still alive.
_OWNER_CHECK_S = 2.0

Positions = dict[Stream, int]


class Sink(Protocol):
    """Where output goes: bytes per stream, and a note where the output limit dropped bytes."""

    def write(self, stream: Stream, data: bytes) -> None: ...

    def gap(self, stream: Stream, dropped: int) -> None: ...


@dataclass(slots=True)
class FileSink:
    """Writes each stream to a binary file (flushed at once) and notes to a text file."""

    files: Mapping[Stream, BinaryIO]
    notes: TextIO

    def write(self, stream: Stream, data: bytes) -> None:
        out = self.files[stream]
        out.write(data)
        out.flush()

    def gap(self, stream: Stream, dropped: int) -> None:
        self.notes.write(f"[... {dropped} bytes of {stream} dropped by the output limit ...]\n")
        self.notes.flush()


async def open_existing(path: Path | str, *, reading: bool = True) -> Store:
    """The store of an existing database (migrated to this version's schema like a server
    would, if it can be written); a clear error instead of creating an empty file at a mistyped
    path. ``reading``: only reads follow, so a database that cannot be written (a read-only
    file or mount, another user's) is opened read-only."""
    store = Store(path)
    await store.open(create=False, reading=reading)
    return store


def emit(chunks: Sequence[Chunk], pos: Positions, sink: Sink) -> bool:
    """Send the parts of ``chunks`` past ``pos`` to ``sink``, advancing ``pos``; True if any."""
    moved = False
    for ch in chunks:
        at = pos[ch.stream]
        if ch.end <= at:
            continue
        if ch.offset > at:
            sink.gap(ch.stream, ch.offset - at)
            at = ch.offset
        sink.write(ch.stream, ch.data[at - ch.offset :])
        pos[ch.stream] = ch.end
        moved = True
    return moved


async def copy_output(
    store: Store, job_id: str, streams: Sequence[Stream], pos: Positions, sink: Sink
) -> bool:
    """Copy everything stored past ``pos`` (updated in place); True if anything was copied.
    Two streams are copied in the order they were stored."""
    copied = False
    while True:
        if len(streams) == 1:
            s = streams[0]
            chunks = await store.read_stream(job_id, s, pos[s], COPY_READ_BYTES)
        else:
            chunks = await store.read_interleaved(job_id, pos, COPY_READ_BYTES)
        if not emit(chunks, pos, sink):
            return copied
        copied = True


async def last_lines(
    store: Store, job: Job, streams: Sequence[Stream], lines: int
) -> tuple[list[Chunk], Positions]:
    """The chunks holding the last ``lines`` lines (the first one trimmed to where its line
    starts), and the stream positions to follow on from."""
    pos = {s: job.ingested(s) for s in Stream}
    if lines <= 0:
        return [], pos
    chunks = await store.read_backwards(job.id, list(streams), lines + 1, TAIL_MAX_BYTES)
    for ch in chunks:
        pos[ch.stream] = max(pos[ch.stream], ch.end)
    wanted = lines + (1 if chunks and chunks[-1].data.endswith(b"\n") else 0)
    seen = 0
    for i in range(len(chunks) - 1, -1, -1):
        data = chunks[i].data
        end = len(data)
        while (nl := data.rfind(b"\n", 0, end)) >= 0:
            seen += 1
            if seen == wanted:
                ch = chunks[i]
                first = Chunk(ch.stream, ch.offset + nl + 1, data[nl + 1 :])
                return [first, *chunks[i + 1 :]], pos
            end = nl
    return chunks, pos


async def follow(
    store: Store,
    job_id: str,
    streams: Sequence[Stream],
    pos: Positions,
    sink: Sink,
    *,
    poll_s: float = 0.1,
    check_owner: bool = True,
    host: str | None = None,
) -> Job:
    """Copy new output as it is stored until the job has ended and all of it was copied.

    The server running the job stores its output every 50 ms; this polls the database. If
    that server is gone (it died without recording the end), raises ``JobStateError``:
    judged by its pid only when it runs on ``host`` (this machine's name, the ``host``
    setting; default the hostname).
    """
    loop = asyncio.get_running_loop()
    next_check = loop.time() + _OWNER_CHECK_S
    while True:
        job = await store.get_job(job_id, events=False)
        copied = await copy_output(store, job_id, streams, pos, sink)
        if job.status.is_terminal and all(pos[s] >= job.ingested(s) for s in streams):
            return job
        if check_owner and loop.time() >= next_check:
            next_check = loop.time() + _OWNER_CHECK_S
            await _check_owner(store, job, host or socket.gethostname())
        if not copied:
            await asyncio.sleep(poll_s)


async def _check_owner(store: Store, job: Job, host: str) -> None:
    if job.status.is_terminal or job.owner_id is None:
        return
    server = await store.get_server(job.owner_id)
    if server is None or server.stopped_at is not None:
        alive = False
    elif server.hostname != host:
        return  # another host's server: its processes cannot be seen from here
    else:
        alive = proctree.is_alive(server.pid, server.pid_start, server.boot_id)
    if not alive:
        raise JobStateError(
            f"Job {job.id} is {job.status}, but the server that ran it has exited without "
            "recording its end. The next server started on this database marks it failed "
            "(lost) and stores the rest of its output; `show` or `logs` then show it."
        )
