"""Output capture: jobs write to spool files, and this module stores those files in SQLite.

A job's stdout and stderr are plain files beside the database, so a job writes at file speed,
never blocks on the server, never gets SIGPIPE when the server dies, and loses nothing if the
server crashes: whoever reconciles the job later stores the rest (see ``Ingester.adopt``).

The ingester reads what is new in each spool file (fixed-size reads, never by line), and stores
it in one transaction per pass together with the per-stream counters, so the counters in the job
row always say exactly how far a stream has been stored. Stored prefixes of a spool file are
hole-punched (freed on disk, offsets unchanged) and the file is deleted once the job has ended
and everything was stored, so disk use stays bounded for jobs that print without end.

Output limit, per job and stream: the first quarter of ``max_output_bytes`` is kept, then only
the most recent bytes; what falls between is counted in ``*_dropped``. Bytes that would be
dropped anyway are skipped unread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .db import lower_thread_priority, make_private_dirs
from .jobs import Job, Stream
from .store import OutputBatch, Store

log = logging.getLogger(__name__)

_PUNCH_MIN = 1024 * 1024
#: Checkpoint once output has been quiet this long (a checkpoint holds up the writer: it must not
#: delay recording that a job ended), or at once past the hard cap on the WAL's size.
_CHECKPOINT_QUIET_S = 1.0
_CHECKPOINT_MIN = 8 * 1024 * 1024
_CHECKPOINT_ALWAYS = 256 * 1024 * 1024
_BLOCK = 4096


@dataclass(slots=True)
class StreamState:
    path: Path
    fd: int | None
    offset: int = 0  # bytes of the stream consumed: stored or dropped
    stored: int = 0
    dropped: int = 0
    punched: int = 0
    tail: deque[tuple[int, int]] = field(default_factory=deque)  # chunks past the head


@dataclass(slots=True)
class Capture:
    job_id: str
    streams: dict[Stream, StreamState]
    seq: int = 0


@dataclass(slots=True)
class _Plan:
    """The outcome of reading one job's spool files, applied only once it has been stored."""

    capture: Capture
    batch: OutputBatch
    states: dict[Stream, StreamState]
    seq: int
    more: bool


def spool_paths(spool_dir: Path, job_id: str) -> dict[Stream, Path]:
    return {s: spool_dir / f"{job_id}.{s.value}" for s in Stream}


class Ingester:
    """Moves spooled output into the database in batches, for every job this process captures."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._dir = settings.spool_path
        self._captures: dict[str, Capture] = {}
        self._lock = asyncio.Lock()
        self._retired: list[Capture] = []  # finished while a pass ran: closed by the next
        self._head = settings.max_output_bytes // 4
        self._tail = settings.max_output_bytes - self._head
        self._puncher = _HolePuncher()
        self._rotate = 0
        self._stored_at = 0.0
        # One thread of its own for spool reads, at the storage priority (see Settings).
        self._pool = ThreadPoolExecutor(
            1, "ingest", initializer=lower_thread_priority, initargs=(settings.storage_nice,)
        )

    # --- registration ---------------------------------------------------------------------

    def create_spool(self, job_id: str) -> dict[Stream, int]:
        """Create a job's spool files; returns write descriptors for the child (caller closes)."""
        make_private_dirs(self._dir)  # 0700 for each missing part, whatever the umask
        writers: dict[Stream, int] = {}
        states: dict[Stream, StreamState] = {}
        try:
            for stream, path in spool_paths(self._dir, job_id).items():
                writers[stream] = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
                # Read-write: punching holes needs a writable descriptor.
                states[stream] = StreamState(path, os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError:
            for fd in (*writers.values(), *(s.fd for s in states.values())):
                if fd is not None:
                    os.close(fd)
            raise
        self._captures[job_id] = Capture(job_id, states)
        return writers

    def discard(self, job_id: str) -> None:
        """Forget a job that never started: close and delete its spool files."""
        cap = self._captures.pop(job_id, None)
        if cap is not None:
            self._close(cap, unlink=True)

    def written(self, job_id: str) -> dict[Stream, int] | None:
        """Bytes the job has written so far, from its spool files (None once they are gone)."""
        sizes: dict[Stream, int] = {}
        for stream, path in spool_paths(self._dir, job_id).items():
            try:
                sizes[stream] = path.stat().st_size
            except OSError:
                return None
        return sizes

    def last_write(self, job_id: str) -> float | None:
        """When the job last wrote output (newest spool file change, epoch seconds)."""
        times = []
        for path in spool_paths(self._dir, job_id).values():
            with contextlib.suppress(OSError):
                times.append(path.stat().st_mtime)
        return max(times) if times else None

    # --- ingestion ------------------------------------------------------------------------

    async def run(self) -> None:
        """Ingest forever: immediately again while there is a backlog, else every interval;
        checkpoint the WAL when output has gone quiet (or when it grows past a hard cap)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                more = await self._pass(None)
                wal = self._store.wal_bytes()
                quiet = loop.time() - self._stored_at > _CHECKPOINT_QUIET_S
                if (quiet and wal > _CHECKPOINT_MIN) or wal > _CHECKPOINT_ALWAYS:
                    await self._store.checkpoint()
            except Exception:  # task boundary: log, back off, keep capturing
                log.exception("ingest_failed")
                more = False
                await asyncio.sleep(1.0)
            await asyncio.sleep(0 if more else self._settings.ingest_interval_s)

    async def flush(self, job_id: str) -> None:
        """Store what the job has written so far (one bounded pass), so a read sees it."""
        if job_id in self._captures:
            await self._pass([job_id])

    async def finish(self, job_id: str) -> None:
        """Store everything the job wrote, then delete its spool files. For ended jobs."""
        # Only what was written when the job ended: a background grandchild that keeps the
        # file open and keeps writing must not keep this loop going.
        target = self._sizes(job_id)
        cap = self._captures.get(job_id)
        if cap is not None and all(st.offset >= target.get(s, 0) for s, st in cap.streams.items()):
            # All of it is stored already (or it printed nothing): no pass, so no wait for a
            # background pass to finish. One in progress may still read these files: they are
            # closed by whichever pass comes next.
            del self._captures[job_id]
            if self._lock.locked():
                self._retired.append(cap)
            else:
                self._close(cap, unlink=True)
            return
        while job_id in self._captures and await self._pass([job_id]):
            cap = self._captures[job_id]
            if all(st.offset >= target.get(s, 0) for s, st in cap.streams.items()):
                break
        done = self._captures.pop(job_id, None)
        if done is not None:
            self._close(done, unlink=True)

    async def adopt(self, job: Job) -> None:
        """Store the rest of a job whose server died, resuming from the counters in its row."""
        states: dict[Stream, StreamState] = {}
        seq = -1
        for stream, path in spool_paths(self._dir, job.id).items():
            layout, seq = await self._store.chunk_layout(job.id, stream)
            fd: int | None
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = None
            st = StreamState(path, fd)
            st.offset = job.ingested(stream)
            st.stored = sum(n for _, n in layout)
            st.dropped = job.stdout_dropped if stream is Stream.STDOUT else job.stderr_dropped
            st.tail.extend((o, n) for o, n in layout if o >= self._head)
            states[stream] = st
        self._captures[job.id] = Capture(job.id, states, seq + 1)
        await self.finish(job.id)

    def _sizes(self, job_id: str) -> dict[Stream, int]:
        cap = self._captures.get(job_id)
        if cap is None:
            return {}
        return {s: os.fstat(st.fd).st_size for s, st in cap.streams.items() if st.fd is not None}

    async def close(self) -> None:
        async with self._lock:
            self._close_retired()
            for cap in self._captures.values():
                self._close(cap, unlink=False)
            self._captures.clear()
        self._pool.shutdown(wait=False)

    def _close(self, cap: Capture, *, unlink: bool) -> None:
        for st in cap.streams.values():
            if st.fd is not None:
                os.close(st.fd)
                st.fd = None
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    st.path.unlink()

    def _close_retired(self) -> None:
        while self._retired:
            self._close(self._retired.pop(), unlink=True)

    async def _pass(self, only: Iterable[str] | None) -> bool:
        async with self._lock:
            self._close_retired()
            if only is None:
                caps = list(self._captures.values())
                self._rotate = (self._rotate + 1) % max(1, len(caps))
                caps = caps[self._rotate :] + caps[: self._rotate]  # fair share of the budget
            else:
                caps = [self._captures[j] for j in only if j in self._captures]
            if not caps:
                return False
            plans = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._plan_all, caps
            )
            changed = [p for p in plans if p.batch.chunks or p.batch.counters]
            if changed:
                await self._store.write_output([p.batch for p in changed])
                self._stored_at = asyncio.get_running_loop().time()
            for p in changed:
                p.capture.streams = p.states
                p.capture.seq = p.seq
            return any(p.more for p in plans)

    # --- runs in a worker thread: file I/O only, no shared state is changed ------------------

    def _plan_all(self, caps: list[Capture]) -> list[_Plan]:
        budget = self._settings.ingest_batch_bytes
        plans = []
        for cap in caps:
            plan = self._plan(cap, budget)
            budget -= sum(len(c[3]) for c in plan.batch.chunks)
            plans.append(plan)
        return plans

    def _plan(self, cap: Capture, budget: int) -> _Plan:
        batch = OutputBatch(cap.job_id)
        states: dict[Stream, StreamState] = {}
        seq, more = cap.seq, False
        for stream, old in cap.streams.items():
            st = StreamState(
                old.path, old.fd, old.offset, old.stored, old.dropped, old.punched, deque(old.tail)
            )
            states[stream] = st
            if st.fd is None:
                continue
            self._punch(st)
            size = os.fstat(st.fd).st_size
            start = st.offset
            while st.offset < size and budget > 0:
                if st.offset >= self._head and size - st.offset > self._tail:
                    # Everything before the last ``tail`` bytes would be dropped: skip it unread.
                    st.dropped += size - self._tail - st.offset
                    st.offset = size - self._tail
                limit = self._head if st.offset < self._head else size
                want = min(self._settings.chunk_bytes, budget, limit - st.offset, size - st.offset)
                data = os.pread(st.fd, want, st.offset)
                if not data:
                    break
                batch.chunks.append((stream, seq, st.offset, data))
                if st.offset >= self._head:
                    st.tail.append((st.offset, len(data)))
                seq += 1
                st.offset += len(data)
                st.stored += len(data)
                budget -= len(data)
            self._trim(stream, st, batch)
            more = more or st.offset < size
            if st.offset != start:
                batch.counters.update(
                    {
                        f"{stream}_bytes": st.offset,
                        f"{stream}_stored": st.stored,
                        f"{stream}_dropped": st.dropped,
                    }
                )
        return _Plan(cap, batch, states, seq, more)

    def _trim(self, stream: Stream, st: StreamState, batch: OutputBatch) -> None:
        kept = sum(n for _, n in st.tail)
        lo = hi = None
        while kept > self._tail and st.tail:
            off, n = st.tail.popleft()
            lo = off if lo is None else lo
            hi = off + n
            kept -= n
            st.stored -= n
            st.dropped += n
        if lo is not None and hi is not None:
            batch.drops.append((stream, lo, hi))

    def _punch(self, st: StreamState) -> None:
        end = st.offset - st.offset % _BLOCK
        if (
            st.fd is not None
            and end - st.punched >= _PUNCH_MIN
            and self._puncher.punch(st.fd, st.punched, end - st.punched)
        ):
            st.punched = end


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class _HolePuncher:
    """``fallocate(PUNCH_HOLE)``: frees a file's blocks without changing its size or offsets."""

    def __init__(self) -> None:
        self._fallocate: ctypes._NamedFuncPointer | None = None
        try:
            fn = ctypes.CDLL(None, use_errno=True).fallocate64
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            self._fallocate = fn
        except (OSError, AttributeError):
            log.info("hole_punching_unavailable")

    def punch(self, fd: int, start: int, length: int) -> bool:
        if self._fallocate is None or length <= 0:
            return False
        if self._fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS):
            log.info("hole_punching_unsupported errno=%d", err)
            self._fallocate = None
        return False
