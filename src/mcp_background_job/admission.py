"""Admission and audit: whether a job may start (rate limit, cwd roots, the isolation's cwd
rule, the command policy) and the audit rows that record each decision.

``Admission`` is what ``App`` puts in front of the runner; ``ClaimedJobCheck`` is the same
policy for jobs this server did not accept itself (the runner calls it). Import rule: below
``app``, beside ``masking``/``reading``/``interaction``; never imports ``runner`` or ``app``;
the store and the isolation are only named in annotations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .checks import MAX_EVENT_ID
from .config import parse_since
from .errors import InvalidRequest, PolicyRefused, RateLimited
from .jobs import AUDIT_KINDS, AuditEvent
from .models import AuditResult, AuditView
from .policy import Policy, Verdict
from .proctree import MARKER

if TYPE_CHECKING:
    from .config import Settings
    from .isolation import Isolation
    from .jobs import AuditKind, Job
    from .redact import Redactor
    from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")

_AUDIT_COMMAND_MAX = 2000


@dataclass(frozen=True, slots=True)
class Client:
    """Who is calling, as the MCP client describes itself (self-reported, never verified)."""

    name: str | None = None
    version: str | None = None
    session_id: str | None = None
    protocol: str | None = None
    #: The name of the HTTP bearer token the request carried (verified, unlike the rest).
    token: str | None = None


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


class Admission:
    """The security layer in front of the runner: rate limit, cwd roots, policy, audit log."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        isolation: Isolation,
        policy: Policy,
        redactor: Redactor,
        server_id: str,
    ) -> None:
        self.settings, self.store, self.isolation = settings, store, isolation
        self.policy, self.redactor, self.server_id = policy, redactor, server_id
        self.bucket = TokenBucket(settings.rate_limit_burst, settings.rate_limit_per_s)
        # Policy checks run here, one at a time: tree-sitter holds the GIL while it parses (up
        # to shellparse.MAX_PARSE_MICROS per check), so two checks at once would hold up the
        # event loop for both; one worker lets the loop in between.
        self._checks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-check")

    def close(self) -> None:
        self._checks.shutdown(wait=False, cancel_futures=True)

    async def admit(
        self, command: str, cwd: str, client: Client | None, env: Mapping[str, str] | None = None
    ) -> Verdict:
        """Rate limit, cwd roots, isolation's cwd rule, then the command policy. A refusal is
        recorded in the audit log and raised; nothing is spawned."""
        wait_s = self.bucket.take()
        if wait_s > 0:
            await self.audit("rate_limited", client, command=command, cwd=cwd,
                             detail={"retry_after_s": round(wait_s, 3)})  # fmt: skip
            raise RateLimited(
                wait_s, self.settings.rate_limit_burst, self.settings.rate_limit_per_s
            )
        # The job's environment as the runner will build it, so `"$PYTHON" -m pytest` is judged
        # as what $PYTHON holds. Off the event loop: a check is bounded (shellparse's caps: 25 ms
        # of parsing, 0.5 s of one thread at most; real ones take ~1 ms).
        job_env = self.isolation.environment(env or {}, (MARKER, ""))
        verdict = await self.off_loop(
            partial(
                admission_verdict, self.settings, self.isolation, self.policy, command, cwd, job_env
            )
        )
        if not verdict.allowed:
            await self.audit("execute", client, command=command, cwd=cwd, verdict=verdict)
            log.info("job_refused rule=%s", verdict.rule)
            raise PolicyRefused(verdict.message, rule=verdict.rule, matched=verdict.matched)
        return verdict

    async def off_loop(self, work: Callable[[], T]) -> T:
        """Run a policy check on the checks' worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._checks, work)

    def event(
        self,
        kind: AuditKind,
        client: Client | None,
        *,
        command: str | None = None,
        cwd: str | None = None,
        job_id: str | None = None,
        verdict: Verdict | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> AuditEvent:
        """An audit event of this server (see ``audit_event``)."""
        return audit_event(
            self.redactor,
            kind,
            self.server_id,
            client,
            command=command,
            cwd=cwd,
            job_id=job_id,
            verdict=verdict,
            detail=detail,
        )

    async def audit(
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
        """Write one audit row now (not with a job: see ``event`` for that)."""
        event = self.event(
            kind, client, command=command, cwd=cwd, job_id=job_id, verdict=verdict, detail=detail
        )
        await self.store.record_audit(event)

    async def record_policy(self) -> None:
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
        await self.audit("policy_loaded", None, detail=described)

    async def events(
        self,
        limit: int = 50,
        kind: str | None = None,
        since: str | None = None,
        job_id: str | None = None,
        before_id: int | None = None,
    ) -> AuditResult:
        """The ``audit`` tool: the newest audit events, paged backwards by ``before_id``."""
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
        token=c.token,
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
