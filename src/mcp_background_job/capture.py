"""Output capture: jobs write to spool files, and this module stores those files in SQLite.

Import rule: layer ``processes`` in ``tests/test_layers.py``: the store, ``config`` and below;
never the runner, ``app`` or the MCP layer.

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
dropped anyway are skipped unread, and freed on disk even while nothing can be stored (the
database locked by another program for minutes): whatever happens to storing, a spool file holds
at most about ``max_output_bytes`` per stream that is not stored yet. Whoever stores the rest
later (this server, or the next one after a crash) skips those bytes too, so it never reads a
freed part.

Output written after a job ended (by a background process it left) is not stored: the spool
files are deleted at the end, and while such a process still writes into one, what it writes
is freed as it comes (see ``release``).

Spool files are created once (``O_EXCL``), never truncated: a job has one run and one output.

End files: when a job's main process exits, the runner leaves its exit status beside its spool
files (``<id>.end.<returncode>.<microseconds>[.disk-full]``, an empty file: the facts are in
its name, so it can be created on a full disk) until the end is recorded in the database.
Whoever takes over a job of a server that died or stopped before recording it records the true
end from there (see ``Runner.reconcile``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .config import Settings
from .db import lower_thread_priority, make_private_dirs
from .jobs import Job, Stream
from .store import Drop, NewChunk, OutputBatch, Store, StreamCounters

log = logging.getLogger(__name__)

_PUNCH_MIN = 1024 * 1024
#: Less free space than this where spool files are is a full disk: a write of a job's output
#: most likely failed (a block or two may be left over after a write failed for lack of space).
_FULL_BELOW = 64 * 1024
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


@dataclass(frozen=True, slots=True)
class EndRecord:
    """How a job's main process ended, as its end file says."""

    returncode: int  # negative: killed by that signal
    ended_at: datetime
    disk_full: bool = False


_END = ".end."
_DISK_FULL_FLAG = "disk-full"


def _end_name(job_id: str, end: EndRecord) -> str:
    micros = round(end.ended_at.timestamp() * 1_000_000)
    flag = f".{_DISK_FULL_FLAG}" if end.disk_full else ""
    return f"{job_id}{_END}{end.returncode}.{micros}{flag}"


def _parse_end(name: str) -> tuple[str, EndRecord] | None:
    job_id, sep, rest = name.partition(_END)
    parts = rest.split(".")
    if not sep or len(parts) not in (2, 3):
        return None
    try:
        returncode, micros = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    ended_at = datetime.fromtimestamp(micros / 1_000_000, UTC)
    return job_id, EndRecord(returncode, ended_at, parts[2:] == [_DISK_FULL_FLAG])


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says that the disk is full."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(cur).lower()
        if "disk is full" in text or "disk full" in text or "no space left" in text:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def describe_failure(exc: BaseException) -> str:
    """One line for a log or a reason: "disk full" said plainly when it is."""
    # A driver error wrapped by SQLAlchemy: its own message, without the SQL and the link.
    orig = getattr(exc, "orig", None)
    cause = orig if isinstance(orig, BaseException) else exc
    text = " ".join(str(cause).split()) or type(cause).__name__
    if is_disk_full(exc):
        return f"disk full ({text})"
    return f"{type(cause).__name__}: {text}"


class FailureLog:
    """A failure that repeats (a full disk, a locked database) is logged once with its
    traceback, then counted: one line every ``every_s`` while it goes on, and one when it is
    over. (Storing output retried every second with a traceback each time: 69 in 75 s.)"""

    def __init__(self, event: str, every_s: float = 60.0) -> None:
        self.event = event
        self.every_s = every_s
        self.failures = 0
        self._logged_at = 0.0

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1:
            self._logged_at = now
            log.error("%s reason=%s", self.event, describe_failure(exc), exc_info=exc)
        elif now - self._logged_at >= self.every_s:
            self._logged_at = now
            log.error("%s failures=%d reason=%s", self.event, self.failures, describe_failure(exc))

    def succeeded(self) -> None:
        if self.failures:
            log.info("%s_over failures=%d", self.event, self.failures)
            self.failures = 0


class Ingester:
    """Moves spooled output into the database in batches, for every job this process captures.

    Over the ~400-line bound (~490) on purpose: adopting, resuming a detached job, reading,
    trimming past the spool bound, flushing and sleeping while idle all act on one per-job
    table of offsets under one lock; the pure parts (the batch plan, the punching of spool
    files) are already module functions."""

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
        #: (``_stored_at``, WAL size) at the last checkpoint: see ``_checkpoint_owed``.
        self._checkpointed = (-1.0, 0)
        #: Set when there is work (a capture registered); the loops wait on it when idle, so a
        #: server with no jobs does not wake 40 times a second. Set through ``_loop`` from any
        #: thread (spawns may run in a worker thread).
        self._work = asyncio.Event()  # the ingest loop's
        self._bound_work = asyncio.Event()  # the disk bound's
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Ended jobs' spool files, deleted but kept open while a process the job left may still
        #: write into them: what it writes is freed as it comes (see ``release``).
        self._drained: dict[str, Capture] = {}
        #: Drained while a pass was in progress, which may still read them: not freed before the
        #: next pass starts.
        self._drained_in_pass: set[str] = set()
        #: (job, stream) -> how far bytes that the output limit drops have been freed.
        self._freed: dict[tuple[str, Stream], int] = {}
        # One thread of its own for spool reads, at the storage priority (see Settings).
        self._pool = ThreadPoolExecutor(
            1, "ingest", initializer=lower_thread_priority, initargs=(settings.storage_nice,)
        )

    @property
    def spool_dir(self) -> Path:
        return self._dir

    # --- registration ---------------------------------------------------------------------

    def create_spool(self, job_id: str) -> dict[Stream, int]:
        """Create a job's spool files; returns write descriptors for the child (caller closes).

        Exclusively: a file that exists already holds output of a run of this job (a job has
        one run), so it is never truncated or appended to; the start fails instead."""
        make_private_dirs(self._dir)  # 0700 for each missing part, whatever the umask
        writers: dict[Stream, int] = {}
        states: dict[Stream, StreamState] = {}
        try:
            for stream, path in spool_paths(self._dir, job_id).items():
                writers[stream] = os.open(
                    path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
                # Read-write: punching holes needs a writable descriptor.
                states[stream] = StreamState(path, os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError:
            for fd in (*writers.values(), *(s.fd for s in states.values())):
                if fd is not None:
                    os.close(fd)
            for st in states.values():  # only the files created here
                with contextlib.suppress(OSError):
                    st.path.unlink()
            raise
        self._captures[job_id] = Capture(job_id, states)
        self._wake()
        return writers

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._work.set)
            loop.call_soon_threadsafe(self._bound_work.set)

    def _idle(self) -> bool:
        """Nothing to ingest or free: no live captures, no drained spools."""
        return not self._captures and not self._drained and not self._retired

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

    # --- end files (see the module docstring) ------------------------------------------------

    def write_end(self, job_id: str, end: EndRecord) -> None:
        """Leave the job's exit status beside its spool files until it is recorded."""
        try:
            fd = os.open(
                self._dir / _end_name(job_id, end),
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                0o600,
            )
            os.close(fd)
        except OSError as exc:
            log.warning("end_file_not_written id=%s reason=%s", job_id, describe_failure(exc))

    def read_end(self, job_id: str) -> EndRecord | None:
        for path in self._dir.glob(f"{job_id}{_END}*"):
            parsed = _parse_end(path.name)
            if parsed is not None and parsed[0] == job_id:
                return parsed[1]
        return None

    def clear_end(self, job_id: str) -> None:
        """Remove the job's end file once its end is in the database."""
        for path in self._dir.glob(f"{job_id}{_END}*"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def end_files(self) -> list[str]:
        """Ids of the jobs that have an end file."""
        try:
            names = [e.name for e in os.scandir(self._dir)]
        except FileNotFoundError:
            return []
        return [p[0] for p in map(_parse_end, names) if p is not None]

    def disk_full(self) -> bool:
        """No space is left where jobs write their output (what root may still use counts)."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return False
        free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
        return free * st.f_frsize < _FULL_BELOW

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
        self._loop = loop
        self._work.set()  # one look at what was registered before the loop ran
        self._bound_work.set()
        # Apart from the passes: a pass can wait minutes on a locked database.
        bound = loop.create_task(self._keep_bounded(), name="spool-bound")
        try:
            await self._ingest_forever(loop)
        finally:
            bound.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bound

    async def _ingest_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        failures = FailureLog("ingest_failed")
        while True:
            try:
                more = await self._pass(None)
                wal = self._store.wal_bytes()
                quiet = loop.time() - self._stored_at > _CHECKPOINT_QUIET_S
                if (quiet and self._checkpoint_owed(wal)) or wal > _CHECKPOINT_ALWAYS:
                    await self._store.checkpoint()
                    self._checkpointed = (self._stored_at, wal)
                failures.succeeded()
            except Exception as exc:  # noqa: BLE001 (task boundary, logged: back off, keep capturing)
                failures.failed(exc)
                more = False
                await asyncio.sleep(1.0)
            if more:
                await asyncio.sleep(0)
            elif self._idle():
                # No job to capture: sleep until one starts. A WAL left big by the last output
                # is checkpointed once it has been quiet, then nothing runs until new work.
                self._work.clear()
                if not self._idle():
                    continue
                owed = self._checkpoint_owed(self._store.wal_bytes())
                wait = _CHECKPOINT_QUIET_S if owed else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), wait)
            else:
                await asyncio.sleep(self._settings.ingest_interval_s)

    def _checkpoint_owed(self, wal: int) -> bool:
        """A big WAL written to since the last checkpoint. (A PASSIVE checkpoint leaves the file
        its size: without this, a server checkpointed a WAL it had already copied on every pass,
        20 times a second, for ever after the first big job.)"""
        stored_at, size = self._checkpointed
        return wal > _CHECKPOINT_MIN and (self._stored_at > stored_at or wal > size)

    async def flush(self, job_id: str) -> None:
        """Store what the job has written so far (one bounded pass), so a read sees it."""
        if job_id in self._captures:
            await self._pass([job_id])

    async def finish(self, job_id: str, *, drain: bool = True) -> None:
        """Store everything the job wrote, then delete its spool files. For ended jobs.

        ``drain``: keep the deleted files open until ``release`` (a process the job left may
        still write into them), freeing what is written meanwhile."""
        # Only what was written when the job ended: a background grandchild that keeps the
        # file open and keeps writing must not keep this loop going.
        target = self._sizes(job_id)
        cap = self._captures.get(job_id)
        if cap is not None and all(st.offset >= target.get(s, 0) for s, st in cap.streams.items()):
            # All of it is stored already (or it printed nothing): no pass, so no wait for a
            # background pass to finish. One in progress may still read these files: they are
            # closed by whichever pass comes next.
            del self._captures[job_id]
            self._ended(cap, drain)
            return
        while job_id in self._captures and await self._pass([job_id]):
            cap = self._captures[job_id]
            if all(st.offset >= target.get(s, 0) for s, st in cap.streams.items()):
                break
        done = self._captures.pop(job_id, None)
        if done is not None:
            self._ended(done, drain)

    def _ended(self, cap: Capture, drain: bool) -> None:
        for stream in cap.streams:
            self._freed.pop((cap.job_id, stream), None)
        if drain:
            for st in cap.streams.values():
                with contextlib.suppress(FileNotFoundError):
                    st.path.unlink()
            self._drained[cap.job_id] = cap
            if self._lock.locked():
                self._drained_in_pass.add(cap.job_id)
        elif self._lock.locked():
            self._retired.append(cap)  # a pass in progress may still read its files
        else:
            self._close(cap, unlink=True)

    def release(self, job_id: str) -> None:
        """Close an ended job's deleted spool files: none of its processes is left to write."""
        cap = self._drained.pop(job_id, None)
        self._drained_in_pass.discard(job_id)
        if cap is None:
            return
        if self._lock.locked():
            self._retired.append(cap)
        else:
            self._close(cap, unlink=True)

    async def adopt(self, job: Job) -> None:
        """Store the rest of a job whose server died, resuming from the counters in its row."""
        if job.id in self._captures:
            # Adopted before, and that could not finish (the database): its capture knows
            # exactly what was stored since (it moves on only once a write committed).
            await self.finish(job.id)
            return
        await self.resume(job)
        await self.finish(job.id, drain=False)  # its processes were stopped first

    async def resume(self, job: Job) -> None:
        """Capture a job this process did not start from where its row says storing stopped
        (the counters move only with the chunks they count, so nothing is stored twice or
        missed): the rest of a dead server's job, or a detached job adopted while it runs."""
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
        self._wake()

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
            for cap in self._drained.values():
                self._close(cap, unlink=True)
            self._drained.clear()
            self._drained_in_pass.clear()
        self._pool.shutdown(wait=False)

    def _close(self, cap: Capture, *, unlink: bool) -> None:
        for stream in cap.streams:
            self._freed.pop((cap.job_id, stream), None)
        for st in cap.streams.values():
            if st.fd is not None:
                os.close(st.fd)
                st.fd = None
            if unlink:
                with contextlib.suppress(FileNotFoundError):
                    st.path.unlink()

    def _close_retired(self) -> None:
        self._drained_in_pass.clear()  # (called as a pass starts: the one before has ended)
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

    # --- the disk bound ---------------------------------------------------------------------

    async def _keep_bounded(self) -> None:
        """Every interval: free what the output limit will drop anyway, for jobs whose output
        is not being stored fast enough (or at all), and what ended jobs' leftover processes
        write into deleted spool files."""
        loop = asyncio.get_running_loop()
        pause = self._settings.ingest_interval_s
        while True:
            await asyncio.sleep(pause)
            while self._idle():  # nothing can need freeing until a job starts
                self._bound_work.clear()
                if self._idle():
                    await self._bound_work.wait()
            try:
                work = self._droppable()
                if work:
                    await loop.run_in_executor(self._pool, self._free, work)
                self._free_drained()
                # A job flooding output: look again sooner (what it writes in one interval is
                # what a spool can hold beyond the limit).
                pause = self._settings.ingest_interval_s / (5 if work else 1)
            except Exception:  # task boundary: the bound must keep going
                log.exception("spool_bound_failed")
                await asyncio.sleep(1.0)

    def _droppable(self) -> list[tuple[Path, int, int]]:
        """(spool file, start, end) ranges that no read will ever use: past the head, before
        the last ``tail`` bytes, and not stored. Computed from what has been stored (committed
        offsets only grow) and sizes read now: every later read, by this server or by the next
        one from the counters in the database, skips them (see ``_plan``)."""
        work = []
        for cap in self._captures.values():
            for stream, st in cap.streams.items():
                if st.fd is None:
                    continue
                size = os.fstat(st.fd).st_size
                key = (cap.job_id, stream)
                start = max(self._head, st.offset, self._freed.get(key, 0))
                start += -start % _BLOCK
                end = size - self._tail
                end -= end % _BLOCK
                if end - start >= _PUNCH_MIN:
                    work.append((st.path, start, end))
                    self._freed[key] = end
        return work

    def _free(self, work: list[tuple[Path, int, int]]) -> None:
        """Punch the ranges (in the ingest thread, so never under a read of the same file: a
        read planned before is done, one planned after skips them). By path: a descriptor
        closed meanwhile could have been reused for another file."""
        for path, start, end in work:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # the job ended and everything was stored
            try:
                self._puncher.punch(fd, start, end - start)
            finally:
                os.close(fd)

    def _free_drained(self) -> None:
        for job_id, cap in self._drained.items():
            if job_id in self._drained_in_pass:
                continue
            for st in cap.streams.values():
                if st.fd is None:
                    continue
                size = os.fstat(st.fd).st_size
                end = size - size % _BLOCK
                if end - st.punched >= _PUNCH_MIN and self._puncher.punch(
                    st.fd, st.punched, end - st.punched
                ):
                    st.punched = end

    # --- runs in a worker thread: file I/O only, no shared state is changed ------------------

    def _plan_all(self, caps: list[Capture]) -> list[_Plan]:
        budget = self._settings.ingest_batch_bytes
        plans = []
        for cap in caps:
            plan = self._plan(cap, budget)
            budget -= sum(len(c.data) for c in plan.batch.chunks)
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
                batch.chunks.append(NewChunk(stream, seq, st.offset, data))
                if st.offset >= self._head:
                    st.tail.append((st.offset, len(data)))
                seq += 1
                st.offset += len(data)
                st.stored += len(data)
                budget -= len(data)
            self._trim(stream, st, batch)
            more = more or st.offset < size
            if st.offset != start:
                batch.counters.append(StreamCounters(stream, st.offset, st.stored, st.dropped))
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
            batch.drops.append(Drop(stream, lo, hi))

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
