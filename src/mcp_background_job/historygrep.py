"""``mcp-background-job grep``: matching lines of jobs' stored output, printed as grep(1) prints
them (``ID:LINE:text``; ``ID/stderr:...`` for stderr; context lines with ``-``, ``--`` between
groups), with grep's exit statuses: 0 a line matched, 1 none did, 2 an error.

It reads the database only (no server needed) and matches what the ``grep`` tool matches: the
masked, shown text of each line (``grepping.LineScanner`` with a ``masking.Masker``), so the
command line cannot probe a secret the tools hide. Values a server holds in memory only (a job's
withheld secret-named variables) are not known here: the well-known secret formats are masked.

Import rule: the command line (``cli`` layer); imported by ``commands`` only inside ``grep``, so
the other commands load nothing of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from . import history
from .config import parse_since
from .errors import InvalidRequest
from .grepping import Hit, LineScanner, streams_of
from .isolation import Isolation
from .jobs import Stream
from .masking import Masker
from .matching import compile_pattern
from .redact import Redactor
from .store import JobFilter

if TYPE_CHECKING:
    from .config import Settings
    from .jobs import Job
    from .matching import Pattern
    from .store import Store

#: Hits kept per round of a scan: bounds memory on an output where every line matches.
BATCH = 1000
MAX_CONTEXT = 20
#: Masking context only: the command line runs no job, so nothing of the isolation applies.
_READ_ONLY = Isolation(mode="none", network=True, writable=(), rlimits=(), env_allow=())


@dataclass(slots=True)
class Printer:
    """Prints the lines of one stream of one job as grep does, merging the context of nearby
    matches (a line printed once; a matching line with ``:`` even if it was another's context)."""

    out: TextIO
    prefix: str
    as_json: bool
    job_id: str
    stream: Stream
    separate: bool  # print ``--`` between groups (with context, as grep does)
    pending: dict[int, tuple[bool, str]]
    last: int = 0  # the last line number printed

    def add(self, hits: list[Hit]) -> None:
        for h in hits:
            if self.as_json:
                self.out.write(json.dumps({
                    "job_id": self.job_id, "stream": h.stream.value, "line_number": h.line_number,
                    "offset": h.offset, "line": h.line, "before": h.before, "after": h.after,
                }) + "\n")  # fmt: skip
                continue
            first = h.line_number - len(h.before)
            # Lines before this hit's context can no longer change: print them.
            self.flush(below=first)
            for i, text in enumerate(h.before):
                self.pending.setdefault(first + i, (False, text))
            self.pending[h.line_number] = (True, h.line)
            for i, text in enumerate(h.after):
                self.pending.setdefault(h.line_number + 1 + i, (False, text))

    def flush(self, below: int | None = None) -> None:
        for n in sorted(self.pending):
            if below is not None and n >= below:
                break
            matched, text = self.pending.pop(n)
            if n <= self.last:
                continue
            if self.separate and self.last and n > self.last + 1:
                self.out.write("--\n")
            sep = ":" if matched else "-"
            self.out.write(f"{self.prefix}{sep}{n}{sep}{text}\n")
            self.last = n


async def grep(args: argparse.Namespace, settings: Settings) -> int:
    """Exit status 0 if a line matched, 1 if none did (errors raise: the caller exits 2)."""
    context = args.context or 0
    if not 0 <= context <= MAX_CONTEXT:
        raise InvalidRequest(f"-C must be between 0 and {MAX_CONTEXT} lines.")
    pattern = compile_pattern(args.pattern, ignore_case=args.ignore_case)
    flt = JobFilter(label=args.label, since=parse_since(args.since) if args.since else None)
    store = await history.open_existing(settings.db)
    try:
        masker = Masker(settings, store, _READ_ONLY, Redactor())
        scanner = LineScanner(store, masker)
        found = 0
        async for job in _jobs(store, args.ids, flt):
            for stream in streams_of(job, "both"):
                found += await _grep_stream(scanner, job, stream, pattern, context, args.json)
    finally:
        await store.close()
    return 0 if found else 1


async def _jobs(store: Store, ids: list[str], flt: JobFilter) -> AsyncIterator[Job]:
    """The jobs given (in that order; each resolved first, so a bad id fails before any
    output), or the history's matching ``flt``, newest first."""
    if ids:
        resolved = [await store.resolve_id(i) for i in ids]
        for job_id in resolved:
            job = await store.get_job(job_id, events=False)
            if _selected(job, flt):
                yield job
        return
    cursor: str | None = None
    while True:
        page, cursor = await store.list_jobs(flt, limit=200, cursor=cursor)
        for job in page:
            yield job
        if cursor is None:
            return


def _selected(job: Job, flt: JobFilter) -> bool:
    """``--label`` and ``--since`` narrow the jobs given by id too."""
    if flt.label is not None and flt.label not in job.labels:
        return False
    return flt.since is None or job.created_at >= flt.since


async def _grep_stream(
    scanner: LineScanner, job: Job, stream: Stream, pattern: Pattern, context: int, as_json: bool
) -> int:
    prefix = job.id if stream is Stream.STDOUT else f"{job.id}/stderr"
    printer = Printer(sys.stdout, prefix, as_json, job.id, stream, context > 0, {})
    pos, line_no, found = 0, 1, 0
    while True:
        scan = await scanner.scan(job, stream, pos, pattern, context=context, keep=BATCH,
                                  count_all=False, line_no=line_no)  # fmt: skip
        printer.add(scan.hits)
        found += len(scan.hits)
        if len(scan.hits) < BATCH:
            break
        # Go on after the last hit kept (the page it was in may hold more matches).
        last = scan.hits[-1]
        pos, line_no = last.end, last.line_number + 1
    printer.flush()
    sys.stdout.flush()
    return found
