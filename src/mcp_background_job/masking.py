"""Masking of output: secrets in what a client reads are replaced, seen with context around the
bytes returned, and held back while a running job may still be writing one; ``redact_stored``
masks an ended job's stored output in place (``store_redacted``).

``Masker`` reads context through the store and never writes anything else. Import rule: below
``app`` and ``reading``; never imports ``runner`` or ``app``; the store, the isolation and the
settings are only named in annotations.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from .isolation import WITHHELD
from .jobs import Chunk, Stream
from .redact import CONTEXT_BYTES

if TYPE_CHECKING:
    from .config import Settings
    from .isolation import Isolation
    from .jobs import Job
    from .redact import Redacted, Redactor
    from .store import Store

#: Caller-given variables whose values are masked in that job's output, and never stored.
_SECRET_ENV = re.compile(
    r"(?i)(TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|CREDENTIAL|AUTH|PRIVATE"
    r"|(^|_)KEYS?(_|$))"
)
_REDACT_BATCH = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Masked:
    """Chunks with secrets masked: ``held`` bytes per stream held back (a secret that may not be
    complete yet), ``hits`` secrets masked."""

    chunks: list[Chunk]
    held: dict[Stream, int]
    hits: int
    plain: bool = False  # every group was plain ASCII (``Redacted.plain``): shown as stored


@dataclass(frozen=True, slots=True)
class GroupMask:
    """One contiguous group of a stream, masked: the chunks (unchanged before the start, masked
    up to ``cut``, as stored from ``cut`` on: callers drop or keep that part), the offset where
    the masked part ends, and how many secrets were masked."""

    chunks: list[Chunk]
    cut: int
    hits: int
    plain: bool = False


@dataclass(frozen=True, slots=True)
class MergedMask:
    """Chunks of both streams masked as one text: ``cuts`` per stream (nothing of a stream from
    its cut on may be returned) and how many secrets were masked."""

    chunks: list[Chunk]
    cuts: dict[Stream, int]
    hits: int


@dataclass(frozen=True, slots=True)
class Run:
    """Contiguous bytes of one stream from ``offset`` on."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Prefetched:
    """Context read together with a page (``Store.read_around``): every stored byte of
    ``stream`` from ``lo`` to ``hi`` is in ``chunks``, so masking reads none of it again."""

    stream: Stream
    lo: int
    hi: int
    chunks: Sequence[Chunk]

    def covers(self, stream: Stream, lo: int, hi: int) -> bool:
        return stream is self.stream and self.lo <= lo and hi <= self.hi


@dataclass(frozen=True, slots=True)
class _Span:
    """Where a group is masked: ``start..stop`` of its stream (``stop`` at most ``limit`` past
    ``start``), inside the group's ``lo..hi``, with the context ``want_lo..want_hi`` around it
    (within the stream's ``length`` so far)."""

    lo: int
    hi: int
    start: int
    stop: int
    length: int
    want_lo: int
    want_hi: int

    @classmethod
    def of(cls, group: Sequence[Chunk], start: int, limit: int | None, ingested: int) -> _Span:
        lo, hi = group[0].offset, group[-1].end
        start = min(max(start, lo), hi)
        stop = hi if limit is None else min(hi, start + limit)
        length = max(ingested, hi)
        want_lo, want_hi = max(0, start - CONTEXT_BYTES), min(length, stop + CONTEXT_BYTES)
        return cls(lo, hi, start, stop, length, want_lo, want_hi)


class Masker:
    """Secrets masked in what clients read, and in stored output once a job has ended."""

    def __init__(
        self, settings: Settings, store: Store, isolation: Isolation, redactor: Redactor
    ) -> None:
        self.settings, self.store, self.isolation = settings, store, isolation
        self.redactor = redactor

    def is_secret(self, key: str, value: str) -> bool:
        """A secret-like name, or a value that looks like a token or credentials."""
        return bool(_SECRET_ENV.search(key) or self.redactor.redact(value.encode())[1])

    def redactor_for(self, job: Job) -> Redactor:
        env = {**job.env, **self.isolation.secrets.get(job.id)}  # values this server holds
        values = [v.encode() for k, v in env.items() if v != WITHHELD and self.is_secret(k, v)]
        return self.redactor.with_values(values)

    def mask_text(self, job: Job, text: str) -> str:
        """Caller text a view shows back (the command, the cwd), secrets masked: a token in a
        command line is a secret in ``status``, ``list`` and ``job://`` as in the audit log.
        ``redact_output=false`` turns it off with the rest of the masking of what clients read."""
        if not self.settings.redact_output:
            return text
        masked, _ = self.redactor_for(job).redact(text.encode("utf-8", "surrogatepass"))
        return masked.decode("utf-8", "replace")

    def mask_shown(self, job: Job, text: str) -> tuple[str, int]:
        """The text a read returns, masked once more as it is: that is what the client sees,
        so a secret that only shows once this read alone is rendered (a redraw that reaches back
        before the read's start) is masked too. Returns the text and the secrets masked."""
        if not self.settings.redact_output or not text:
            return text, 0
        data = text.encode()
        masked, hits = self.redactor_for(job).redact(data)
        if masked == data:
            return text, 0
        return masked.decode("utf-8", "replace"), sum(hits.values())

    async def mask(
        self,
        job: Job,
        chunks: Sequence[Chunk],
        starts: Mapping[Stream, int] | None = None,
        *,
        hold: bool,
        limit: int | None = None,
        merged: bool = False,
        offload: bool = False,
        prefetched: Sequence[Prefetched] = (),
    ) -> Masked:
        """Chunks with secrets masked (from ``starts`` on), seen with context around them.

        Each stream is masked on its own; with ``merged`` (a read of both streams) also the
        text of both as the read returns it, in the order stored, so a secret split between
        stdout and stderr is masked too. With ``hold``, a running job's trailing, possibly
        incomplete secret is held back (cut off; a later read returns it whole): nothing of a
        stream from its cut on is returned. The chunks keep their order. ``offload``: each
        group is masked in a worker thread (RE2 lets go of the GIL: a scan masks its next page
        while it matches this one). ``prefetched``: context already read, used instead of
        reading it again.
        """
        held = {s: 0 for s in Stream}
        if not self.settings.redact_output or not chunks:
            return Masked(list(chunks), held, 0)
        redactor = self.redactor_for(job)
        masked: dict[tuple[Stream, int], Chunk] = {}
        cuts: dict[Stream, int] = {}
        stops: dict[Stream, int] = {}
        count = 0
        plain = True
        for stream in Stream:
            mine = sorted((c for c in chunks if c.stream is stream), key=lambda c: c.offset)
            for group in contiguous(mine):
                start = starts[stream] if starts is not None else group[0].offset
                g = await self.mask_group(
                    redactor,
                    job,
                    group,
                    start,
                    live=hold,
                    limit=limit,
                    offload=offload,
                    prefetched=prefetched,
                )
                count += g.hits
                plain = plain and g.plain
                stop = group[-1].end if limit is None else min(group[-1].end, start + limit)
                stops[stream] = max(stops.get(stream, stop), stop)
                cuts[stream] = min(cuts.get(stream, g.cut), g.cut)
                masked.update(((stream, c.offset), c) for c in g.chunks)
        out = [masked[(c.stream, c.offset)] for c in chunks]
        if merged:
            m = await self._mask_merged(redactor, job, out, starts, live=hold)
            out, count = m.chunks, count + m.hits
            for stream, cut in m.cuts.items():
                cuts[stream] = min(cuts.get(stream, cut), cut)
        result = []
        for c in out:
            data = c.data[: max(0, cuts.get(c.stream, c.end) - c.offset)]
            if data:
                result.append(Chunk(c.stream, c.offset, data))
        for stream, cut in cuts.items():
            held[stream] = max(0, stops[stream] - cut)
        return Masked(result, held, count, plain)

    async def mask_group(
        self,
        redactor: Redactor,
        job: Job,
        group: Sequence[Chunk],
        start: int,
        *,
        live: bool,
        limit: int | None = None,
        ended: bool | None = None,
        offload: bool = False,
        prefetched: Sequence[Prefetched] = (),
    ) -> GroupMask:
        """Mask contiguous chunks of one stream from byte ``start`` on (at most ``limit`` bytes:
        the rest of the chunks is dropped), seen with ``CONTEXT_BYTES`` before and after.
        ``offload``: mask in a worker thread (big batches: rendering redraws costs Python time).
        """
        stream = group[0].stream
        span = _Span.of(group, start, limit, job.ingested(stream))
        around = list(group)
        # Read only the context that neither the chunks at hand nor ``prefetched`` cover.
        for lo, hi in ((span.want_lo, span.lo), (span.hi, span.want_hi)):
            if lo >= hi:
                continue
            known = next((p for p in prefetched if p.covers(stream, lo, hi)), None)
            if known is not None:
                around += known.chunks
            else:
                around += await self.store.read_stream(job.id, stream, lo, hi - lo)
        run = run_around(around, span.want_lo, span.want_hi, span.start, span.stop)
        if ended is None:
            ended = job.status.is_terminal
        holding = live and not ended and span.stop >= span.length
        final = ended and run.offset + len(run.data) >= span.length
        window = partial(
            redactor.window,
            run.data,
            span.start - run.offset,
            span.stop - run.offset,
            width=job.cols,
        )
        r = (
            await asyncio.to_thread(window, live=holding, final=final)
            if offload
            else window(live=holding, final=final)
        )
        if r.end + run.offset <= span.start and not holding:
            # A match longer than the context touches its end: mask what we have, go on.
            r = window(live=False, final=True)
        cut = run.offset + r.end
        return GroupMask(_splice(group, span, cut, r), cut, sum(r.hits.values()), r.plain)

    async def _mask_merged(
        self,
        redactor: Redactor,
        job: Job,
        window: Sequence[Chunk],
        starts: Mapping[Stream, int] | None,
        *,
        live: bool,
    ) -> MergedMask:
        """Mask ``window`` (chunks of both streams in the order stored) as one text, with the
        text of both streams before and after it as context."""
        firsts: dict[Stream, int] = {}
        ends: dict[Stream, int] = {}
        for c in window:
            firsts.setdefault(c.stream, c.offset)
            ends[c.stream] = max(ends.get(c.stream, c.end), c.end)
        # Where the window begins in a stream it has nothing of: the read's start, or (a tail)
        # that stream's end.
        begin = {
            s: firsts.get(s, starts[s] if starts is not None else job.ingested(s)) for s in Stream
        }
        before = await self._merged_before(job, begin)
        after = {s: ends.get(s, begin[s]) for s in Stream}
        following = await self.store.read_interleaved(job.id, after, CONTEXT_BYTES)
        reached = dict(after)
        for c in following:
            reached[c.stream] = max(reached[c.stream], c.end)
        at_end = all(reached[s] >= job.ingested(s) for s in Stream)
        ended = job.status.is_terminal
        w_lo = sum(len(c.data) for c in before)
        w_hi = w_lo + sum(len(c.data) for c in window)
        data = b"".join(c.data for c in (*before, *window, *following))
        masking = partial(redactor.window, data, w_lo, w_hi, width=job.cols)
        r = masking(live=live and not ended and at_end, final=ended and at_end)
        if r.end <= w_lo and not (live and not ended and at_end):
            r = masking(live=False, final=True)
        cut = r.end  # where the returned text ends, in data
        cuts: dict[Stream, int] = {}
        out: list[Chunk] = []
        at = w_lo
        for c in window:
            shown = max(0, min(len(c.data), cut - at))
            out.append(Chunk(c.stream, c.offset, r.data[at - w_lo : at - w_lo + shown]
                             + c.data[shown:]))  # fmt: skip
            if shown < len(c.data):
                cuts[c.stream] = min(cuts.get(c.stream, c.offset + shown), c.offset + shown)
            at += len(c.data)
        return MergedMask(out, cuts, sum(r.hits.values()))

    async def _merged_before(self, job: Job, begin: Mapping[Stream, int]) -> list[Chunk]:
        """Up to ``CONTEXT_BYTES`` of each stream before ``begin``, in the order stored."""
        lows = {s: max(0, begin[s] - CONTEXT_BYTES) for s in Stream}
        before: list[Chunk] = []
        if lows != begin:
            for c in await self.store.read_interleaved(job.id, lows, 4 * CONTEXT_BYTES):
                lo, hi = max(c.offset, lows[c.stream]), min(c.end, begin[c.stream])
                if lo < hi:
                    before.append(Chunk(c.stream, lo, c.data[lo - c.offset : hi - c.offset]))
        return before

    async def redact_stored(self, job_id: str) -> None:
        """Mask secrets in an ended job's stored output in place (``store_redacted``)."""
        if not self.settings.store_redacted:
            return
        job = await self.store.get_job(job_id, events=False)
        redactor = self.redactor_for(job)
        for stream in Stream:
            pos, end = 0, job.ingested(stream)
            while pos < end:
                chunks = await self.store.read_stream(
                    job.id, stream, pos, _REDACT_BATCH, whole_rows=True
                )
                if not chunks:
                    break
                group = contiguous(chunks)[0]
                # The job's process has exited and all its output is stored: the end is final.
                g = await self.mask_group(
                    redactor, job, group, pos, live=False, ended=True, offload=True
                )
                updates = []
                for old, c in zip(group, g.chunks, strict=True):
                    data = c.data + old.data[len(c.data) :]  # the part past the cut: unchanged
                    if data != old.data:
                        updates.append((old.offset, data))
                await self.store.rewrite_chunks(job.id, stream, updates)
                pos = max(g.cut, pos + 1) if g.cut > pos else group[-1].end


def _splice(group: Sequence[Chunk], span: _Span, cut: int, masked: Redacted) -> list[Chunk]:
    """The group's chunks with ``masked.data`` (the bytes from ``span.start`` on, masked up to
    ``cut``) put in place; bytes past ``span.stop`` dropped."""
    out = []
    for c in group:
        head = c.data[: max(0, span.start - c.offset)]
        lo_m, hi_m = max(c.offset, span.start), min(c.end, cut)
        body = masked.data[lo_m - span.start : hi_m - span.start] if hi_m > lo_m else b""
        rest = c.data[max(0, max(lo_m, hi_m) - c.offset) : max(0, span.stop - c.offset)]
        out.append(Chunk(c.stream, c.offset, head + body + rest))
    return out


def contiguous(chunks: Sequence[Chunk]) -> list[list[Chunk]]:
    """Chunks of one stream (in offset order) grouped into runs without gaps."""
    groups: list[list[Chunk]] = []
    for c in chunks:
        if groups and groups[-1][-1].end == c.offset:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def run_around(chunks: Sequence[Chunk], lo: int, hi: int, need_lo: int, need_hi: int) -> Run:
    """The contiguous bytes of one stream within ``lo..hi`` that include ``need_lo..need_hi``,
    from chunks that may overlap (context reads return whole rows). The chunks include a
    contiguous group covering ``need_lo..need_hi``."""
    # Pieces joined once per run (a page is MiBs: copying it through a bytearray costs).
    runs: list[tuple[int, int, list[bytes]]] = []  # (offset, end, pieces)
    for c in sorted(chunks, key=lambda c: c.offset):
        a, b = max(c.offset, lo), min(c.end, hi)
        if a >= b:
            continue
        if runs and runs[-1][1] >= a:
            base, end, pieces = runs[-1]
            if b > end:
                pieces.append(c.data[end - c.offset : b - c.offset])
                runs[-1] = (base, b, pieces)
        else:
            runs.append((a, b, [c.data[a - c.offset : b - c.offset]]))
    for base, end, pieces in runs:
        if base <= need_lo and end >= need_hi:
            return Run(base, b"".join(pieces))
    raise AssertionError(f"no contiguous bytes cover {need_lo}..{need_hi}")
