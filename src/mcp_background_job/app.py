"""The operations behind the tools: input checks, cursors, text decoding, and result models.

Usable without MCP (tests and the CLI drive it directly); ``server`` only maps tools onto it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import itertools
import json
import logging
import math
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import re2

from . import terminal
from .capture import Ingester
from .config import Settings
from .db import AUDIT_KINDS, utcnow
from .errors import InvalidRequest, JobNotFound, PolicyRefused, RateLimited, StorageError
from .isolation import WITHHELD, Isolation, detect
from .jobs import ACTIVE, AuditEvent, AuditKind, Chunk, Job, JobOptions, JobStatus, Stream
from .models import (
    AuditResult,
    AuditView,
    InteractResult,
    JobView,
    ListResult,
    OutputResult,
    ReturnedBecause,
    TailResult,
    WaitedJob,
    WaitManyResult,
    WaitResult,
    summary,
    view,
)
from .policy import Policy, ShellInput, Verdict, shell_input_for
from .proctree import MARKER
from .redact import CONTEXT_BYTES, Redactor, strip_controls
from .runner import STDIN_BUFFER_MAX, Runner
from .store import JobFilter, StatusChange, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

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
#: Jobs one ``wait_many`` call can wait for (its result lists each: ~60 bytes a job).
MAX_WAIT_JOBS = 500
_LABEL = re.compile(r"^[\w.:/@+-]{1,64}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "STOP", "CONT")
#: Caller-given variables whose values are masked in that job's output, and never stored.
_SECRET_ENV = re.compile(
    r"(?i)(TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|CREDENTIAL|AUTH|PRIVATE"
    r"|(^|_)KEYS?(_|$))"
)
_AUDIT_COMMAND_MAX = 2000
_REDACT_BATCH = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Client:
    """Who is calling, as the MCP client describes itself (self-reported, never verified)."""

    name: str | None = None
    version: str | None = None
    session_id: str | None = None
    protocol: str | None = None


@dataclass(frozen=True, slots=True)
class _Read:
    text: str
    pos: dict[Stream, int]
    covered: int
    dropped: int
    held: dict[Stream, int]
    redactions: int


class TokenBucket:
    """Job creations: ``burst`` at once, then ``per_s`` per second."""

    def __init__(self, burst: int, per_s: float, clock: Callable[[], float] = time.monotonic):
        self.burst, self.per_s, self._clock = burst, per_s, clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self) -> float:
        """0.0 if a token was taken, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.per_s


MAX_AFTER = 100
MAX_KEYS = 100
MAX_LABELS = 64
MAX_PRIORITY = 1000
#: Audit event ids are SQLite integers (64-bit).
MAX_EVENT_ID = 2**63 - 1
#: Linux's limit on one argument or environment string (MAX_ARG_STRLEN, with its NUL): the
#: command is one argument of the shell, and each variable one ``NAME=value`` string.
MAX_ARG_BYTES = 128 * 1024
DEFAULT_INTERACT_WAIT_S = 10.0
DEFAULT_SETTLE_S = 0.5
#: How often interact looks for new output and at the job's state while it waits.
_INTERACT_POLL_S = 0.05
#: Text at the end of the new output that ``until`` is matched against.
_UNTIL_WINDOW = 16384
#: The longest unfinished line a wait without input shows again (a prompt is shorter).
_PROMPT_LINE_MAX = 4096


class App:
    """A running server's jobs: the store, the ingester and the runner, wired together, with the
    security layer in front of them: policy, cwd roots, rate limit, audit, output redaction."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runner: Runner,
        isolation: Isolation | None = None,
        *,
        policy: Policy | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.isolation = isolation or runner.isolation
        self.policy = policy or policy_from(settings)
        self.bucket = TokenBucket(settings.rate_limit_burst, settings.rate_limit_per_s)
        self.redactor = redactor or Redactor()
        self._shells: dict[str, ShellInput | None] = {}
        # Policy checks run here, one at a time: tree-sitter holds the GIL while it parses (up
        # to shellparse.MAX_PARSE_MICROS per check), so two checks at once would hold up the
        # event loop for both; one worker lets the loop in between.
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-check")
        runner.on_ended = self.redact_stored

    @classmethod
    async def open(cls, settings: Settings, isolation: Isolation | None = None) -> App:
        """Check the isolation works here, migrate the database, reconcile what dead servers
        left, start capturing, and record the policy in force in the audit log."""
        iso = isolation if isolation is not None else await asyncio.to_thread(detect, settings)
        store = Store(settings.db, writer_nice=settings.storage_nice)
        await store.open()
        policy, redactor = policy_from(settings), Redactor()
        claims = ClaimedJobCheck(settings, store, iso, policy, redactor)
        runner = Runner(settings, store, Ingester(settings, store), iso, check_claimed=claims.check)
        # Before start: reconciling may end jobs.
        app = cls(settings, store, runner, iso, policy=policy, redactor=redactor)
        try:
            await runner.start()
            await app._record_policy()
        except BaseException:
            with contextlib.suppress(Exception):  # keep the original error
                await runner.shutdown()
            await store.close()
            raise
        log.info(
            "security_policy mode=%s builtin_deny=%s isolation=%s network=%s",
            settings.policy_mode,
            settings.policy_builtin_deny,
            iso.mode,
            iso.network,
        )
        return app

    async def close(self) -> None:
        """Stop running jobs (recorded as killed: server shutdown), store output, close the DB."""
        try:
            await self.runner.shutdown()
        finally:
            self._checks.shutdown(wait=False, cancel_futures=True)
            await self.store.close()

    async def _job(self, job_id: str) -> Job:
        return await self.store.get_job(await self.store.resolve_id(job_id))

    def _view(self, job: Job, note: str | None = None) -> JobView:
        written = self.runner.ingester.written(job.id) if job.status is JobStatus.RUNNING else None
        if job.status is JobStatus.RUNNING:
            note = self.runner.end_note(job.id) or note
        return view(job, utcnow(), written, note=note, mask=partial(self._mask_text, job))

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
        client: Client | None = None,
    ) -> JobView:
        if not command.strip():
            raise InvalidRequest(
                "command is empty: pass a shell command line, for example 'make test'."
            )
        if "\0" in command:
            raise InvalidRequest("command contains a NUL character, which no shell accepts.")
        size = _utf8_size("command", command)
        if size >= MAX_ARG_BYTES:
            raise InvalidRequest(
                f"command is {size} bytes; Linux passes at most {MAX_ARG_BYTES - 1} bytes as one "
                "argument to the shell. Write it to a script file and run that file."
            )
        workdir = _workdir(cwd)
        for key, value in (env or {}).items():
            if not _ENV_KEY.match(key) or "\0" in value:
                raise InvalidRequest(
                    f"env variable {shown(key)} is not valid: names are letters, digits and _ "
                    "(not starting with a digit), and values cannot contain NUL."
                )
            if _utf8_size(f"env variable {shown(key)}", f"{key}={value}") >= MAX_ARG_BYTES:
                raise InvalidRequest(
                    f"env variable {shown(key)} is too long: Linux takes at most "
                    f"{MAX_ARG_BYTES - 1} bytes for NAME=value. Pass big data in a file."
                )
        for arg, seconds in (("timeout_s", timeout_s), ("idle_timeout_s", idle_timeout_s)):
            if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
                raise InvalidRequest(
                    f"{arg} must be greater than 0, a finite number of seconds (or omitted for "
                    f"no {arg.removesuffix('_s').replace('_', ' ')}); got {seconds!r}."
                )
        if len(labels) > MAX_LABELS:
            raise InvalidRequest(f"labels can hold at most {MAX_LABELS} labels.")
        for label in labels:
            if not _LABEL.match(label):
                raise InvalidRequest(
                    f"labels: {shown(label)} is not a valid label: use 1-64 letters, digits or "
                    ". _ : / @ + -"
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
        resolved = str(workdir.resolve())
        verdict = await self._admit(command, resolved, client, dict(env or {}))
        # Secret values are never stored: the row keeps their names (see isolation.WITHHELD).
        secret = {k: v for k, v in (env or {}).items() if self._is_secret(k, v)}
        detail: dict[str, object] = {
            "isolation": self.isolation.mode,
            "limits": dict(self.isolation.rlimits),
            "timeout_s": timeout_s if timeout_s is not None else self.settings.default_timeout_s,
            "env_keys": sorted(env or {}),
        }
        if verdict.audit_note:
            detail["unverified"] = verdict.audit_note
        # Written with the job, in one transaction, before anything is spawned: an audit row
        # that cannot be written fails the call with nothing created or run, and an error
        # never hides a running job (a client would retry and start a duplicate).
        audit = audit_event(
            self.redactor,
            "execute",
            self.runner.server_id,
            client,
            command=command,
            cwd=resolved,
            verdict=verdict,
            detail=detail,
        )
        job = await self.runner.submit(
            command,
            cwd=resolved,
            env={k: WITHHELD if k in secret else v for k, v in (env or {}).items()},
            labels=list(labels),
            timeout_s=timeout_s,
            options=options,
            shell=shell,
            audit=audit,
            secret_env=secret,
        )
        return self._view(job)

    async def _admit(
        self, command: str, cwd: str, client: Client | None, env: Mapping[str, str] | None = None
    ) -> Verdict:
        """Rate limit, cwd roots, isolation's cwd rule, then the command policy. A refusal is
        recorded in the audit log and raised; nothing is spawned."""
        wait_s = self.bucket.take()
        if wait_s > 0:
            await self._audit("rate_limited", client, command=command, cwd=cwd,
                              detail={"retry_after_s": round(wait_s, 3)})  # fmt: skip
            raise RateLimited(
                wait_s, self.settings.rate_limit_burst, self.settings.rate_limit_per_s
            )
        # The job's environment as the runner will build it, so `"$PYTHON" -m pytest` is judged
        # as what $PYTHON holds. Off the event loop: a check is bounded (shellparse's caps: 25 ms
        # of parsing, 0.5 s of one thread at most; real ones take ~1 ms).
        job_env = self.isolation.environment(env or {}, (MARKER, ""))
        verdict = await self._off_loop(
            partial(
                admission_verdict, self.settings, self.isolation, self.policy, command, cwd, job_env
            )
        )
        if not verdict.allowed:
            await self._audit("execute", client, command=command, cwd=cwd, verdict=verdict)
            log.info("job_refused rule=%s", verdict.rule)
            raise PolicyRefused(verdict.message, rule=verdict.rule, matched=verdict.matched)
        return verdict

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """Run a policy check on the checks' worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._checks, work)

    async def _audit(
        self,
        kind: AuditKind,
        client: Client | None,
        *,
        command: str | None = None,
        cwd: str | None = None,
        job_id: str | None = None,
        verdict: Verdict | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        await self.store.record_audit(
            audit_event(
                self.redactor,
                kind,
                self.runner.server_id,
                client,
                command=command,
                cwd=cwd,
                job_id=job_id,
                verdict=verdict,
                detail=detail,
            )
        )

    async def _record_policy(self) -> None:
        """One ``policy_loaded`` event per start, saying whether the policy changed."""
        described = {**self.policy.describe(), **self.isolation.describe()}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
        last = await self.store.list_audit(kind="policy_loaded", limit=1)
        previous = last[0].detail.get("digest") if last else None
        described.update(
            {
                "digest": digest,
                "previous_digest": previous,
                "changed": previous is not None and previous != digest,
                "redact_output": self.settings.redact_output,
                "store_redacted": self.settings.store_redacted,
                "allowed_cwd_roots": [str(r) for r in self.settings.allowed_cwd_roots],
                "rate_limit": [self.settings.rate_limit_burst, self.settings.rate_limit_per_s],
            }
        )
        await self._audit("policy_loaded", None, detail=described)

    async def audit(
        self,
        limit: int = 50,
        kind: str | None = None,
        since: str | None = None,
        job_id: str | None = None,
        before_id: int | None = None,
    ) -> AuditResult:
        if not 1 <= limit <= 500:
            raise InvalidRequest("limit must be between 1 and 500.")
        if kind is not None and kind not in AUDIT_KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(AUDIT_KINDS)}.")
        if before_id is not None and not 1 <= before_id <= MAX_EVENT_ID:
            raise InvalidRequest(
                f"before_id must be between 1 and {MAX_EVENT_ID}: pass the next_before_id of a "
                "previous audit call, or omit it for the newest events."
            )
        events = await self.store.list_audit(
            kind=kind,
            since=parse_since(since) if since else None,
            job_id=await self.store.resolve_id(job_id, audited=True) if job_id else None,
            limit=limit,
            before_id=before_id,
        )
        more = len(events) == limit
        return AuditResult(
            events=[AuditView.of(e) for e in events],
            next_before_id=events[-1].id if more and events else None,
        )

    def _shell_input(self, job: Job) -> ShellInput | None:
        if job.status.is_terminal:
            self._shells.pop(job.id, None)
            return None
        if job.id not in self._shells:
            env = self.isolation.environment(job.env, (MARKER, job.id))
            self._shells[job.id] = shell_input_for(
                self.policy, job.command, cwd=job.cwd, home=str(Path.home()), env=env, pty=job.pty
            )
        return self._shells[job.id]

    # --- redaction ------------------------------------------------------------------------

    def _is_secret(self, key: str, value: str) -> bool:
        """A secret-like name, or a value that looks like a token or credentials."""
        return bool(_SECRET_ENV.search(key) or self.redactor.redact(value.encode())[1])

    def _redactor_for(self, job: Job) -> Redactor:
        env = {**job.env, **self.isolation.secrets.get(job.id)}  # values this server holds
        values = [v.encode() for k, v in env.items() if v != WITHHELD and self._is_secret(k, v)]
        return self.redactor.with_values(values)

    def _mask_text(self, job: Job, text: str) -> str:
        """Caller text a view shows back (the command, the cwd), secrets masked: a token in a
        command line is a secret in ``status``, ``list`` and ``job://`` as in the audit log.
        ``redact_output=false`` turns it off with the rest of the masking of what clients read."""
        if not self.settings.redact_output:
            return text
        masked, _ = self._redactor_for(job).redact(text.encode("utf-8", "surrogatepass"))
        return masked.decode("utf-8", "replace")

    async def _mask_group(
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
    ) -> tuple[list[Chunk], int, int]:
        """Mask contiguous chunks of one stream from byte ``start`` on (at most ``limit`` bytes:
        the rest of the chunks is dropped), seen with ``CONTEXT_BYTES`` before and after.

        Returns the chunks (bytes before ``start`` unchanged, masked up to the cut, as stored
        from the cut on: the caller removes those), the cut (an offset: where the masked part
        ends), and how many secrets were masked. ``offload``: mask in a worker thread (big
        batches: rendering redraws costs Python time).
        """
        stream = group[0].stream
        lo, hi = group[0].offset, group[-1].end
        start = min(max(start, lo), hi)
        stop = hi if limit is None else min(hi, start + limit)
        length = max(job.ingested(stream), hi)
        want_lo, want_hi = max(0, start - CONTEXT_BYTES), min(length, stop + CONTEXT_BYTES)
        around = list(group)
        if want_lo < lo:  # read only the context the chunks at hand do not cover
            around += await self.store.read_stream(job.id, stream, want_lo, lo - want_lo)
        if want_hi > hi:
            around += await self.store.read_stream(job.id, stream, hi, want_hi - hi)
        run_base, data = _run_around(around, want_lo, want_hi, start, stop)
        if ended is None:
            ended = job.status.is_terminal
        holding = live and not ended and stop >= length
        final = ended and run_base + len(data) >= length
        window = partial(redactor.window, data, start - run_base, stop - run_base, width=job.cols)
        r = (
            await asyncio.to_thread(window, live=holding, final=final)
            if offload
            else window(live=holding, final=final)
        )
        if r.end + run_base <= start and not holding:
            # A match longer than the context touches its end: mask what we have, go on.
            r = window(live=False, final=True)
        cut = run_base + r.end
        out = []
        for c in group:
            head = c.data[: max(0, start - c.offset)]
            lo_m, hi_m = max(c.offset, start), min(c.end, cut)
            body = r.data[lo_m - start : hi_m - start] if hi_m > lo_m else b""
            rest = c.data[max(0, max(lo_m, hi_m) - c.offset) : max(0, stop - c.offset)]
            out.append(Chunk(stream, c.offset, head + body + rest))
        return out, cut, sum(r.hits.values())

    async def _mask(
        self,
        job: Job,
        chunks: Sequence[Chunk],
        starts: Mapping[Stream, int] | None = None,
        *,
        hold: bool,
        limit: int | None = None,
        merged: bool = False,
    ) -> tuple[list[Chunk], dict[Stream, int], int]:
        """Chunks with secrets masked (from ``starts`` on), seen with context around them.

        Each stream is masked on its own; with ``merged`` (a read of both streams) also the
        text of both as the read returns it, in the order stored, so a secret split between
        stdout and stderr is masked too. With ``hold``, a running job's trailing, possibly
        incomplete secret is held back (cut off; a later read returns it whole): nothing of a
        stream from its cut on is returned. Returns the chunks in their order, the bytes held
        back per stream, and how many secrets were masked.
        """
        held = {s: 0 for s in Stream}
        if not self.settings.redact_output or not chunks:
            return list(chunks), held, 0
        redactor = self._redactor_for(job)
        masked: dict[tuple[Stream, int], Chunk] = {}
        cuts: dict[Stream, int] = {}
        stops: dict[Stream, int] = {}
        count = 0
        for stream in Stream:
            mine = sorted((c for c in chunks if c.stream is stream), key=lambda c: c.offset)
            for group in _contiguous(mine):
                start = starts[stream] if starts is not None else group[0].offset
                new, cut, n = await self._mask_group(
                    redactor, job, group, start, live=hold, limit=limit
                )
                count += n
                stop = group[-1].end if limit is None else min(group[-1].end, start + limit)
                stops[stream] = max(stops.get(stream, stop), stop)
                cuts[stream] = min(cuts.get(stream, cut), cut)
                masked.update(((stream, c.offset), c) for c in new)
        out = [masked[(c.stream, c.offset)] for c in chunks]
        if merged:
            out, merged_cuts, n = await self._mask_merged(redactor, job, out, starts, live=hold)
            count += n
            for stream, cut in merged_cuts.items():
                cuts[stream] = min(cuts.get(stream, cut), cut)
        result = []
        for c in out:
            cut = cuts.get(c.stream, c.end)
            data = c.data[: max(0, cut - c.offset)]
            if data:
                result.append(Chunk(c.stream, c.offset, data))
        for stream, cut in cuts.items():
            held[stream] = max(0, stops[stream] - cut)
        return result, held, count

    async def _mask_merged(
        self,
        redactor: Redactor,
        job: Job,
        window: Sequence[Chunk],
        starts: Mapping[Stream, int] | None,
        *,
        live: bool,
    ) -> tuple[list[Chunk], dict[Stream, int], int]:
        """Mask ``window`` (chunks of both streams in the order stored) as one text, with the
        text of both streams before and after it as context. Returns the chunks (masked up to
        the cut), the cut per stream (nothing of a stream from it on may be returned) and how
        many secrets were masked."""
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
        after = {s: ends.get(s, begin[s]) for s in Stream}
        lows = {s: max(0, begin[s] - CONTEXT_BYTES) for s in Stream}
        before: list[Chunk] = []
        if lows != begin:
            for c in await self.store.read_interleaved(job.id, lows, 4 * CONTEXT_BYTES):
                lo, hi = max(c.offset, lows[c.stream]), min(c.end, begin[c.stream])
                if lo < hi:
                    before.append(Chunk(c.stream, lo, c.data[lo - c.offset : hi - c.offset]))
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
        return out, cuts, sum(r.hits.values())

    async def redact_stored(self, job_id: str) -> None:
        """Mask secrets in an ended job's stored output in place (``store_redacted``)."""
        if not self.settings.store_redacted:
            return
        job = await self.store.get_job(job_id, events=False)
        redactor = self._redactor_for(job)
        for stream in Stream:
            pos, end = 0, job.ingested(stream)
            while pos < end:
                chunks = await self.store.read_stream(
                    job.id, stream, pos, _REDACT_BATCH, whole_rows=True
                )
                if not chunks:
                    break
                group = _contiguous(chunks)[0]
                # The job's process has exited and all its output is stored: the end is final.
                new, cut, _ = await self._mask_group(
                    redactor, job, group, pos, live=False, ended=True, offload=True
                )
                updates = []
                for old, c in zip(group, new, strict=True):
                    data = c.data + old.data[len(c.data) :]  # the part past the cut: unchanged
                    if data != old.data:
                        updates.append((old.offset, data))
                await self.store.rewrite_chunks(job.id, stream, updates)
                pos = max(cut, pos + 1) if cut > pos else group[-1].end

    async def _dependency(self, job_id: str) -> str:
        try:
            return await self.store.resolve_id(job_id)
        except JobNotFound:
            raise InvalidRequest(
                f"after: no job with id {job_id!r}. Give ids of existing jobs (see `list`)."
            ) from None

    async def rerun(
        self,
        job_id: str,
        env: Mapping[str, str] | None = None,
        *,
        client: Client | None = None,
    ) -> JobView:
        """A new job with the same command, cwd, env, labels, terminal, priority and timeouts
        (not the dependencies: those have run); it records which job it reran. ``env`` adds to
        (or replaces) the old job's variables; it must give the values of its secret-named
        ones, which are not stored. ``client``: who asked for the rerun, for its audit row (as
        for ``execute``)."""
        old = await self._job(job_id)
        merged = {**old.env, **(env or {})}
        missing = sorted(k for k, v in merged.items() if v == WITHHELD)
        if missing:
            example = ", ".join(f'"{k}": "..."' for k in missing)
            raise InvalidRequest(
                f"job {old.id} was started with {', '.join(missing)}, whose values are not "
                "stored (secret-like names or values). Pass them again: "
                f"rerun(job_id={old.id!r}, env={{{example}}})."
            )
        return await self.execute(
            old.command,
            old.cwd,
            merged,
            old.timeout_s,
            old.labels,
            pty=old.pty,
            rows=old.rows,
            cols=old.cols,
            priority=old.priority,
            idle_timeout_s=old.idle_timeout_s,
            rerun_of=old.id,
            shell=old.shell,
            client=client,
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
        return ListResult(
            jobs=[summary(j, now, mask=partial(self._mask_text, j)) for j in jobs],
            next_cursor=next_cursor,
        )

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
        read = await self._read(job, streams, pos, max_bytes, plain)
        # Nothing covered: at most the start of a character (or of a secret) still being written.
        more = read.covered > 0 and any(
            read.pos[s] < job.ingested(s) - read.held[s] for s in streams
        )
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

    async def _flush(self, job_id: str) -> None:
        self.runner.pump(job_id)
        try:
            await self.runner.flush(job_id)
        except StorageError as exc:
            # A read must not need a write: on a full disk or a locked database it answers
            # with what is stored already (the rest is stored when the write goes through).
            log.warning("read_without_flush id=%s kind=%s error=%s", job_id, exc.kind, exc)

    async def _read(
        self,
        job: Job,
        streams: list[Stream],
        pos: dict[Stream, int],
        max_bytes: int,
        plain: bool = False,
    ) -> _Read:
        """Output from ``pos`` on: masked, held back where a secret may be incomplete, decoded,
        control sequences stripped. ``plain``: rendered as a terminal shows it; an escape
        sequence not complete yet is left for the next read."""
        want = max(max_bytes, 4)  # enough for one whole character
        if len(streams) == 1:
            chunks = await self.store.read_stream(job.id, streams[0], pos[streams[0]], want)
        else:
            chunks = await self.store.read_interleaved(job.id, pos, want)
        chunks, held, redactions = await self._mask(
            job, chunks, pos, hold=True, limit=want, merged=len(streams) > 1
        )
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
        shown = strip_controls(terminal.render(text, job.cols) if plain else text)
        shown, more_hits = self._mask_shown(job, shown)
        return _Read(shown, new, covered, dropped, held, redactions + more_hits)

    def _mask_shown(self, job: Job, text: str) -> tuple[str, int]:
        """The text a read returns, masked once more as it is: that is what the client sees,
        so a secret that only shows once this read alone is rendered (a redraw that reaches back
        before the read's start) is masked too. Returns the text and the secrets masked."""
        if not self.settings.redact_output or not text:
            return text, 0
        data = text.encode()
        masked, hits = self._redactor_for(job).redact(data)
        if masked == data:
            return text, 0
        return masked.decode("utf-8", "replace"), sum(hits.values())

    async def tail(
        self,
        job_id: str,
        lines: int = 50,
        stream: StreamChoice = "stdout",
        render: RenderChoice = "auto",
    ) -> TailResult:
        return (await self._tail(job_id, lines, stream, render))[0]

    async def _tail(
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
        await self._flush(job_id)
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
        chunks, _held, redactions = await self._mask(
            job, chunks, hold=True, merged=len(streams) > 1
        )
        data = b"".join(c.data for c in chunks)
        body = data[:-1] if data.endswith(b"\n") else data
        parts = body.split(b"\n")
        found = len(parts) if len(parts) <= lines else lines
        text_bytes = b"\n".join(parts[-found:]) if found else b""
        truncated = bool(chunks) and len(parts) <= lines and len(data) >= MAX_READ_BYTES
        if truncated:
            text_bytes = text_bytes[-MAX_READ_BYTES:]
            # Whole lines only (unless one line is all there is): the first line read was cut
            # by the byte limit, maybe inside an escape sequence, whose text would show.
            text_bytes = text_bytes[text_bytes.find(b"\n") + 1 :]
            found = text_bytes.count(b"\n") + 1
        before += len(body) - len(text_bytes)
        if text_bytes and data.endswith(b"\n"):
            text_bytes += b"\n"
        text = text_bytes.decode("utf-8", "replace")
        plain = _plain(job, render)
        if plain and text:
            # Rendering can only merge lines (a cursor moved up): count what is shown.
            text = terminal.render(text, job.cols)
            found = text.count("\n") + (0 if text.endswith("\n") else 1)
        text, more_hits = self._mask_shown(job, strip_controls(text))
        result = TailResult(
            job_id=job.id,
            stream=stream,
            text=text,
            lines=found if text else 0,
            truncated=truncated,
            redactions=redactions + more_hits,
            status=job.status,
            render="plain" if plain else "raw",
        )
        return result, before

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
        if not 0 <= wait_s <= MAX_WAIT_S:
            raise InvalidRequest(f"wait_s must be between 0 and {MAX_WAIT_S}.")
        if not 0.05 <= settle_s <= MAX_WAIT_S:
            raise InvalidRequest(f"settle_s must be between 0.05 and {MAX_WAIT_S}.")
        if len(keys) > MAX_KEYS:
            raise InvalidRequest(f"keys can hold at most {MAX_KEYS} keys per call.")
        parsed = [terminal.parse_key(k) for k in keys]
        pattern: re.Pattern[str] | None = None
        if until is not None:
            # RE2: matched on the event loop against program output, so it must run in linear
            # time (Python's re takes minutes on '^(a+)+$' against 30 characters).
            try:
                pattern = re2.compile("(?m)" + until, _UNTIL_OPTIONS)
            except re2.error as exc:
                why = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
                raise InvalidRequest(
                    f"until {shown(until)} is not a valid regular expression ({why}). It "
                    "takes RE2 syntax: Python's, without backreferences or lookarounds."
                ) from None
        data = _utf8("input", input)
        if len(data) > STDIN_BUFFER_MAX:
            raise InvalidRequest(
                f"input is {len(data)} bytes; one interact call sends at most {STDIN_BUFFER_MAX} "
                "bytes (1 MiB). Send it in parts, each once the program has read the previous "
                "one (interact returns when it waits for input again), or write it to a file "
                "and have the program read that."
            )
        job = await self._job(job_id)
        only_wait = not data and not parsed and not eof
        if only_wait:
            await self._flush(job.id)
        else:
            self.runner.pump(job.id)
        written = self.runner.ingester.written(job.id) or {s: job.ingested(s) for s in Stream}
        start = await self._line_starts(job.id, written) if only_wait else written
        before = await self.runner.input_state(job.id) if pattern is None else None
        # The size, never the content: input may be a password typed into a prompt.
        facts: dict[str, object] = {"bytes": len(data), "eof": eof}
        if parsed:
            facts["keys"] = len(parsed)
        shell = await self._off_loop(partial(self._shell_input, job))
        key_bytes = [k.data for k in parsed]
        if shell is not None and job.status is JobStatus.RUNNING and not only_wait:
            # A shell reading stdin runs what is typed: check it like a command line (with the
            # keys, which can end a line), off the event loop like execute's check.
            verdict = await self._off_loop(partial(shell.check, input, eof=eof, keys=key_bytes))
            facts["shell_input"] = True
            if not verdict.allowed:
                await self._audit("interact", client, job_id=job.id, verdict=verdict,
                                  detail=facts)  # fmt: skip
                raise PolicyRefused(
                    verdict.message.replace("Nothing was run.", "Nothing was written."),
                    rule=verdict.rule,
                    matched=verdict.matched,
                )
            if verdict.audit_note:
                facts["unverified"] = verdict.audit_note
        await self.runner.send_input(job, data, keys=parsed, eof=eof)
        if shell is not None and not only_wait:
            shell.accept(input, eof=eof, keys=key_bytes)
        log.info("job_input id=%s bytes=%d keys=%d eof=%s", job.id, len(data), len(parsed), eof)
        if not only_wait:
            await self._audit("interact", client, job_id=job.id, detail=facts)
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
        read = await self._read(job, streams, pos, MAX_READ_BYTES, plain)
        return InteractResult(
            job_id=job.id,
            bytes_written=len(data) + sum(len(k.data) for k in parsed),
            eof_sent=eof,
            output=read.text,
            cursor=format_cursor(read.pos),
            redactions=read.redactions,
            more=read.covered > 0
            and any(read.pos[s] < job.ingested(s) - read.held[s] for s in streams),
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
                        read = await self._read(current, streams, window_pos, MAX_READ_BYTES)
                        window_pos = read.pos
                        window = (window + read.text)[-_UNTIL_WINDOW:]
                        if read.covered < MAX_READ_BYTES:
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

    async def recent_output(self, job_id: str) -> str:
        """The last ``MAX_READ_BYTES`` of output (both streams, in the order stored), with a note
        first when earlier output is left out (for the ``job://{id}/output`` resource)."""
        tail, before = await self._tail(job_id, MAX_TAIL_LINES, "both", "auto")
        if before > 0:
            job = await self.store.get_job(tail.job_id, events=False)
            total = sum(job.ingested(s) for s in Stream)
            return (
                f"[... the first {before} of {total} bytes are left out: read them "
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
        self,
        job_id: str,
        signal_name: str = "TERM",
        grace_s: float | None = None,
        client: Client | None = None,
    ) -> JobView:
        sig = parse_signal(signal_name)
        grace = self.settings.kill_grace_s if grace_s is None else grace_s
        if not 0 <= grace <= 300:
            raise InvalidRequest("grace_s must be between 0 and 300 seconds.")
        job_id = await self.store.resolve_id(job_id)
        job = await self.runner.kill(job_id, sig, grace)
        facts = {"signal": sig.name, "grace_s": grace, "status": job.status}
        await self._audit("kill", client, job_id=job_id, detail=facts)
        note = None
        if not job.status.is_terminal:
            note = (
                f"Signalled, but its end is not recorded yet: the server that runs it (owner "
                f"{job.owner_id}) records it once its output is stored. Call wait."
            )
        return self._view(job, note)

    async def wait(
        self, job_id: str, timeout_s: float = 30.0, progress: ProgressFn | None = None
    ) -> WaitResult:
        _check_wait(timeout_s)
        capped = min(timeout_s, MAX_WAIT_S)
        job_id = await self.store.resolve_id(job_id)
        waited = await self._until_ended(
            [job_id],
            first=False,
            capped=capped,
            progress=progress,
            note=lambda secs, _: f"job {job_id} still running after {secs:.0f} s",
        )
        job = await self.store.get_job(job_id)
        finished = job.status.is_terminal
        if finished:
            message = f"Job {job_id} has ended: {job.status}."
        else:
            message = f"Job {job_id} is still {job.status} after {waited:.1f} s; call wait again."
            if timeout_s > MAX_WAIT_S:
                message += f" (One call waits at most {MAX_WAIT_S:.0f} s, under clients' timeouts.)"
        return WaitResult(finished=finished, waited_s=waited, message=message, job=self._view(job))

    async def wait_many(
        self,
        job_ids: Sequence[str] = (),
        label: str | None = None,
        return_when: Literal["all", "first"] = "all",
        timeout_s: float = 30.0,
        progress: ProgressFn | None = None,
    ) -> WaitManyResult:
        """Wait for several jobs at once: the given ids, plus the jobs with ``label`` that are
        queued or running now; until all have ended (or the first, ``return_when="first"``)."""
        _check_wait(timeout_s)
        if not job_ids and label is None:
            raise InvalidRequest("Pass job_ids, a label, or both: the jobs to wait for.")
        ids = list(dict.fromkeys([await self.store.resolve_id(j) for j in job_ids]))
        if label is not None:
            labelled, _ = await self.store.list_jobs(
                JobFilter(label=label, statuses=ACTIVE), limit=MAX_WAIT_JOBS + 1
            )
            ids += [j.id for j in reversed(labelled) if j.id not in ids]  # oldest first
        if len(ids) > MAX_WAIT_JOBS:
            raise InvalidRequest(
                f"That is {len(ids)} jobs; one call waits for at most {MAX_WAIT_JOBS}. Wait for "
                "them in groups."
            )
        known = await self.store.get_jobs(ids)
        missing = set(ids) - known.keys()
        if missing:
            raise JobNotFound(", ".join(sorted(missing)))
        # Jobs that have ended already are not waited for (nor looked up again one by one).
        running = [j for j in ids if not known[j].status.is_terminal]
        if return_when == "first" and len(running) < len(ids):
            running = []
        waited = await self._until_ended(
            running,
            first=return_when == "first",
            capped=min(timeout_s, MAX_WAIT_S),
            progress=progress,
            note=lambda _, left: f"{len(ids) - left} of {len(ids)} jobs ended",
        )
        jobs = await self.store.get_jobs(ids)
        ordered = [jobs[j] for j in ids if j in jobs]  # a job pruned meanwhile is left out
        ended = sum(j.status.is_terminal for j in ordered)
        finished = ended == len(ordered) or (return_when == "first" and ended > 0)
        counts = dict(Counter(j.status.value for j in ordered))
        tally = ", ".join(f"{n} {status}" for status, n in counts.items())
        if finished:
            message = f"{ended} of {len(ordered)} jobs have ended ({tally})."
        else:
            message = (
                f"{ended} of {len(ordered)} jobs have ended after {waited:.1f} s ({tally}); call "
                "wait_many again."
            )
        return WaitManyResult(
            finished=finished,
            waited_s=waited,
            message=message,
            counts=counts,
            jobs=[
                WaitedJob(id=j.id, status=j.status, exit_code=j.exit_code, signal=j.signal)
                for j in ordered
            ],
        )

    async def _until_ended(
        self,
        job_ids: Sequence[str],
        *,
        first: bool,
        capped: float,
        progress: ProgressFn | None,
        note: Callable[[float, int], str],
    ) -> float:
        """Wait until the jobs have all ended (one of them: ``first``) or ``capped`` seconds
        passed, sending progress every ``PROGRESS_EVERY_S`` with ``note(waited, still
        running)``. Returns the seconds waited."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        pending = {asyncio.ensure_future(self.runner.wait_end(j, capped)) for j in job_ids}
        try:
            while pending:
                left = capped - (loop.time() - began)
                if left <= 0:
                    break
                done, pending = await asyncio.wait(
                    pending,
                    timeout=min(PROGRESS_EVERY_S, left),
                    return_when=asyncio.FIRST_COMPLETED if first else asyncio.ALL_COMPLETED,
                )
                if first and any(d.result() for d in done):
                    break
                if pending and progress is not None:
                    waited = loop.time() - began
                    await progress(waited, capped, note(waited, len(pending)))
        finally:
            for w in pending:
                w.cancel()
        return round(loop.time() - began, 3)


class ClaimedJobCheck:
    """This server's policy for jobs it did not accept itself: queued jobs claimed from a server
    that is gone, or written into the database by someone else. Without it, a job queued by
    anyone who can write the file would run under this server's identity unchecked. The runner
    calls ``check`` before such a job starts; the decision is audited (``execute``, with
    ``claimed_from`` in its detail)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        isolation: Isolation,
        policy: Policy,
        redactor: Redactor,
    ) -> None:
        self.settings, self.store, self.isolation = settings, store, isolation
        self.policy, self.redactor = policy, redactor

    async def check(self, job: Job, claimed_from: str | None, server_id: str) -> str | None:
        """Why the job is refused (names the rule), or None: it may run."""
        try:
            env = self.isolation.environment(job.env, (MARKER, job.id))
        except InvalidRequest as exc:  # its secret values went with the server that queued it
            return str(exc)
        verdict = await asyncio.to_thread(
            admission_verdict, self.settings, self.isolation, self.policy, job.command, job.cwd, env
        )
        detail: dict[str, object] = {"claimed_from": claimed_from, "isolation": self.isolation.mode}
        if verdict.audit_note:
            detail["unverified"] = verdict.audit_note
        await self.store.record_audit(
            audit_event(
                self.redactor,
                "execute",
                server_id,
                None,
                command=job.command,
                cwd=job.cwd,
                job_id=job.id,
                verdict=verdict,
                detail=detail,
            )
        )
        if verdict.allowed:
            return None
        log.info("claimed_job_refused id=%s rule=%s", job.id, verdict.rule)
        return verdict.message


# --- pure helpers --------------------------------------------------------------------------


def admission_verdict(
    settings: Settings,
    isolation: Isolation,
    policy: Policy,
    command: str,
    cwd: str,
    env: Mapping[str, str],
) -> Verdict:
    """May ``command`` run in ``cwd`` with the job environment ``env`` here: the cwd roots, the
    isolation's cwd rule, then the command policy (the rate limit aside). CPU-bound but bounded
    (see ``shellparse``): callers run it off the event loop."""
    roots = settings.allowed_cwd_roots
    if roots and not any(Path(cwd).is_relative_to(r) for r in roots):
        return Verdict(
            "refused", "cwd-roots", cwd,
            f"Refused by rule cwd-roots: cwd {cwd!r} is outside the allowed roots "
            f"({', '.join(map(str, roots))}). Pass a cwd inside one of them. Nothing was run.",
        )  # fmt: skip
    if (why := isolation.check_cwd(cwd)) is not None:
        return Verdict("refused", f"isolation:{isolation.mode}", cwd, why)
    return policy.check(command, cwd=cwd, home=str(Path.home()), env=env)


def audit_event(
    redactor: Redactor,
    kind: AuditKind,
    server_id: str,
    client: Client | None,
    *,
    command: str | None = None,
    cwd: str | None = None,
    job_id: str | None = None,
    verdict: Verdict | None = None,
    detail: Mapping[str, object] | None = None,
) -> AuditEvent:
    """An audit event with the command and the matched part masked (see ``audit_text``)."""
    c = client or Client()
    matched = audit_text(redactor, verdict.matched) if verdict else None
    if kind == "interact":
        # Typed input may be a password: its row keeps sizes, counts and flags, never the text,
        # nor the part of it a rule matched or could not verify (a flag says so).
        matched = None
        detail = {k: v if isinstance(v, bool | int | float) else True
                  for k, v in (detail or {}).items()}  # fmt: skip
    return AuditEvent(
        kind=kind,
        server_id=server_id,
        decision=verdict.decision if verdict else None,
        rule=verdict.rule if verdict else None,
        matched=matched,
        job_id=job_id,
        command=audit_text(redactor, command) if command is not None else None,
        cwd=cwd,
        client_name=c.name,
        client_version=c.version,
        session_id=c.session_id,
        detail={**(detail or {}), **({"protocol": c.protocol} if c.protocol else {})},
    )


def policy_from(settings: Settings) -> Policy:
    return Policy.from_patterns(
        mode=settings.policy_mode,
        allow=settings.policy_allow,
        deny=settings.policy_deny,
        builtin=settings.policy_builtin_deny,
        unparseable=settings.policy_unparseable,
    )


def audit_text(redactor: Redactor, text: str) -> str:
    """A command for the audit log: secrets masked, control characters escaped, capped."""
    masked, _ = redactor.redact(text.encode("utf-8", "surrogateescape"))
    whole = masked.decode("utf-8", "replace")
    # Escape only what is kept: this runs on the event loop, once per character (a 100 KB
    # command took 15-25 ms escaped whole).
    out = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1]
                  for c in whole[:_AUDIT_COMMAND_MAX])  # fmt: skip
    if len(out) > _AUDIT_COMMAND_MAX or len(whole) > _AUDIT_COMMAND_MAX:
        kept = out[:_AUDIT_COMMAND_MAX]
        out = kept + f"... [{len(whole) - len(kept)} more characters]"
    return out


def _contiguous(chunks: Sequence[Chunk]) -> list[list[Chunk]]:
    """Chunks of one stream (in offset order) grouped into runs without gaps."""
    groups: list[list[Chunk]] = []
    for c in chunks:
        if groups and groups[-1][-1].end == c.offset:
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def _run_around(
    chunks: Sequence[Chunk], lo: int, hi: int, need_lo: int, need_hi: int
) -> tuple[int, bytes]:
    """The contiguous bytes of one stream within ``lo..hi`` that include ``need_lo..need_hi``,
    from chunks that may overlap (context reads return whole rows): (offset, data). The chunks
    include a contiguous group covering ``need_lo..need_hi``."""
    runs: list[tuple[int, bytearray]] = []
    for c in sorted(chunks, key=lambda c: c.offset):
        a, b = max(c.offset, lo), min(c.end, hi)
        if a >= b:
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) >= a:
            base, buf = runs[-1]
            if b > base + len(buf):
                buf += c.data[base + len(buf) - c.offset : b - c.offset]
        else:
            runs.append((a, bytearray(c.data[a - c.offset : b - c.offset])))
    for base, buf in runs:
        if base <= need_lo and base + len(buf) >= need_hi:
            return base, bytes(buf)
    raise AssertionError(f"no contiguous bytes cover {need_lo}..{need_hi}")


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


_EARLIEST = datetime.min.replace(tzinfo=UTC)


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC if no zone) or an age such as ``30m``, ``2h``, ``7d``. An age
    reaching back past year 1 means every job (it is not an error)."""
    if m := _RELATIVE.match(text):
        try:
            return utcnow() - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
        except OverflowError:
            return _EARLIEST
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidRequest(
            f"since {shown(text)} is not a time: use ISO 8601 (2026-11-25T10:00:00Z) or an age "
            "such as 30m, 2h, 7d."
        ) from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)  # the database compares UTC times
    except OverflowError:  # within a day of year 1 or of year 9999
        return _EARLIEST if when.year == 1 else datetime.max.replace(tzinfo=UTC)


def shown(value: str, limit: int = 60) -> str:
    """A value the caller passed, for an error message: quoted, escaped, and cut if long."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(value)} characters)"


def _utf8(name: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{name} contains {text[exc.start]!r} at character {exc.start}, a lone surrogate, "
            "which is not Unicode text: pass valid UTF-8."
        ) from None


def _utf8_size(name: str, text: str) -> int:
    return len(text) if text.isascii() else len(_utf8(name, text))


def _workdir(cwd: str | None) -> Path:
    """The job's working directory: ``cwd`` (``~`` expanded, relative to the server's), or the
    server's own. It must be an existing directory."""
    here = Path.cwd()
    if not cwd:
        return here
    hint = f"pass an existing directory, or omit cwd to run in {str(here)!r}."
    if "\0" in cwd:
        raise InvalidRequest(f"cwd contains a NUL character, which no path can: {hint}")
    _utf8("cwd", cwd)
    try:
        workdir = here / Path(cwd).expanduser()
        found = workdir.is_dir()
    except (RuntimeError, OSError) as exc:  # ~nosuchuser; a name too long
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequest(f"cwd {shown(cwd)} cannot be used ({reason}): {hint}") from None
    if not found:
        raise InvalidRequest(
            f"cwd {shown(str(workdir), 200)} does not exist or is not a directory: {hint}"
        )
    return workdir


def _check_wait(timeout_s: float) -> None:
    if not (math.isfinite(timeout_s) and timeout_s >= 0):
        raise InvalidRequest(
            f"timeout_s must be a finite number of seconds, 0 or more (one call waits at most "
            f"{MAX_WAIT_S:.0f} s); got {timeout_s!r}."
        )


def _until_options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print its parse errors to stderr
    return opts


_UNTIL_OPTIONS = _until_options()


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
