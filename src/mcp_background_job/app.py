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

from . import terminal
from .capture import Ingester
from .config import Settings
from .db import utcnow
from .errors import InvalidRequest, JobNotFound
from .jobs import Chunk, Job, JobOptions, JobStatus, Stream
from .models import (
    InteractResult,
    JobView,
    ListResult,
    OutputResult,
    ReturnedBecause,
    TailResult,
    WaitResult,
    summary,
    view,
)
from .runner import Runner
from .store import JobFilter, Store

log = logging.getLogger(__name__)

StreamChoice = Literal["stdout", "stderr", "both"]
#: How reads show output: ``plain`` as a person would see it on a terminal (escape sequences
#: removed, ``\r`` overwrites resolved), ``raw`` as written, ``auto`` plain for PTY jobs.
RenderChoice = Literal["auto", "plain", "raw"]
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
MAX_AFTER = 100
MAX_KEYS = 100
MAX_PRIORITY = 1000
DEFAULT_INTERACT_WAIT_S = 10.0
DEFAULT_SETTLE_S = 0.5
#: How often interact looks for new output and at the job's state while it waits.
_INTERACT_POLL_S = 0.05
#: Text at the end of the new output that ``until`` is matched against.
_UNTIL_WINDOW = 16384
#: The longest unfinished line a wait without input shows again (a prompt is shorter).
_PROMPT_LINE_MAX = 4096


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
        pty: bool = False,
        rows: int | None = None,
        cols: int | None = None,
        priority: int = 0,
        after: Sequence[str] = (),
        run_anyway: bool = False,
        idle_timeout_s: float | None = None,
        *,
        rerun_of: str | None = None,
        shell: str | None = None,
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
        if idle_timeout_s is not None and idle_timeout_s <= 0:
            raise InvalidRequest(
                "idle_timeout_s must be greater than 0 (or omitted for no idle timeout)."
            )
        for label in labels:
            if not _LABEL.match(label):
                raise InvalidRequest(
                    f"label {label!r} is not valid: use 1-64 letters, digits or . _ : / @ + -"
                )
        if not pty and (rows is not None or cols is not None):
            raise InvalidRequest("rows and cols set a terminal's size: they need pty=true.")
        if rows is not None and not 2 <= rows <= 1000:
            raise InvalidRequest("rows must be between 2 and 1000.")
        if cols is not None and not 10 <= cols <= 1000:
            raise InvalidRequest("cols must be between 10 and 1000.")
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidRequest(f"priority must be between -{MAX_PRIORITY} and {MAX_PRIORITY}.")
        if len(after) > MAX_AFTER:
            raise InvalidRequest(f"after can name at most {MAX_AFTER} jobs.")
        options = JobOptions(
            pty=pty,
            rows=(rows or self.settings.pty_rows) if pty else None,
            cols=(cols or self.settings.pty_cols) if pty else None,
            priority=priority,
            idle_timeout_s=idle_timeout_s,
            after=tuple([await self._dependency(d) for d in after]),
            run_anyway=run_anyway,
            rerun_of=rerun_of,
        )
        job = await self.runner.submit(
            command,
            cwd=str(workdir.resolve()),
            env=dict(env or {}),
            labels=list(labels),
            timeout_s=timeout_s,
            options=options,
            shell=shell,
        )
        return self._view(job)

    async def _dependency(self, job_id: str) -> str:
        try:
            return await self.store.resolve_id(job_id)
        except JobNotFound:
            raise InvalidRequest(
                f"after: no job with id {job_id!r}. Give ids of existing jobs (see `list`)."
            ) from None

    async def rerun(self, job_id: str) -> JobView:
        """A new job with the same command, cwd, env, labels, terminal, priority and timeouts
        (not the dependencies: those have run); it records which job it reran."""
        old = await self._job(job_id)
        return await self.execute(
            old.command,
            old.cwd,
            old.env,
            old.timeout_s,
            old.labels,
            pty=old.pty,
            rows=old.rows,
            cols=old.cols,
            priority=old.priority,
            idle_timeout_s=old.idle_timeout_s,
            rerun_of=old.id,
            shell=old.shell,
        )

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
        render: RenderChoice = "auto",
    ) -> OutputResult:
        if not 1 <= max_bytes <= MAX_READ_BYTES:
            raise InvalidRequest(f"max_bytes must be between 1 and {MAX_READ_BYTES}.")
        job_id = await self.store.resolve_id(job_id)
        await self._flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        pos = parse_cursor(cursor, job)
        streams = list(Stream) if stream == "both" else [Stream(stream)]
        plain = _plain(job, render)
        text, pos, covered, dropped = await self._read(job, streams, pos, max_bytes, plain)
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
            render="plain" if plain else "raw",
        )

    async def _flush(self, job_id: str) -> None:
        self.runner.pump(job_id)
        await self.runner.flush(job_id)

    async def _read(
        self,
        job: Job,
        streams: list[Stream],
        pos: dict[Stream, int],
        max_bytes: int,
        plain: bool = False,
    ) -> tuple[str, dict[Stream, int], int, int]:
        """Text from ``pos`` on (at most ``max_bytes`` of output): the text, the new positions,
        the bytes covered and the bytes skipped over dropped gaps. ``plain``: rendered as a
        terminal shows it; an escape sequence not complete yet is left for the next read."""
        want = max(max_bytes, 4)  # enough for one whole character
        if len(streams) == 1:
            chunks = await self.store.read_stream(job.id, streams[0], pos[streams[0]], want)
        else:
            chunks = await self.store.read_interleaved(job.id, pos, want)
        lengths = {s: job.ingested(s) for s in Stream} if job.status.is_terminal else None
        text, new, covered, dropped = decode_chunks(chunks, pos, max_bytes, lengths)
        if covered == 0 and chunks and max_bytes < 4:
            # Below one character: read the whole character rather than make no progress.
            text, new, covered, dropped = decode_chunks(chunks, pos, 4, lengths)
        if not plain:
            return text, new, covered, dropped
        if len(streams) == 1 and (lengths is None or new[streams[0]] < lengths[streams[0]]):
            held = terminal.incomplete_suffix(text)
            if held and "\ufffd" not in text[-held:]:
                size = len(text[-held:].encode())
                text = text[:-held]
                new[streams[0]] -= size
                covered -= size
        return terminal.render(text, job.cols), new, covered, dropped

    async def tail(
        self,
        job_id: str,
        lines: int = 50,
        stream: StreamChoice = "stdout",
        render: RenderChoice = "auto",
    ) -> TailResult:
        if lines < 0:
            raise InvalidRequest("lines must be 0 or more (it counts lines from the end).")
        if lines > MAX_TAIL_LINES:
            raise InvalidRequest(
                f"lines must be at most {MAX_TAIL_LINES}; use `output` with a cursor to page."
            )
        job_id = await self.store.resolve_id(job_id)
        await self._flush(job_id)
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
        text = text_bytes.decode("utf-8", "replace")
        plain = _plain(job, render)
        if plain and text:
            # Rendering can only merge lines (a cursor moved up): count what is shown.
            text = terminal.render(text, job.cols)
            found = text.count("\n") + (0 if text.endswith("\n") else 1)
        return TailResult(
            job_id=job.id,
            stream=stream,
            text=text,
            lines=found if text else 0,
            truncated=truncated,
            status=job.status,
            render="plain" if plain else "raw",
        )

    async def interact(
        self,
        job_id: str,
        input: str = "",
        wait_s: float = DEFAULT_INTERACT_WAIT_S,
        eof: bool = False,
        until: str | None = None,
        settle_s: float = DEFAULT_SETTLE_S,
        keys: Sequence[str] = (),
        render: RenderChoice = "auto",
    ) -> InteractResult:
        """Send ``input`` then ``keys`` (then end of input if ``eof``), and return the output
        that follows once the program is ready again, or at the latest after ``wait_s``:

        - ``until`` (a regex) matched the new output, read as plain text: ``prompt``;
        - without ``until``: the kernel shows the job blocked reading its terminal or stdin
          with all input read (twice in a row, output unchanged): ``waiting_for_input``;
          or, for a program whose reads the kernel does not show (it was not seen waiting
          before this call), output arrived and then nothing more for ``settle_s`` while no
          process of the job was running on a CPU: ``quiet``;
        - the job ended: ``ended``; else ``timeout``.

        With nothing to send, the output starts at the beginning of the line the program is on,
        so a prompt it printed before this call is shown (and ``until`` can match it).
        """
        if not 0 <= wait_s <= MAX_WAIT_S:
            raise InvalidRequest(f"wait_s must be between 0 and {MAX_WAIT_S}.")
        if not 0.05 <= settle_s <= MAX_WAIT_S:
            raise InvalidRequest(f"settle_s must be between 0.05 and {MAX_WAIT_S}.")
        if len(keys) > MAX_KEYS:
            raise InvalidRequest(f"keys can hold at most {MAX_KEYS} keys per call.")
        parsed = [terminal.parse_key(k) for k in keys]
        pattern: re.Pattern[str] | None = None
        if until is not None:
            try:
                pattern = re.compile(until, re.MULTILINE)
            except re.error as exc:
                raise InvalidRequest(
                    f"until {until!r} is not a valid regular expression: {exc}."
                ) from None
        job = await self._job(job_id)
        data = input.encode()
        only_wait = not data and not parsed and not eof
        if only_wait:
            await self._flush(job.id)
        else:
            self.runner.pump(job.id)
        written = self.runner.ingester.written(job.id) or {s: job.ingested(s) for s in Stream}
        start = await self._line_starts(job.id, written) if only_wait else written
        before = await self.runner.input_state(job.id) if pattern is None else None
        await self.runner.send_input(job, data, keys=parsed, eof=eof)
        log.info("job_input id=%s bytes=%d keys=%d eof=%s", job.id, len(data), len(parsed), eof)
        reason = await self._await_ready(
            job,
            start,
            wait_s,
            pattern,
            settle_s,
            trusted=bool(before and before.waiting),
            seen=written if start == written else None,
        )
        await self._flush(job.id)
        job = await self.store.get_job(job.id, events=False)
        pos = {s: await self._char_start(job.id, s, at) for s, at in start.items()}
        streams = [Stream.STDOUT] if job.pty else list(Stream)
        plain = _plain(job, render)
        text, pos, covered, _ = await self._read(job, streams, pos, MAX_READ_BYTES, plain)
        return InteractResult(
            job_id=job.id,
            bytes_written=len(data) + sum(len(k.data) for k in parsed),
            eof_sent=eof,
            output=text,
            cursor=format_cursor(pos),
            more=covered > 0 and any(pos[s] < job.ingested(s) for s in streams),
            status=job.status,
            ended=job.status.is_terminal,
            returned_because=reason,
            render="plain" if plain else "raw",
        )

    async def _await_ready(
        self,
        job: Job,
        start: dict[Stream, int],
        wait_s: float,
        pattern: re.Pattern[str] | None,
        settle_s: float,
        *,
        trusted: bool,
        seen: dict[Stream, int] | None,
    ) -> ReturnedBecause:
        """Wait as ``interact`` describes; returns why it stopped waiting.

        ``start``: where the output to match and return begins. ``seen``: the output sizes
        when the wait began; None counts what lies after ``start`` as new output at once.
        ``trusted``: the job was seen waiting for input before the write, so the kernel shows
        its reads and only that (not quiet output) means it is ready again.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        sizes = seen
        last_change = loop.time()
        got_output = False
        ready_streak = 0
        window = ""
        window_pos: dict[Stream, int] | None = None
        streams = [Stream.STDOUT] if job.pty else list(Stream)
        while True:
            left = deadline - loop.time()
            if await self.runner.wait_end(job.id, max(0.0, min(_INTERACT_POLL_S, left))):
                return "ended"
            if left <= 0:
                return "timeout"
            self.runner.pump(job.id)
            now_sizes = self.runner.ingester.written(job.id)
            now = loop.time()
            changed = now_sizes is not None and now_sizes != sizes
            if changed:
                sizes, last_change, got_output, ready_streak = now_sizes, now, True, 0
            if pattern is not None:
                if changed:
                    await self.runner.flush(job.id)
                    current = await self.store.get_job(job.id, events=False)
                    if window_pos is None:
                        window_pos = {
                            s: await self._char_start(job.id, s, at) for s, at in start.items()
                        }
                    while True:
                        text, window_pos, covered, _ = await self._read(
                            current, streams, window_pos, MAX_READ_BYTES
                        )
                        window = (window + text)[-_UNTIL_WINDOW:]
                        if covered < MAX_READ_BYTES:
                            break
                    if pattern.search(terminal.render(window, job.cols)):
                        return "prompt"
                continue
            if now - last_change < _INTERACT_POLL_S:
                continue
            state = await self.runner.input_state(job.id)
            if state is None:
                continue
            ready_streak = ready_streak + 1 if state.waiting else 0
            if ready_streak >= 2:
                return "waiting_for_input"
            if not trusted and got_output and now - last_change >= settle_s and not state.busy:
                return "quiet"

    async def _line_starts(self, job_id: str, ends: dict[Stream, int]) -> dict[Stream, int]:
        """Where the unfinished last line before ``ends`` begins, per stream (``ends`` itself
        if that line is longer than a prompt, or not stored)."""
        starts: dict[Stream, int] = {}
        for stream, end in ends.items():
            lo = max(0, end - _PROMPT_LINE_MAX)
            chunks = await self.store.read_stream(job_id, stream, lo, end - lo)
            data = b"".join(c.data for c in chunks)
            if not chunks or chunks[0].offset > lo or chunks[0].offset + len(data) < end:
                starts[stream] = end
                continue
            tail = data[lo - chunks[0].offset : end - chunks[0].offset]
            cut = tail.rfind(b"\n")
            starts[stream] = lo + cut + 1 if cut >= 0 or lo == 0 else end
        return starts

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


def _plain(job: Job, render: RenderChoice) -> bool:
    return render == "plain" or (render == "auto" and job.pty)


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
