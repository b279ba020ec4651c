"""Reading output: cursors, pages of output decoded without splitting a character or an escape
sequence, the last lines of a job, and where a line or a character begins.

``Reader`` flushes what the runner captured, reads through the store and masks through
``masking.Masker``. Import rule: below ``app`` and ``interaction``, above ``masking``; never
imports ``runner`` or ``app`` (the runner and the store are only named in annotations).
"""

from __future__ import annotations

import codecs
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import terminal
from .errors import InvalidRequest, StorageError
from .jobs import Stream
from .masking import Prefetched
from .models import OutputResult, TailResult
from .redact import CONTEXT_BYTES, strip_controls

if TYPE_CHECKING:
    from .jobs import Chunk, Job
    from .masking import Masker
    from .runner import Runner
    from .store import Store

log = logging.getLogger(__name__)

StreamChoice = Literal["stdout", "stderr", "both"]
#: How reads show output: ``plain`` as a person would see it on a terminal (escape sequences
#: removed, ``\r`` overwrites resolved), ``raw`` as written, ``auto`` plain for PTY jobs.
RenderChoice = Literal["auto", "plain", "raw"]

#: The most text one read returns: bigger tool results choke clients (see docs/mcp notes).
MAX_READ_BYTES = 65536
MAX_TAIL_LINES = 10_000
#: The longest unfinished line a wait without input shows again (a prompt is shorter).
_PROMPT_LINE_MAX = 4096


@dataclass(frozen=True, slots=True)
class Read:
    """One read: the text shown, the offsets after it, the bytes it covered (dropped gaps
    included), the bytes dropped by the output limit, the bytes held back per stream (a secret
    maybe incomplete), and the secrets masked."""

    text: str
    pos: dict[Stream, int]
    covered: int
    dropped: int
    held: dict[Stream, int]
    redactions: int

    def more(self, job: Job, streams: Sequence[Stream]) -> bool:
        """More output to read after this one. Nothing covered: at most the start of a character
        (or of a secret) still being written."""
        return self.covered > 0 and any(
            self.pos[s] < job.ingested(s) - self.held[s] for s in streams
        )


@dataclass(frozen=True, slots=True)
class _Lines:
    """The last lines of some output: the bytes (with the final newline if the output had
    one), how many lines, whether the byte limit cut them, and the bytes of the output before
    them."""

    data: bytes
    found: int
    truncated: bool
    skipped: int


class Reader:
    """Reads of a job's output as the ``output``/``tail`` tools and ``interact`` return them."""

    def __init__(self, store: Store, runner: Runner, masker: Masker) -> None:
        self.store, self.runner, self.masker = store, runner, masker

    async def flush(self, job_id: str) -> None:
        """Store what the runner captured of the job so far, if the database takes it."""
        self.runner.pump(job_id)
        try:
            await self.runner.flush(job_id)
        except StorageError as exc:
            # A read must not need a write: on a full disk or a locked database it answers
            # with what is stored already (the rest is stored when the write goes through).
            log.warning("read_without_flush id=%s kind=%s error=%s", job_id, exc.kind, exc)

    async def output(
        self,
        job_id: str,
        stream: StreamChoice = "stdout",
        cursor: str | None = None,
        max_bytes: int = MAX_READ_BYTES,
        render: RenderChoice = "auto",
        *,
        colours: bool = False,
    ) -> OutputResult:
        """A page of output from ``cursor``. ``colours``: SGR sequences are kept (the web page
        renders them); every other control sequence is removed as always."""
        if not 1 <= max_bytes <= MAX_READ_BYTES:
            raise InvalidRequest(f"max_bytes must be between 1 and {MAX_READ_BYTES}.")
        job_id = await self.store.resolve_id(job_id)
        await self.flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        pos = parse_cursor(cursor, job)
        streams = list(Stream) if stream == "both" else [Stream(stream)]
        plain = plain_for(job, render)
        read = await self.read(job, streams, pos, max_bytes, plain, colours=colours)
        more = read.more(job, streams)
        return OutputResult(
            job_id=job.id,
            stream=stream,
            text=read.text,
            cursor=format_cursor(read.pos),
            bytes=read.covered,
            more=more,
            end=job.status.is_terminal and not more,
            dropped_bytes=read.dropped,
            held_back_bytes=sum(read.held[s] for s in streams),
            redactions=read.redactions,
            status=job.status,
            render="plain" if plain else "raw",
        )

    async def read(
        self,
        job: Job,
        streams: list[Stream],
        pos: dict[Stream, int],
        max_bytes: int,
        plain: bool = False,
        *,
        colours: bool = False,
    ) -> Read:
        """Output from ``pos`` on: masked, held back where a secret may be incomplete, decoded,
        control sequences stripped. ``plain``: rendered as a terminal shows it; an escape
        sequence not complete yet is left for the next read."""
        want = max(max_bytes, 4)  # enough for one whole character
        known: list[Prefetched] = []
        if len(streams) == 1 and not self.masker.settings.redact_output:
            chunks = await self.store.read_stream(job.id, streams[0], pos[streams[0]], want)
        elif len(streams) == 1:
            # The page and the context its masking needs, in one trip to the database.
            s, at = streams[0], pos[streams[0]]
            chunks, before, after = await self.store.read_around(job.id, s, at, want, CONTEXT_BYTES)
            end = chunks[-1].end if chunks else at
            known = [
                Prefetched(s, max(0, at - CONTEXT_BYTES), at, before),
                Prefetched(s, end, end + CONTEXT_BYTES, after),
            ]
        else:
            chunks = await self.store.read_interleaved(job.id, pos, want)
        m = await self.masker.mask(
            job, chunks, pos, hold=True, limit=want, merged=len(streams) > 1, prefetched=known
        )
        chunks = m.chunks
        lengths = {s: job.ingested(s) for s in Stream} if job.status.is_terminal else None
        text, new, covered, dropped = decode_chunks(chunks, pos, max_bytes, lengths)
        if covered == 0 and chunks and max_bytes < 4:
            # Below one character: read the whole character rather than make no progress.
            text, new, covered, dropped = decode_chunks(chunks, pos, 4, lengths)
        # An escape sequence not complete yet is left for the next read (in both renderings): a
        # read never starts inside one, where the rest of it (a title's text) would show.
        last = next((c for c in reversed(chunks) if c.offset < new[c.stream]), None)
        s = last.stream if last is not None else streams[0]
        hold = terminal.incomplete_suffix(text) if lengths is None or new[s] < lengths[s] else 0
        if last is not None and hold and "\ufffd" not in text[-hold:]:
            size = len(text[-hold:].encode())
            if size <= new[s] - max(last.offset, pos[s]):  # all of it in that stream's last bytes
                text = text[:-hold]
                new[s] -= size
                covered -= size
        shown = strip_controls(
            terminal.render(text, job.cols) if plain else text, keep_colours=colours and not plain
        )
        shown, more_hits = self.masker.mask_shown(job, shown)
        return Read(shown, new, covered, dropped, m.held, m.hits + more_hits)

    async def tail(
        self, job_id: str, lines: int, stream: StreamChoice, render: RenderChoice
    ) -> tuple[TailResult, int]:
        """``tail``, and how many bytes of output (all streams read) come before its text."""
        if lines < 0:
            raise InvalidRequest("lines must be 0 or more (it counts lines from the end).")
        if lines > MAX_TAIL_LINES:
            raise InvalidRequest(
                f"lines must be at most {MAX_TAIL_LINES}; use `output` with a cursor to page."
            )
        job_id = await self.store.resolve_id(job_id)
        await self.flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        streams = list(Stream) if stream == "both" else [Stream(stream)]
        chunks = (
            await self.store.read_backwards(job.id, streams, lines + 1, MAX_READ_BYTES)
            if lines
            else []
        )
        # Bytes before the chunks read: up to the first chunk of a stream, or all of a stream
        # that has none among them.
        firsts: dict[Stream, int] = {}
        for c in chunks:
            firsts.setdefault(c.stream, c.offset)
        before = sum(firsts.get(s, job.ingested(s)) for s in streams)
        m = await self.masker.mask(job, chunks, hold=True, merged=len(streams) > 1)
        got = last_lines(b"".join(c.data for c in m.chunks), lines, bool(m.chunks))
        text, found = got.data.decode("utf-8", "replace"), got.found
        plain = plain_for(job, render)
        if plain and text:
            # Rendering can only merge lines (a cursor moved up): count what is shown.
            text = terminal.render(text, job.cols)
            found = text.count("\n") + (0 if text.endswith("\n") else 1)
        text, more_hits = self.masker.mask_shown(job, strip_controls(text))
        result = TailResult(
            job_id=job.id,
            stream=stream,
            text=text,
            lines=found if text else 0,
            truncated=got.truncated,
            redactions=m.hits + more_hits,
            status=job.status,
            render="plain" if plain else "raw",
        )
        return result, before + got.skipped

    async def recent_output(self, job_id: str) -> str:
        """The last ``MAX_READ_BYTES`` of output (both streams, in the order stored), with a note
        first when earlier output is left out (for the ``job://{id}/output`` resource)."""
        tail, before = await self.tail(job_id, MAX_TAIL_LINES, "both", "auto")
        if before > 0:
            job = await self.store.get_job(tail.job_id, events=False)
            total = sum(job.ingested(s) for s in Stream)
            return (
                f"[... the first {before} of {total} bytes are left out: read them "
                "with the `output` tool ...]\n" + tail.text
            )
        return tail.text

    async def line_starts(self, job_id: str, ends: dict[Stream, int]) -> dict[Stream, int]:
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

    async def char_start(self, job_id: str, stream: Stream, offset: int) -> int:
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

    async def char_starts(self, job_id: str, offsets: Mapping[Stream, int]) -> dict[Stream, int]:
        """``char_start`` of each stream's offset."""
        return {s: await self.char_start(job_id, s, at) for s, at in offsets.items()}


def last_lines(data: bytes, lines: int, any_read: bool) -> _Lines:
    """The last ``lines`` lines of ``data`` (read backwards from a job's end: ``any_read``
    when anything was), whole lines only once the byte limit cut them."""
    body = data[:-1] if data.endswith(b"\n") else data
    parts = body.split(b"\n")
    found = len(parts) if len(parts) <= lines else lines
    text = b"\n".join(parts[-found:]) if found else b""
    truncated = any_read and len(parts) <= lines and len(data) >= MAX_READ_BYTES
    if truncated:
        text = text[-MAX_READ_BYTES:]
        # Whole lines only (unless one line is all there is): the first line read was cut
        # by the byte limit, maybe inside an escape sequence, whose text would show.
        text = text[text.find(b"\n") + 1 :]
        found = text.count(b"\n") + 1
    skipped = len(body) - len(text)
    if text and data.endswith(b"\n"):
        text += b"\n"
    return _Lines(text, found, truncated, skipped)


def plain_for(job: Job, render: RenderChoice) -> bool:
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
