"""Finding lines in a job's output: ``grep`` (the matching lines of one job), ``wait`` until a
line matches, and the per-job scan ``search`` runs over the history.

Matching runs on what ``output`` shows: the stored bytes masked by ``masking.Masker`` (so a
pattern cannot probe a secret character by character), decoded, control sequences stripped
(PTY jobs rendered line by line as ``output`` renders them), and masked again as shown. Lines
without control bytes are matched as bytes in one RE2 pass per page (their shown text is the
same); pages with control bytes are matched line by line on the shown text.

Import rule: app parts (beside ``reading``); reads through the store's reader pool only.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from . import terminal
from .checks import MAX_WAIT_S, check_wait
from .config import parse_since
from .errors import InvalidRequest
from .jobs import Chunk, JobStatus, Stream
from .masking import contiguous
from .matching import (
    GrepMatch,
    GrepResult,
    OutputGap,
    Pattern,
    SearchHit,
    SearchResult,
    WaitUntilResult,
    compile_pattern,
)
from .reading import StreamChoice, format_cursor, parse_cursor
from .redact import strip_controls
from .store import JobFilter, encode_list_cursor

if TYPE_CHECKING:
    from .jobs import Job
    from .masking import Masker
    from .reading import Reader
    from .runner import Runner
    from .store import Store

#: Bytes read and masked per round: few round trips and context reads per MiB, while the
#: next page is masked in a worker thread (a scan holds about three pages).
PAGE_BYTES = 4 << 20
#: A line longer than this is cut (matched in pieces): bounded memory per scan.
MAX_LINE_BYTES = 1 << 20
#: The longest line shown in a result (longer ones are cut, with a note).
SHOWN_LINE_MAX = 2000
MAX_CONTEXT = 20
#: Bytes that change what a line shows (escape sequences, \r overwrites, backspaces, C0/C1).
_C0 = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])
_NOT_C0 = bytes(b for b in range(256) if b not in _C0)
_C1 = re.compile(rb"\xc2[\x80-\x9f]")  # a literal first byte: found at memchr speed


def is_plain(body: bytes) -> bool:
    """No byte in ``body`` changes what its lines show: their shown text is their bytes.
    ``translate`` keeps only the control bytes, in C at ~2 ms per MiB (the regex with an
    alternation that this replaces tried every position: ~38 ms per MiB, most of a grep)."""
    if body.translate(None, _NOT_C0):
        return False
    return body.isascii() or _C1.search(body) is None


@dataclass(slots=True)
class Hit:
    """A matching line: its stream, 1-based line number, offset, shown text and context."""

    stream: Stream
    line_number: int
    offset: int
    line: str
    end: int  # the offset after the line (its newline included)
    before: list[str]
    after: list[str] = field(default_factory=list)
    wanted_after: int = 0


@dataclass(slots=True)
class StreamScan:
    """One stream scanned from ``start``: the hits kept, how many lines matched in all, the
    bytes scanned, the gaps met, and ``pos`` where scanning stopped (the start of an unfinished
    last line of a running job, or the stream's end); ``complete``: the stream's end reached."""

    hits: list[Hit]
    total: int
    scanned: int
    gaps: list[OutputGap]
    pos: int
    complete: bool
    line_no: int = 1  # the number of the line at ``pos`` (a search goes on from there)


class LineScanner:
    """Scans the output of one job for lines matching a pattern."""

    def __init__(self, store: Store, masker: Masker) -> None:
        self.store, self.masker = store, masker

    def show(self, job: Job, line: bytes) -> str:
        """A line as ``output`` shows it (masked bytes in)."""
        text = line.decode("utf-8", "replace")
        text = strip_controls(terminal.render(text, job.cols) if job.pty else text)
        return self.masker.mask_shown(job, text)[0]

    def _shown_cut(self, job: Job, line: bytes) -> str:
        text = self.show(job, line[: SHOWN_LINE_MAX * 4])
        if len(text) > SHOWN_LINE_MAX:
            return text[:SHOWN_LINE_MAX] + f"[... line cut at {SHOWN_LINE_MAX} characters]"
        return text

    async def scan(
        self,
        job: Job,
        stream: Stream,
        start: int,
        pattern: Pattern,
        *,
        context: int = 0,
        keep: int = 50,
        budget: int | None = None,
        deadline: float | None = None,
        count_all: bool = True,
        line_no: int | None = None,
    ) -> StreamScan:
        """Lines of ``stream`` from ``start`` (a line start) matching ``pattern``: the first
        ``keep`` kept, all counted (``count_all``; else it stops once ``keep`` are found), at
        most about ``budget`` bytes scanned (None: no limit). ``line_no``: the number of the
        line at ``start``, when the caller knows it (else it is counted from the stored bytes).

        One function (~95 lines) on purpose: the page read ahead, the line carried across pages,
        the context owed to earlier hits and the byte budget are one loop's state; split, they
        would be passed back and forth on every page."""
        end = job.ingested(stream)
        if line_no is None:
            line_no = 1 + (await self.store.newlines_before(job.id, stream, start) if start else 0)
        hits: list[Hit] = []
        gaps: list[OutputGap] = []
        total = scanned = 0
        recent: deque[str] = deque(maxlen=context)  # shown lines before the current page
        waiting: list[Hit] = []  # hits still owed after-context
        carry, carry_at = b"", start
        pos = start
        complete = False
        ahead: asyncio.Task[tuple[bool, list[Chunk], bool]] | None = None  # the next page
        carry_plain = True  # the carried line is plain (see ``is_plain``)
        ahead_at = -1
        try:
            while True:
                if budget is not None and scanned >= budget:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not count_all and len(hits) >= keep and not waiting:
                    break
                if ahead is not None and ahead_at == pos:
                    task, ahead = ahead, None
                    stored, masked, plain = await task
                else:
                    stored, masked, plain = await self._page(job, stream, pos)
                if not stored:
                    complete = pos >= end or job.status.is_terminal
                    break
                if not masked:  # the live end is a secret maybe being written: wait for it
                    break
                last = masked[-1].end
                if last < end and (budget is None or scanned + (last - pos) < budget):
                    # Mask the next page (in a worker thread) while this one is matched.
                    if ahead is not None:
                        ahead.cancel()
                    ahead, ahead_at = asyncio.create_task(self._page(job, stream, last)), last
                for group in contiguous(masked):
                    lo = group[0].offset
                    if lo > pos:  # the output limit dropped these bytes: a gap, never searched
                        if carry:
                            total += self._lines(job, stream, carry, carry_at, line_no, pattern,
                                                 context, keep, hits, waiting, recent)  # fmt: skip
                            line_no += carry.count(b"\n") + 1
                            carry = b""
                        gaps.append(OutputGap(stream=stream.value, offset=pos, bytes=lo - pos))
                        recent.clear()
                        waiting.clear()
                        carry_at = lo
                    size = sum(len(c.data) for c in group)
                    scanned += size
                    pos = lo + size
                    buf = b"".join([carry, *(c.data for c in group)])  # one copy
                    known = plain and (carry_plain or not carry)
                    cut = buf.rfind(b"\n") + 1
                    if cut == 0 and len(buf) >= MAX_LINE_BYTES:
                        cut = len(buf)  # a huge line: matched in pieces
                    if cut:
                        total += self._lines(job, stream, buf, carry_at, line_no, pattern,
                                             context, keep, hits, waiting, recent, cut,
                                             known)  # fmt: skip
                        line_no += buf.count(b"\n", 0, cut)
                    carry, carry_at, carry_plain = buf[cut:], carry_at + cut, known
        finally:
            if ahead is not None:
                ahead.cancel()
        if carry:
            # The last line so far (a running job's unfinished line, or an output without a
            # final newline): matched as it is now; ``pos`` stays at its start.
            total += self._lines(job, stream, carry, carry_at, line_no, pattern, context, keep,
                                 hits, waiting, recent)  # fmt: skip
        if carry and complete and job.status.is_terminal:
            # An ended job's last line without a newline is final: it was matched, the
            # stream is done (else ``search`` would resume at its start forever).
            return StreamScan(hits, total, scanned, gaps, carry_at + len(carry), True, line_no)
        return StreamScan(hits, total, scanned, gaps, carry_at, complete and not carry, line_no)

    async def _page(self, job: Job, stream: Stream, pos: int) -> tuple[bool, list[Chunk], bool]:
        """About ``PAGE_BYTES`` of ``stream`` from ``pos``, masked in a worker thread: whether
        anything is stored there, the masked chunks (none: a possible secret at the live end
        is held back), and whether the masking found them plain (``Masked.plain``)."""
        chunks = await self.store.read_stream(job.id, stream, pos, PAGE_BYTES)
        if not chunks:
            return False, [], False
        starts = {s: 0 for s in Stream}
        starts[stream] = pos
        m = await self.masker.mask(job, chunks, starts, hold=True, limit=PAGE_BYTES, offload=True)
        return True, m.chunks, m.plain

    def _lines(
        self,
        job: Job,
        stream: Stream,
        buf: bytes,
        base: int,
        line_no: int,
        pattern: Pattern,
        context: int,
        keep: int,
        hits: list[Hit],
        waiting: list[Hit],
        recent: deque[str],
        end: int | None = None,
        known_plain: bool = False,
    ) -> int:
        """Match the lines of ``buf[:end]`` (stream offset ``base``, first line ``line_no``; a
        final newline ends the last line). Returns how many lines matched."""
        end = len(buf) if end is None else end
        n = end - 1 if buf.endswith(b"\n", 0, end) else end  # the lines' bytes, without copying
        # ``known_plain``: the masking's scan found no byte of ``redact._SPECIAL`` (all but
        # a carriage return before a line feed are control bytes here too). Else look: the
        # bytes past ``end`` (the next page's first line) may only send this page the slow
        # way (line by line), never the fast one wrongly.
        plain = not job.pty and (
            (known_plain and b"\r" not in buf) or (not known_plain and is_plain(buf))
        )
        if plain and not waiting and pattern.search(buf, 0, n) is None:
            # Nothing here (the common case): only the context of a later match is kept.
            recent.extend(self._shown_cut(job, line) for line in _last_lines(buf, n, context))
            return 0
        body = buf[:n]
        if plain and not waiting and not context:
            return self._plain_lines(job, stream, body, base, line_no, pattern, keep, hits)
        lines = body.split(b"\n")
        offsets = []
        at = base
        for line in lines:
            offsets.append(at)
            at += len(line) + 1
        found = 0
        for i, line in enumerate(lines):
            text = self._shown_cut(job, line) if (context or waiting) else None
            for h in waiting:
                if len(h.after) < h.wanted_after:
                    h.after.append(text if text is not None else self._shown_cut(job, line))
            waiting[:] = [h for h in waiting if len(h.after) < h.wanted_after]
            matched = (
                pattern.search(line) is not None
                if plain
                else pattern.search(self.show(job, line).encode()) is not None
            )
            if matched:
                found += 1
                if len(hits) < keep:
                    shown = text if text is not None else self._shown_cut(job, line)
                    h = Hit(stream, line_no + i, offsets[i], shown, offsets[i] + len(line) + 1,
                            list(recent), wanted_after=context)  # fmt: skip
                    hits.append(h)
                    if context:
                        waiting.append(h)
            if context:
                recent.append(text if text is not None else self._shown_cut(job, line))
        return found

    def _plain_lines(
        self,
        job: Job,
        stream: Stream,
        body: bytes,
        base: int,
        line_no: int,
        pattern: Pattern,
        keep: int,
        hits: list[Hit],
    ) -> int:
        """``_lines`` for lines without control bytes and no context: RE2 finds the matching
        lines in one pass (their shown text is their bytes), Python touches only those."""
        found = at = counted = 0
        while at <= len(body):
            m = pattern.search(body, at)
            if m is None:
                break
            ls = body.rfind(b"\n", 0, m.start()) + 1
            le = body.find(b"\n", m.start())
            le = len(body) if le < 0 else le
            # A match that runs over a line feed is not a match of its first line.
            if le >= m.end() or pattern.search(body[ls:le]) is not None:
                found += 1
                line_no += body.count(b"\n", counted, ls)
                counted = ls
                if len(hits) < keep:
                    line = body[ls:le]
                    hits.append(Hit(stream, line_no, base + ls, self._shown_cut(job, line),
                                    base + le + 1, []))  # fmt: skip
            at = le + 1
        return found


def _last_lines(buf: bytes, n: int, count: int) -> list[bytes]:
    """The last ``count`` lines of ``buf[:n]`` (``rsplit`` would copy all the others)."""
    lines: list[bytes] = []
    stop = n
    while len(lines) < count:
        start = buf.rfind(b"\n", 0, stop) + 1
        lines.append(buf[start:stop])
        if start == 0:
            break
        stop = start - 1
    lines.reverse()
    return lines


async def match_view(store: Store, job: Job, h: Hit, starts: dict[Stream, int]) -> GrepMatch:
    """A hit as a tool returns it: its cursor reads both streams from the line's start."""
    other = Stream.STDERR if h.stream is Stream.STDOUT else Stream.STDOUT
    at = {h.stream: h.offset, other: await store.other_stream_offset(job.id, h.stream, h.offset)}
    at[other] = min(at[other], job.ingested(other))
    return GrepMatch(
        stream=h.stream.value,
        line_number=h.line_number,
        cursor=format_cursor(at),
        line=h.line,
        before=h.before,
        after=h.after,
    )


def streams_of(job: Job, stream: str) -> list[Stream]:
    """The streams a grep of ``stream`` reads (a PTY job has only stdout)."""
    if job.pty:
        return [Stream.STDOUT]
    return list(Stream) if stream == "both" else [Stream(stream)]


async def grep_job(
    scanner: LineScanner,
    job: Job,
    streams: list[Stream],
    pos: dict[Stream, int],
    pattern: Pattern,
    *,
    context: int,
    max_matches: int,
) -> tuple[list[GrepMatch], int, int, list[OutputGap], str | None]:
    """The matches of one job from ``pos``: stdout's, then stderr's. Returns the matches kept,
    the total, the bytes searched, the gaps and the cursor after the last match kept (None when
    none are left past it)."""
    hits: list[Hit] = []
    total = scanned = 0
    gaps: list[OutputGap] = []
    next_pos: dict[Stream, int] | None = None
    for s in streams:
        scan = await scanner.scan(job, s, pos[s], pattern, context=context,
                                  keep=max_matches - len(hits))  # fmt: skip
        if next_pos is None and scan.total > len(scan.hits):
            # Matches are left in this stream: go on after the last one kept.
            next_pos = dict(pos)
            next_pos[s] = scan.hits[-1].end if scan.hits else pos[s]
        elif next_pos is None and len(hits) + len(scan.hits) >= max_matches and s != streams[-1]:
            next_pos = dict(pos)
            next_pos[s] = scan.pos
        hits += scan.hits
        total += scan.total
        scanned += scan.scanned
        gaps += scan.gaps
    if next_pos is not None and total <= len(hits):
        next_pos = None
    views = [await match_view(scanner.store, job, h, pos) for h in hits]
    cursor = format_cursor(next_pos) if next_pos is not None else None
    return views, total, scanned, gaps, cursor


ProgressFn = Callable[[float, float, str], Awaitable[None]]
#: How often ``wait`` until looks for new output (a line is noticed within about this, plus
#: the time to store it: with 50 ms the p99 was 106 ms under load, over the 100 ms target).
UNTIL_POLL_S = 0.025
PROGRESS_EVERY_S = 5.0
MAX_MATCHES = 500
#: ``search``: work per call, and the first matches shown per job.
SEARCH_TIME_S = 3.0
SEARCH_BYTES = 256 << 20
SEARCH_FIRST = 3


class Finder:
    """``grep``, ``wait`` until a line, ``search``."""

    def __init__(self, store: Store, runner: Runner, reader: Reader, masker: Masker) -> None:
        self.store, self.runner, self.reader = store, runner, reader
        self.scanner = LineScanner(store, masker)
        self.masker = masker

    async def grep(
        self,
        job_id: str,
        pattern: str,
        stream: StreamChoice = "both",
        context: int = 0,
        max_matches: int = 50,
        ignore_case: bool = False,
        cursor: str | None = None,
    ) -> GrepResult:
        if not 0 <= context <= MAX_CONTEXT:
            raise InvalidRequest(f"context must be between 0 and {MAX_CONTEXT} lines.")
        if not 1 <= max_matches <= MAX_MATCHES:
            raise InvalidRequest(f"max_matches must be between 1 and {MAX_MATCHES}.")
        regex = compile_pattern(pattern, ignore_case=ignore_case)
        job_id = await self.store.resolve_id(job_id)
        await self.reader.flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        pos = await self.reader.char_starts(job.id, parse_cursor(cursor, job))
        streams = streams_of(job, stream)
        matches, total, scanned, gaps, nxt = await grep_job(
            self.scanner, job, streams, pos, regex, context=context, max_matches=max_matches
        )
        return GrepResult(job_id=job.id, matches=matches, total_matches=total,
                          bytes_searched=scanned, gaps=gaps, next_cursor=nxt,
                          status=job.status)  # fmt: skip

    async def wait_until(
        self,
        job_id: str,
        until: str,
        timeout_s: float,
        cursor: str | None,
        progress: ProgressFn | None,
    ) -> WaitUntilResult:
        """Wait until a line of output written after the call (or after ``cursor``) matches
        ``until``, the job ends, or ``timeout_s`` (at most ``MAX_WAIT_S``) passes."""
        check_wait(timeout_s)
        regex = compile_pattern(until, what="until")
        capped = min(timeout_s, MAX_WAIT_S)
        job_id = await self.store.resolve_id(job_id)
        await self.reader.flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        streams = streams_of(job, "both")
        if cursor:
            pos = await self.reader.char_starts(job.id, parse_cursor(cursor, job))
        else:
            # The line being written when the call came counts as written after it.
            pos = await self.reader.line_starts(job.id, {s: job.ingested(s) for s in Stream})
        loop = asyncio.get_running_loop()
        began = next_progress = loop.time()
        next_progress += PROGRESS_EVERY_S
        while True:
            ended = job.status.is_terminal
            for s in streams:
                scan = await self.scanner.scan(job, s, pos[s], regex, keep=1, count_all=False)
                if scan.hits:
                    h = scan.hits[0]
                    view = await match_view(self.store, job, h, pos)
                    after = dict(pos)
                    after[h.stream] = min(h.end, job.ingested(h.stream))
                    return WaitUntilResult(
                        job_id=job.id, until="matched", match=view,
                        cursor=format_cursor(after), waited_s=round(loop.time() - began, 3),
                        status=job.status,
                    )  # fmt: skip
                pos[s] = scan.pos
            if ended:
                return self._until_result(job, "ended", pos, loop.time() - began)
            left = capped - (loop.time() - began)
            if left <= 0:
                return self._until_result(job, "timeout", pos, loop.time() - began)
            if progress is not None and loop.time() >= next_progress:
                next_progress += PROGRESS_EVERY_S
                waited = loop.time() - began
                await progress(waited, capped, f"no line matched yet after {waited:.0f} s")
            await self.runner.wait_end(job.id, min(UNTIL_POLL_S, left))
            await self.reader.flush(job.id)
            job = await self.store.get_job(job.id, events=False)

    @staticmethod
    def _until_result(
        job: Job, why: Literal["ended", "timeout"], pos: dict[Stream, int], waited: float
    ) -> WaitUntilResult:
        return WaitUntilResult(job_id=job.id, until=why, match=None,
                               cursor=format_cursor(pos), waited_s=round(waited, 3),
                               status=job.status)  # fmt: skip

    async def search(
        self,
        pattern: str,
        label: str | None = None,
        status: JobStatus | None = None,
        since: str | None = None,
        command_contains: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
        ignore_case: bool = False,
    ) -> SearchResult:
        """Jobs of the history whose output matches, newest first, in bounded work per call
        (``SEARCH_TIME_S``, ``SEARCH_BYTES``); ``next_cursor`` goes on where it stopped."""
        if not 1 <= limit <= 100:
            raise InvalidRequest("limit must be between 1 and 100.")
        regex = compile_pattern(pattern, ignore_case=ignore_case)
        flt = JobFilter(status=status, label=label, command_contains=command_contains,
                        since=parse_since(since) if since else None)  # fmt: skip
        deadline = time.monotonic() + SEARCH_TIME_S
        hits: list[SearchHit] = []
        scanned = jobs_scanned = 0
        resume: tuple[str, dict[Stream, int], dict[Stream, int]] | None = _parse_search_cursor(
            cursor
        )
        list_cursor: str | None = None
        if resume is not None:
            first = await self.store.get_job(await self.store.resolve_id(resume[0]), events=False)
            list_cursor = encode_list_cursor(first)
            queue = [first]
        else:
            queue, list_cursor = await self.store.list_jobs(flt, limit=limit + 1)
            list_cursor = encode_list_cursor(queue[-1]) if queue else None
        while queue:
            job = queue.pop(0)
            await self.reader.flush(job.id) if not job.status.is_terminal else None
            job = await self.store.get_job(job.id, events=False)
            start = resume[1] if resume is not None and resume[0] == job.id else None
            # The line numbers where the previous call stopped: not counted again from the start.
            lines = resume[2] if resume is not None and start is not None else {}
            resume = None
            pos = start or {s: 0 for s in Stream}
            count, done = 0, True
            first_hits: list[Hit] = []
            for s in streams_of(job, "both"):
                scan = await self.scanner.scan(
                    job, s, pos[s], regex, keep=SEARCH_FIRST - len(first_hits),
                    budget=SEARCH_BYTES - scanned, deadline=deadline, line_no=lines.get(s),
                )  # fmt: skip
                scanned += scan.scanned
                count += scan.total
                first_hits += scan.hits
                pos[s] = scan.pos
                lines[s] = scan.line_no
                if not scan.complete and job.status.is_terminal:
                    done = False
                    break
            jobs_scanned += 1
            if count:
                views = [await match_view(self.store, job, h, pos) for h in first_hits]
                hits.append(SearchHit(
                    job_id=job.id, command=self.masker.mask_text(job, job.command),
                    status=job.status, created_at=job.created_at.isoformat(),
                    match_count=count, complete=done and start is None, first_matches=views,
                ))  # fmt: skip
            out_of_work = time.monotonic() >= deadline or scanned >= SEARCH_BYTES
            if not done:
                return SearchResult(jobs=hits, jobs_scanned=jobs_scanned, bytes_scanned=scanned,
                                    next_cursor=_search_cursor(job.id, pos, lines))  # fmt: skip
            if len(hits) >= limit or out_of_work:
                older, _ = await self.store.list_jobs(flt, limit=1, cursor=encode_list_cursor(job))
                nxt = f"{older[0].id}:0:0" if older else None
                return SearchResult(jobs=hits, jobs_scanned=jobs_scanned, bytes_scanned=scanned,
                                    next_cursor=nxt)  # fmt: skip
            if not queue and list_cursor is not None:
                queue, _ = await self.store.list_jobs(flt, limit=limit + 1, cursor=list_cursor)
                list_cursor = encode_list_cursor(queue[-1]) if queue else None
        return SearchResult(jobs=hits, jobs_scanned=jobs_scanned, bytes_scanned=scanned)


def _search_cursor(job_id: str, pos: dict[Stream, int], lines: dict[Stream, int]) -> str:
    """Where a search stopped in a job: the offsets, and the line numbers there when known
    (else the next call counts them from the stored bytes)."""
    if any(s not in lines and pos[s] for s in Stream):
        return f"{job_id}:{format_cursor(pos)}"
    at = [lines.get(s, 1) for s in Stream]
    return f"{job_id}:{format_cursor(pos)}:{at[0]}:{at[1]}"


def _parse_search_cursor(
    cursor: str | None,
) -> tuple[str, dict[Stream, int], dict[Stream, int]] | None:
    """A search cursor: ``job:out:err`` (from the start of a job's streams) or
    ``job:out:err:out_line:err_line`` (in the middle: the line numbers there)."""
    if not cursor:
        return None
    try:
        job_id, *fields = cursor.split(":")
        if len(fields) not in (2, 4):
            raise ValueError(cursor)
        numbers = [int(f) for f in fields]
        pos = {Stream.STDOUT: numbers[0], Stream.STDERR: numbers[1]}
        lines = {Stream.STDOUT: numbers[2], Stream.STDERR: numbers[3]} if len(fields) == 4 else {}
        if any(n < 0 for n in numbers) or any(n < 1 for n in lines.values()):
            raise ValueError(cursor)
        return job_id, pos, lines
    except ValueError:
        raise InvalidRequest(
            f"Invalid cursor {cursor!r}: pass the next_cursor of the previous search unchanged."
        ) from None
