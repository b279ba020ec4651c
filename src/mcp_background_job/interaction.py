"""Interaction with a running job: ``interact`` sends input and keys (checked like a command line
when a shell reads them), then waits until the program is ready again and returns what it printed.

``ReadinessWait`` is that wait: a small state machine whose state is named in ``_Seen``. Import
rule: below ``app``, above ``reading`` and ``admission``; imports ``runner`` only for its stdin
limit (the runner itself is only named in annotations).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import re2

from . import terminal
from .checks import MAX_KEYS, MAX_WAIT_S, shown, utf8
from .errors import InvalidRequest, PolicyRefused
from .jobs import JobStatus, Stream
from .models import InteractResult
from .policy import shell_input_for
from .proctree import MARKER
from .reading import MAX_READ_BYTES, format_cursor, plain_for
from .runner import STDIN_BUFFER_MAX

if TYPE_CHECKING:
    from .admission import Admission, Client
    from .jobs import Job
    from .models import ReturnedBecause
    from .policy import ShellInput
    from .reading import Reader, RenderChoice
    from .runner import Runner
    from .store import Store
    from .terminal import Key

log = logging.getLogger(__name__)

DEFAULT_INTERACT_WAIT_S = 10.0
DEFAULT_SETTLE_S = 0.5
#: How often interact looks for new output and at the job's state while it waits.
_INTERACT_POLL_S = 0.05
#: Text at the end of the new output that ``until`` is matched against.
_UNTIL_WINDOW = 16384


def _until_options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print its parse errors to stderr
    return opts


_UNTIL_OPTIONS = _until_options()


@dataclass(frozen=True, slots=True)
class _Request:
    """An ``interact`` call's arguments, checked: the input's bytes, the keys, the pattern."""

    text: str
    data: bytes
    keys: list[Key]
    eof: bool
    pattern: re.Pattern[str] | None

    @property
    def only_wait(self) -> bool:
        return not self.data and not self.keys and not self.eof

    @property
    def key_bytes(self) -> list[bytes]:
        return [k.data for k in self.keys]


class Interaction:
    """``interact``: the shell-input check, the write, the wait, the read."""

    def __init__(self, store: Store, runner: Runner, reader: Reader, admission: Admission) -> None:
        self.store, self.runner, self.reader, self.admission = store, runner, reader, admission
        # The shell-input checker of each running job whose command reads commands from stdin.
        self._shells: dict[str, ShellInput | None] = {}

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
        *,
        client: Client | None = None,
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
        req = _request(input, wait_s, eof, until, settle_s, keys)
        job = await self.store.get_job(await self.store.resolve_id(job_id))
        if req.only_wait:
            await self.reader.flush(job.id)
        else:
            self.runner.pump(job.id)
        written = self.runner.ingester.written(job.id) or {s: job.ingested(s) for s in Stream}
        start = await self.reader.line_starts(job.id, written) if req.only_wait else written
        before = await self.runner.input_state(job.id) if req.pattern is None else None
        # The size, never the content: input may be a password typed into a prompt.
        facts: dict[str, object] = {"bytes": len(req.data), "eof": eof}
        if req.keys:
            facts["keys"] = len(req.keys)
        shell = await self._check_shell_input(job, req, facts, client)
        await self.runner.send_input(job, req.data, keys=req.keys, eof=eof)
        if shell is not None and not req.only_wait:
            shell.accept(input, eof=eof, keys=req.key_bytes)
        log.info("job_input id=%s bytes=%d keys=%d eof=%s", job.id, len(req.data), len(req.keys),
                 eof)  # fmt: skip
        if not req.only_wait:
            await self.admission.audit("interact", client, job_id=job.id, detail=facts)
        ready = ReadinessWait(
            self.runner,
            self.store,
            self.reader,
            job,
            start,
            req.pattern,
            settle_s,
            trusted=bool(before and before.waiting),
            seen=written if start == written else None,
        )
        reason = await ready.run(wait_s)
        return await self._result(job.id, req, start, reason, render)

    async def _check_shell_input(
        self, job: Job, req: _Request, facts: dict[str, object], client: Client | None
    ) -> ShellInput | None:
        """The job's shell-input checker; when it has one and this call writes, check the
        input (refused: audited and raised). ``facts`` (the audit detail) is added to."""
        shell = await self.admission.off_loop(partial(self._shell_input, job))
        if shell is None or job.status is not JobStatus.RUNNING or req.only_wait:
            return shell
        # A shell reading stdin runs what is typed: check it like a command line (with the
        # keys, which can end a line), off the event loop like execute's check.
        verdict = await self.admission.off_loop(
            partial(shell.check, req.text, eof=req.eof, keys=req.key_bytes)
        )
        facts["shell_input"] = True
        if not verdict.allowed:
            await self.admission.audit("interact", client, job_id=job.id, verdict=verdict,
                                       detail=facts)  # fmt: skip
            raise PolicyRefused(
                verdict.message.replace("Nothing was run.", "Nothing was written."),
                rule=verdict.rule,
                matched=verdict.matched,
            )
        if verdict.audit_note:
            facts["unverified"] = verdict.audit_note
        return shell

    def _shell_input(self, job: Job) -> ShellInput | None:
        if job.status.is_terminal:
            self._shells.pop(job.id, None)
            return None
        if job.id not in self._shells:
            admission = self.admission
            env = admission.isolation.environment(job.env, (MARKER, job.id))
            self._shells[job.id] = shell_input_for(
                admission.policy, job.command, cwd=job.cwd, home=str(Path.home()), env=env,
                pty=job.pty,
            )  # fmt: skip
        return self._shells[job.id]

    async def _result(
        self,
        job_id: str,
        req: _Request,
        start: dict[Stream, int],
        reason: ReturnedBecause,
        render: RenderChoice,
    ) -> InteractResult:
        """What the job printed from ``start`` on, once the wait is over."""
        await self.reader.flush(job_id)
        job = await self.store.get_job(job_id, events=False)
        pos = await self.reader.char_starts(job.id, start)
        streams = [Stream.STDOUT] if job.pty else list(Stream)
        plain = plain_for(job, render)
        read = await self.reader.read(job, streams, pos, MAX_READ_BYTES, plain)
        return InteractResult(
            job_id=job.id,
            bytes_written=len(req.data) + sum(len(k) for k in req.key_bytes),
            eof_sent=req.eof,
            output=read.text,
            cursor=format_cursor(read.pos),
            redactions=read.redactions,
            more=read.more(job, streams),
            status=job.status,
            ended=job.status.is_terminal,
            returned_because=reason,
            render="plain" if plain else "raw",
        )


def _request(
    input: str, wait_s: float, eof: bool, until: str | None, settle_s: float, keys: Sequence[str]
) -> _Request:
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise InvalidRequest(f"wait_s must be between 0 and {MAX_WAIT_S}.")
    if not 0.05 <= settle_s <= MAX_WAIT_S:
        raise InvalidRequest(f"settle_s must be between 0.05 and {MAX_WAIT_S}.")
    if len(keys) > MAX_KEYS:
        raise InvalidRequest(f"keys can hold at most {MAX_KEYS} keys per call.")
    parsed = [terminal.parse_key(k) for k in keys]
    pattern = _compile_until(until) if until is not None else None
    data = utf8("input", input)
    if len(data) > STDIN_BUFFER_MAX:
        raise InvalidRequest(
            f"input is {len(data)} bytes; one interact call sends at most {STDIN_BUFFER_MAX} "
            "bytes (1 MiB). Send it in parts, each once the program has read the previous "
            "one (interact returns when it waits for input again), or write it to a file "
            "and have the program read that."
        )
    return _Request(input, data, parsed, eof, pattern)


def _compile_until(until: str) -> re.Pattern[str]:
    # RE2: matched on the event loop against program output, so it must run in linear
    # time (Python's re takes minutes on '^(a+)+$' against 30 characters).
    try:
        pattern: re.Pattern[str] = re2.compile("(?m)" + until, _UNTIL_OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise InvalidRequest(
            f"until {shown(until)} is not a valid regular expression ({why}). It "
            "takes RE2 syntax: Python's, without backreferences or lookarounds."
        ) from None
    return pattern


@dataclass(slots=True)
class _Seen:
    """What a ``ReadinessWait`` has seen so far."""

    #: The output sizes last seen (None: not yet; all output after the start is then new).
    sizes: dict[Stream, int] | None
    #: When the output last changed (event loop time).
    last_change: float
    #: Output arrived during the wait.
    got_output: bool = False
    #: Looks in a row that found the job waiting for input.
    ready_streak: int = 0
    #: The end of the new output, as text, that ``until`` is matched against.
    window: str = ""
    #: Where the next read for ``window`` begins (None: at the wait's start, once known).
    window_pos: dict[Stream, int] | None = None


class ReadinessWait:
    """Wait as ``interact`` describes, until the program is ready again.

    ``start``: where the output to match and return begins. ``seen``: the output sizes when the
    wait began; None counts what lies after ``start`` as new output at once. ``trusted``: the
    job was seen waiting for input before the write, so the kernel shows its reads and only
    that (not quiet output) means it is ready again.
    """

    def __init__(
        self,
        runner: Runner,
        store: Store,
        reader: Reader,
        job: Job,
        start: dict[Stream, int],
        pattern: re.Pattern[str] | None,
        settle_s: float,
        *,
        trusted: bool,
        seen: dict[Stream, int] | None,
    ) -> None:
        self.runner, self.store, self.reader, self.job = runner, store, reader, job
        self.start, self.pattern, self.settle_s, self.trusted = start, pattern, settle_s, trusted
        self._seen = _Seen(sizes=seen, last_change=0.0)
        self._streams = [Stream.STDOUT] if job.pty else list(Stream)

    async def run(self, wait_s: float) -> ReturnedBecause:
        """Why it stopped waiting: ``prompt``, ``waiting_for_input``, ``quiet``, ``ended`` or
        ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        self._seen.last_change = loop.time()
        while True:
            left = deadline - loop.time()
            if await self.runner.wait_end(self.job.id, max(0.0, min(_INTERACT_POLL_S, left))):
                return "ended"
            if left <= 0:
                return "timeout"
            self.runner.pump(self.job.id)
            now = loop.time()
            changed = self._look(now)
            if self.pattern is not None:
                if changed and await self._matched(self.pattern):
                    return "prompt"
                continue
            if now - self._seen.last_change < _INTERACT_POLL_S:
                continue
            if (reason := await self._input_ready(now)) is not None:
                return reason

    def _look(self, now: float) -> bool:
        """Whether the output changed since the last look (then remembered as of ``now``)."""
        sizes = self.runner.ingester.written(self.job.id)
        seen = self._seen
        if sizes is None or sizes == seen.sizes:
            return False
        seen.sizes, seen.last_change, seen.got_output, seen.ready_streak = sizes, now, True, 0
        return True

    async def _matched(self, pattern: re.Pattern[str]) -> bool:
        """Whether ``pattern`` matches the end of the new output, read as plain text."""
        job, seen = self.job, self._seen
        await self.runner.flush(job.id)
        current = await self.store.get_job(job.id, events=False)
        if seen.window_pos is None:
            seen.window_pos = await self.reader.char_starts(job.id, self.start)
        while True:
            read = await self.reader.read(current, self._streams, seen.window_pos, MAX_READ_BYTES)
            seen.window_pos = read.pos
            seen.window = (seen.window + read.text)[-_UNTIL_WINDOW:]
            if read.covered < MAX_READ_BYTES:
                break
        return bool(pattern.search(terminal.render(seen.window, job.cols)))

    async def _input_ready(self, now: float) -> ReturnedBecause | None:
        """Without ``until``: the kernel shows the job waiting for input twice in a row, or
        (not ``trusted``) output came and then nothing for ``settle_s`` with no CPU busy."""
        state = await self.runner.input_state(self.job.id)
        if state is None:
            return None
        seen = self._seen
        seen.ready_streak = seen.ready_streak + 1 if state.waiting else 0
        if seen.ready_streak >= 2:
            return "waiting_for_input"
        quiet_for = now - seen.last_change
        if not self.trusted and seen.got_output and quiet_for >= self.settle_s and not state.busy:
            return "quiet"
        return None
