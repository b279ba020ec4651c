"""The operations behind the tools: input checks, cursors, text decoding, and result models.

Usable without MCP (tests and the CLI drive it directly); ``server`` only maps tools onto it.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from .capture import Ingester
from .config import Settings
from .db import utcnow
from .errors import InvalidRequest
from .jobs import Chunk, Job, JobStatus, Stream
from .models import (
    InteractResult,
    JobView,
    ListResult,
    OutputResult,
    TailResult,
    WaitResult,
    summary,
    view,
)
from .runner import Runner
from .store import JobFilter, StatusChange, Store

log = logging.getLogger(__name__)

StreamChoice = Literal["stdout", "stderr", "both"]
ProgressFn = Callable[[float, float, str], Awaitable[None]]

#: The most text one read returns: bigger tool results choke clients (see docs/mcp notes).
MAX_READ_BYTES = 65536
MAX_TAIL_LINES = 10_000
#: ``wait`` returns before the 60 s request timeout of common clients.
MAX_WAIT_S = 50.0
PROGRESS_EVERY_S = 5.0
_LABEL = re.compile(r"^[\w.:/@+-]{1,64}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT")


class App:
    """A running server's jobs: the store, the ingester and the runner, wired together."""

    def __init__(self, settings: Settings, store: Store, runner: Runner) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner

    @classmethod
    async def open(cls, settings: Settings) -> App:
        """Migrate the database, reconcile what dead servers left, and start capturing."""
        store = Store(settings.db, writer_nice=settings.storage_nice)
        await store.open()
        runner = Runner(settings, store, Ingester(settings, store))
        try:
            await runner.start()
        except BaseException:
            await store.close()
            raise
        return cls(settings, store, runner)

    async def close(self) -> None:
        """Stop running jobs (recorded as killed: server shutdown), store output, close the DB."""
        try:
            await self.runner.shutdown()
        finally:
            await self.store.close()

    async def _job(self, job_id: str) -> Job:
        return await self.store.get_job(await self.store.resolve_id(job_id))

    def _view(self, job: Job) -> JobView:
        written = self.runner.ingester.written(job.id) if job.status is JobStatus.RUNNING else None
        return view(job, utcnow(), written)

    # --- tools ----------------------------------------------------------------------------

    async def execute(
        self,
        command: str,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        labels: Sequence[str] = (),
    ) -> JobView:
        if not command.strip():
            raise InvalidRequest(
                "command is empty: pass a shell command line, for example 'make test'."
            )
        if "\0" in command:
            raise InvalidRequest("command contains a NUL character, which no shell accepts.")
        workdir = Path(cwd).expanduser() if cwd else Path.cwd()
        if not workdir.is_absolute():
            workdir = Path.cwd() / workdir
        if not workdir.is_dir():
            raise InvalidRequest(
                f"cwd {str(workdir)!r} does not exist or is not a directory: pass an existing "
                f"directory, or omit cwd to run in {str(Path.cwd())!r}."
            )
        for key, value in (env or {}).items():
            if not _ENV_KEY.match(key) or "\0" in value:
                raise InvalidRequest(
                    f"env variable {key!r} is not valid: names are letters, digits and _ (not "
                    "starting with a digit), and values cannot contain NUL."
                )
        if timeout_s is not None and timeout_s <= 0:
            raise InvalidRequest("timeout_s must be greater than 0 (or omitted for no timeout).")
        for label in labels:
            if not _LABEL.match(label):
                raise InvalidRequest(
                    f"label {label!r} is not valid: use 1-64 letters, digits or . _ : / @ + -"
                )
        job = await self.runner.submit(
            command,
            cwd=str(workdir.resolve()),
            env=dict(env or {}),
            labels=list(labels),
            timeout_s=timeout_s,
        )
        return self._view(job)

    async def list_jobs(
        self,
        status: JobStatus | None = None,
        label: str | None = None,
        command_contains: str | None = None,
        since: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> ListResult:
        if not 1 <= limit <= 200:
            raise InvalidRequest("limit must be between 1 and 200.")
        flt = JobFilter(
            status=status,
            label=label,
            command_contains=command_contains,
            since=parse_since(since) if since else None,
        )
        jobs, next_cursor = await self.store.list_jobs(flt, limit=limit, cursor=cursor)
        now = utcnow()
        return ListResult(jobs=[summary(j, now) for j in jobs], next_cursor=next_cursor)

    async def status(self, job_id: str) -> JobView:
        return self._view(await self._job(job_id))

    async def output(
        self,
        job_id: str,
        stream: StreamChoice = "stdout",
        cursor: str | None = None,
        max_bytes: int = MAX_READ_BYTES,
    ) -> OutputResult:
        if not 1 <= max_bytes <= MAX_READ_BYTES:
            raise InvalidRequest(f"max_bytes must be between 1 and {MAX_READ_BYTES}.")
        job_id = await self.store.resolve_id(job_id)
        await self.runner.flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        pos = parse_cursor(cursor, job)
        streams = list(Stream) if stream == "both" else [Stream(stream)]
        text, pos, covered, dropped = await self._read(job, streams, pos, max_bytes)
        # Nothing covered: at most the start of a character the job has not finished writing.
        more = covered > 0 and any(pos[s] < job.ingested(s) for s in streams)
        return OutputResult(
            job_id=job.id,
            stream=stream,
            text=text,
            cursor=format_cursor(pos),
            bytes=covered,
            more=more,
            end=job.status.is_terminal and not more,
            dropped_bytes=dropped,
            status=job.status,
        )

    async def _read(
        self, job: Job, streams: list[Stream], pos: dict[Stream, int], max_bytes: int
    ) -> tuple[str, dict[Stream, int], int, int]:
        want = max(max_bytes, 4)  # enough for one whole character
        if len(streams) == 1:
            chunks = await self.store.read_stream(job.id, streams[0], pos[streams[0]], want)
        else:
            chunks = await self.store.read_interleaved(job.id, pos, want)
        lengths = {s: job.ingested(s) for s in Stream} if job.status.is_terminal else None
        result = decode_chunks(chunks, pos, max_bytes, lengths)
        if result[2] == 0 and chunks and max_bytes < 4:
            # Below one character: read the whole character rather than make no progress.
            result = decode_chunks(chunks, pos, 4, lengths)
        return result

    async def tail(
        self, job_id: str, lines: int = 50, stream: StreamChoice = "stdout"
    ) -> TailResult:
        if lines < 0:
            raise InvalidRequest("lines must be 0 or more (it counts lines from the end).")
        if lines > MAX_TAIL_LINES:
            raise InvalidRequest(
                f"lines must be at most {MAX_TAIL_LINES}; use `output` with a cursor to page."
            )
        job_id = await self.store.resolve_id(job_id)
        await self.runner.flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        streams = list(Stream) if stream == "both" else [Stream(stream)]
        chunks = (
            await self.store.read_backwards(job.id, streams, lines + 1, MAX_READ_BYTES)
            if lines
            else []
        )
        data = b"".join(c.data for c in chunks)
        body = data[:-1] if data.endswith(b"\n") else data
        parts = body.split(b"\n")
        found = len(parts) if len(parts) <= lines else lines
        text_bytes = b"\n".join(parts[-found:]) if found else b""
        truncated = bool(chunks) and len(parts) <= lines and len(data) >= MAX_READ_BYTES
        if truncated and len(text_bytes) > MAX_READ_BYTES:
            text_bytes = text_bytes[-MAX_READ_BYTES:]
        if text_bytes and data.endswith(b"\n"):
            text_bytes += b"\n"
        return TailResult(
            job_id=job.id,
            stream=stream,
            text=text_bytes.decode("utf-8", "replace"),
            lines=found if text_bytes else 0,
            truncated=truncated,
            status=job.status,
        )

    async def interact(
        self, job_id: str, input: str, wait_s: float = 1.0, eof: bool = False
    ) -> InteractResult:
        if not 0 <= wait_s <= MAX_WAIT_S:
            raise InvalidRequest(f"wait_s must be between 0 and {MAX_WAIT_S}.")
        job = await self._job(job_id)
        data = input.encode()
        written = self.runner.ingester.written(job.id) or {s: job.ingested(s) for s in Stream}
        await self.runner.send_input(job, data, eof=eof)
        log.info("job_input id=%s bytes=%d eof=%s", job.id, len(data), eof)
        ended = await self.runner.wait_end(job.id, wait_s)
        await self.runner.flush(job.id)
        job = await self.store.get_job(job.id, events=False)
        pos = {s: await self._char_start(job.id, s, at) for s, at in written.items()}
        text, pos, _, _ = await self._read(job, list(Stream), pos, MAX_READ_BYTES)
        return InteractResult(
            job_id=job.id,
            bytes_written=len(data),
            eof_sent=eof,
            output=text,
            cursor=format_cursor(pos),
            status=job.status,
            ended=ended,
        )

    async def _char_start(self, job_id: str, stream: Stream, offset: int) -> int:
        """``offset``, moved back to the first byte of the UTF-8 character it falls inside."""
        lo = max(0, offset - 3)
        chunks = await self.store.read_stream(job_id, stream, lo, offset + 1 - lo)
        if not chunks or any(a.end != b.offset for a, b in itertools.pairwise(chunks)):
            return offset
        base, data = chunks[0].offset, b"".join(c.data for c in chunks)

        def continuation(at: int) -> bool:
            return base <= at < base + len(data) and 0x80 <= data[at - base] <= 0xBF

        at = offset
        while at > lo and continuation(at):
            at -= 1
        return at

    async def recent_output(self, job_id: str) -> str:
        """The last ``MAX_READ_BYTES`` of output (both streams, in the order stored), with a note
        first when earlier output is left out (for the ``job://{id}/output`` resource)."""
        tail = await self.tail(job_id, MAX_TAIL_LINES, "both")
        job = await self.store.get_job(tail.job_id, events=False)
        total = job.stdout_bytes + job.stderr_bytes
        shown = len(tail.text.encode())
        if total > shown:
            return (
                f"[... the first {total - shown} of {total} bytes are left out: read them "
                "with the `output` tool ...]\n" + tail.text
            )
        return tail.text

    async def changes(self, after: int | None) -> tuple[list[StatusChange], int]:
        """Status changes of every job in the database after event ``after`` (None: from now
        on), and the cursor to pass next time."""
        if after is None:
            _, newest = await self.store.status_changes(0, limit=0)
            return [], newest
        changes, newest = await self.store.status_changes(after)
        if newest < after:  # pruning removed the newest events: go on from what is left
            return [], newest
        return changes, changes[-1].event_id if changes else after

    async def write_stdin(self, job_id: str, data: bytes, *, eof: bool = False) -> None:
        """Queue bytes for the job's stdin and return at once (the command line's ``run``)."""
        job = await self.store.get_job(await self.store.resolve_id(job_id), events=False)
        await self.runner.send_input(job, data, eof=eof)

    async def kill(
        self, job_id: str, signal_name: str = "TERM", grace_s: float | None = None
    ) -> JobView:
        sig = parse_signal(signal_name)
        grace = self.settings.kill_grace_s if grace_s is None else grace_s
        if not 0 <= grace <= 300:
            raise InvalidRequest("grace_s must be between 0 and 300 seconds.")
        job_id = await self.store.resolve_id(job_id)
        return self._view(await self.runner.kill(job_id, sig, grace))

    async def wait(
        self, job_id: str, timeout_s: float = 30.0, progress: ProgressFn | None = None
    ) -> WaitResult:
        if timeout_s < 0:
            raise InvalidRequest("timeout_s must be 0 or more.")
        capped = min(timeout_s, MAX_WAIT_S)
        job_id = await self.store.resolve_id(job_id)
        loop = asyncio.get_running_loop()
        began = loop.time()
        finished = False
        while True:
            left = capped - (loop.time() - began)
            finished = await self.runner.wait_end(job_id, max(0.0, min(PROGRESS_EVERY_S, left)))
            if finished or loop.time() - began >= capped:
                break
            if progress is not None:
                waited = loop.time() - began
                await progress(waited, capped, f"job {job_id} still running after {waited:.0f} s")
        waited = round(loop.time() - began, 3)
        job = await self.store.get_job(job_id)
        if finished:
            message = f"Job {job_id} has ended: {job.status}."
        else:
            message = f"Job {job_id} is still {job.status} after {waited:.1f} s; call wait again."
            if timeout_s > MAX_WAIT_S:
                message += f" (One call waits at most {MAX_WAIT_S:.0f} s, under clients' timeouts.)"
        return WaitResult(finished=finished, waited_s=waited, message=message, job=self._view(job))


# --- pure helpers --------------------------------------------------------------------------


def format_cursor(pos: Mapping[Stream, int]) -> str:
    return f"{pos[Stream.STDOUT]}:{pos[Stream.STDERR]}"


def parse_cursor(cursor: str | None, job: Job) -> dict[Stream, int]:
    """``"<stdout offset>:<stderr offset>"`` as returned by reads; None means the start."""
    if cursor is None or cursor == "":
        return {Stream.STDOUT: 0, Stream.STDERR: 0}
    hint = (
        "pass the cursor returned by a previous output/interact call unchanged, or omit it "
        "to read from the start."
    )
    try:
        out, err = (int(x) for x in cursor.split(":"))
    except ValueError:
        raise InvalidRequest(f"Invalid cursor {cursor!r}: {hint}") from None
    pos = {Stream.STDOUT: out, Stream.STDERR: err}
    for s, at in pos.items():
        if at < 0 or at > job.ingested(s):
            raise InvalidRequest(
                f"Cursor {cursor!r} points past the stored {s} of job {job.id} "
                f"({job.ingested(s)} bytes): {hint}"
            )
    return pos


def decode_chunks(
    chunks: Sequence[Chunk],
    pos: dict[Stream, int],
    max_bytes: int,
    final_lengths: Mapping[Stream, int] | None,
) -> tuple[str, dict[Stream, int], int, int]:
    """Text of ``chunks`` from the ``pos`` offsets, up to ``max_bytes``.

    Returns the text, the new offsets, the bytes covered and the bytes skipped over dropped gaps.
    A multi-byte character cut by the limit, or not yet complete in a running job's output, is
    left for the next read, so reads split anywhere never show a replacement character that the
    output does not contain. ``final_lengths``: the streams' lengths once the job has ended (an
    incomplete character at the very end is then shown as U+FFFD); None while it runs.
    """
    pos = dict(pos)
    decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in Stream}
    parts: list[str] = []
    taken = dropped = 0
    for ch in chunks:
        at = pos[ch.stream]
        if ch.end <= at:
            continue
        if ch.offset > at:
            gap = ch.offset - at
            dropped += gap
            parts.append(f"\n[... {gap} bytes of {ch.stream} dropped by the output limit ...]\n")
            pos[ch.stream] = at = ch.offset
        piece = ch.data[at - ch.offset : at - ch.offset + max_bytes - taken]
        parts.append(decoders[ch.stream].decode(piece))
        pos[ch.stream] += len(piece)
        taken += len(piece)
        if taken >= max_bytes:
            break
    for s, dec in decoders.items():
        pending = dec.getstate()[0]
        if pending and (final_lengths is None or pos[s] < final_lengths[s]):
            pos[s] -= len(pending)  # finish the character on the next read
            taken -= len(pending)
        elif pending:
            parts.append(dec.decode(b"", final=True))
    return "".join(parts), pos, taken + dropped, dropped


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC if no zone) or an age such as ``30m``, ``2h``, ``7d``."""
    if m := _RELATIVE.match(text):
        return utcnow() - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"since {text!r} is not a time: use ISO 8601 (2026-11-25T10:00:00Z) or an age "
            "such as 30m, 2h, 7d."
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_signal(name: str) -> signal.Signals:
    key = name.strip().upper().removeprefix("SIG")
    if key.isdigit():
        try:
            return signal.Signals(int(key))
        except ValueError:
            pass
    elif key in _SIGNALS:
        return signal.Signals[f"SIG{key}"]
    raise InvalidRequest(
        f"Unknown signal {name!r}: use one of {', '.join(_SIGNALS)} (or its number)."
    )
