"""The job operations behind the tools, as one facade: ``App`` opens and closes a server's parts
and runs execute, rerun, list, status, kill and wait itself; reading, interaction, admission and
masking are its helper modules (``reading``, ``interaction``, ``admission``, ``masking``, with
the argument checks in ``checks``), each of which it alone wires together.

Usable without MCP (tests and the CLI drive it directly); ``server`` only maps tools onto it.
Import rule: ``app`` is the top of the job stack (only ``server`` and ``commands`` import it);
its helper modules never import it, and nothing below ``app`` imports them except the runner's
callbacks, which are passed to its constructor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

from .admission import Admission, ClaimedJobCheck, Client, policy_from
from .capture import Ingester
from .checks import (
    MAX_AFTER,
    MAX_EVENT_ID,
    MAX_KEYS,
    MAX_LABELS,
    MAX_PRIORITY,
    MAX_WAIT_S,
    check_execute,
    check_host,
    check_wait,
)
from .config import parse_since
from .db import utcnow
from .errors import InvalidRequest, JobNotFound
from .grepping import Finder
from .interaction import DEFAULT_INTERACT_WAIT_S, DEFAULT_SETTLE_S, Interaction
from .isolation import WITHHELD, detect
from .jobs import ACTIVE, JobOptions, JobStatus, parse_signal
from .masking import Masker
from .matching import GrepResult, SearchResult
from .models import ListResult, WaitedJob, WaitManyResult, WaitResult, summary, view
from .reading import MAX_READ_BYTES, MAX_TAIL_LINES, Reader
from .redact import Redactor
from .remote import Remote
from .runner import Runner
from .store import JobFilter, Store

if TYPE_CHECKING:
    from .config import Settings
    from .isolation import Isolation
    from .jobs import Job
    from .models import AuditResult, InteractResult, JobView, OutputResult, TailResult
    from .policy import Verdict
    from .reading import RenderChoice, StreamChoice
    from .store import StatusChange

# What ``server`` takes from here (limits it states in tool descriptions, and the facade).
__all__ = [
    "DEFAULT_INTERACT_WAIT_S",
    "DEFAULT_SETTLE_S",
    "MAX_AFTER",
    "MAX_EVENT_ID",
    "MAX_KEYS",
    "MAX_LABELS",
    "MAX_PRIORITY",
    "MAX_READ_BYTES",
    "MAX_TAIL_LINES",
    "MAX_WAIT_JOBS",
    "App",
    "Client",
    "ProgressFn",
]

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, float, str], Awaitable[None]]

PROGRESS_EVERY_S = 5.0
#: Jobs one ``wait_many`` call can wait for (its result lists each: ~60 bytes a job).
MAX_WAIT_JOBS = 500


class App:
    """A running server's jobs: the store, the ingester and the runner, wired together, with the
    security layer in front of them: policy, cwd roots, rate limit, audit, output redaction.

    Over the ~400-line bound (~475) on purpose: it is the facade every tool, the web page and
    the worker call, one method per operation; the work is in its parts (admission, masking,
    reading, interaction, grepping, remote). Each new tool adds a short hand-off here."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runner: Runner,
        *,
        admission: Admission,
        masker: Masker,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.isolation = admission.isolation
        self.admission = admission
        self.masker = masker
        self.reader = Reader(store, runner, masker)
        self.interaction = Interaction(store, runner, self.reader, admission)
        self.finder = Finder(store, runner, self.reader, masker)
        # Another host's job: kill and interact go through the database to its server.
        self.remote = Remote(settings, store, runner, kill_here=runner.kill,
                             interact_here=self._interact_here)  # fmt: skip

    @classmethod
    async def open(cls, settings: Settings, isolation: Isolation | None = None) -> App:
        """Check the isolation works here, migrate the database, reconcile what dead servers
        left, start capturing, and record the policy in force in the audit log."""
        iso = isolation if isolation is not None else await asyncio.to_thread(detect, settings)
        store = Store(settings.db, writer_nice=settings.storage_nice)
        await store.open()
        policy, redactor = policy_from(settings), Redactor()
        claims = ClaimedJobCheck(settings, store, iso, policy, redactor)
        masker = Masker(settings, store, iso, redactor)
        runner = Runner(
            settings,
            store,
            Ingester(settings, store),
            iso,
            check_claimed=claims.check,
            on_ended=masker.redact_stored,
        )
        admission = Admission(settings, store, iso, policy, redactor, runner.server_id)
        # Before start: reconciling may end jobs.
        app = cls(settings, store, runner, admission=admission, masker=masker)
        try:
            await runner.start()
            await app.remote.start()
            await admission.record_policy()
        except BaseException:
            with contextlib.suppress(Exception):
                await app.remote.close()
            with contextlib.suppress(Exception):  # keep the original error
                await runner.shutdown()
            admission.close()
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
            await self.remote.close()
            await self.runner.shutdown()
        finally:
            self.admission.close()
            await self.store.close()

    async def _job(self, job_id: str) -> Job:
        return await self.store.get_job(await self.store.resolve_id(job_id))

    async def job(self, job_id: str) -> Job:
        """The job's record without its events, by id or unique prefix (for the command line)."""
        return await self.store.get_job(await self.store.resolve_id(job_id), events=False)

    def _view(self, job: Job, note: str | None = None) -> JobView:
        written = self.runner.ingester.written(job.id) if job.status is JobStatus.RUNNING else None
        if job.status is JobStatus.RUNNING:
            note = self.runner.end_note(job.id) or note
        return view(job, utcnow(), written, note=note, mask=partial(self.masker.mask_text, job))

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
        detach: bool | None = None,
        *,
        rerun_of: str | None = None,
        shell: str | None = None,
        client: Client | None = None,
        host: str | None = None,
    ) -> JobView:
        env = dict(env or {})
        timeouts = {"timeout_s": timeout_s, "idle_timeout_s": idle_timeout_s}
        remote = check_host(host, self.settings.host, cwd, pty)
        workdir = check_execute(command, None if remote else cwd, env, timeouts, labels, pty=pty,
                                rows=rows, cols=cols, priority=priority, after=after)  # fmt: skip
        options = JobOptions(
            pty=pty,
            rows=(rows or self.settings.pty_rows) if pty else None,
            cols=(cols or self.settings.pty_cols) if pty else None,
            priority=priority,
            idle_timeout_s=idle_timeout_s,
            after=tuple([await self._dependency(d) for d in after]),
            run_anyway=run_anyway,
            rerun_of=rerun_of,
            detached=_detached(detach, pty, self.settings.detach),
            host=host if remote else None,
        )
        # Another host's directory cannot be checked here: its server fails the job if absent.
        resolved = cwd if remote and cwd is not None else str(workdir.resolve())
        verdict = await self.admission.admit(command, resolved, client, env)
        # Secret values are never stored: the row keeps their names (see isolation.WITHHELD).
        secret = {k: v for k, v in env.items() if self.masker.is_secret(k, v)}
        if remote and secret:
            raise InvalidRequest(
                f"env: {', '.join(sorted(secret))} look secret, and secret values are kept in "
                f"this server's memory only (never stored), so host {host!r} could not get "
                "them. Run the job without them, or from a server on that host."
            )
        timeout = timeout_s if timeout_s is not None else self.settings.default_timeout_s
        detail = _execute_detail(self.isolation, timeout, env, verdict)
        # Written with the job, in one transaction, before anything is spawned: an audit row
        # that cannot be written fails the call with nothing created or run, and an error
        # never hides a running job (a client would retry and start a duplicate).
        audit = self.admission.event(
            "execute", client, command=command, cwd=resolved, verdict=verdict, detail=detail
        )
        job = await self.runner.submit(
            command,
            cwd=resolved,
            env={k: WITHHELD if k in secret else v for k, v in env.items()},
            labels=list(labels),
            timeout_s=timeout_s,
            options=options,
            shell=shell,
            audit=audit,
            secret_env=secret,
        )
        return self._view(job)

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
            detach=old.detached,
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
        host: str | None = None,
    ) -> ListResult:
        if not 1 <= limit <= 200:
            raise InvalidRequest("limit must be between 1 and 200.")
        flt = JobFilter(
            status=status,
            label=label,
            command_contains=command_contains,
            since=parse_since(since) if since else None,
            host=host,
        )
        jobs, next_cursor = await self.store.list_jobs(flt, limit=limit, cursor=cursor)
        now = utcnow()
        return ListResult(
            jobs=[summary(j, now, mask=partial(self.masker.mask_text, j)) for j in jobs],
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
        return await self.reader.output(job_id, stream, cursor, max_bytes, render)

    async def tail(
        self,
        job_id: str,
        lines: int = 50,
        stream: StreamChoice = "stdout",
        render: RenderChoice = "auto",
    ) -> TailResult:
        return (await self.reader.tail(job_id, lines, stream, render))[0]

    async def recent_output(self, job_id: str) -> str:
        """The last ``MAX_READ_BYTES`` of output (both streams, in the order stored), with a note
        first when earlier output is left out (for the ``job://{id}/output`` resource)."""
        return await self.reader.recent_output(job_id)

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
        """See ``interaction.Interaction.interact``: send input, wait until ready, read. A
        running job of another host: asked of its server (see ``remote``)."""
        job = await self.store.get_job(await self.store.resolve_id(job_id), events=False)
        if self._elsewhere(job):
            request = {"input": input, "wait_s": wait_s, "eof": eof, "until": until,
                       "settle_s": settle_s, "keys": list(keys), "render": render}  # fmt: skip
            return await self.remote.interact(job, request, client)
        return await self.interaction.interact(
            job.id, input, wait_s, eof, until, settle_s, keys, render, client=client
        )

    async def _interact_here(
        self, job_id: str, request: dict[str, Any], client: Client | None
    ) -> InteractResult:
        """An interact another host's server asked for (``remote``), on a job running here."""
        return await self.interaction.interact(job_id, **request, client=client)

    async def audit(
        self,
        limit: int = 50,
        kind: str | None = None,
        since: str | None = None,
        job_id: str | None = None,
        before_id: int | None = None,
    ) -> AuditResult:
        return await self.admission.events(limit, kind, since, job_id, before_id)

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
        await self.runner.send_input(await self.job(job_id), data, eof=eof)

    def _elsewhere(self, job: Job) -> bool:
        """A running job another machine runs: its pids mean nothing here, so kill and
        interact go to its server through the database. (A queued job is only a row: any
        server may cancel it.)"""
        return job.host not in (None, self.settings.host) and job.status is JobStatus.RUNNING

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
        job = await self.store.get_job(job_id, events=False)
        facts: dict[str, object] = {"signal": sig.name, "grace_s": grace}
        if self._elsewhere(job):
            facts["host"] = job.host
            job = await self.remote.kill(job, sig, grace)
        elif job.host not in (None, self.settings.host) and job.status.is_terminal:
            job = await self.store.get_job(job_id)  # what it left is its own host's to clear
        else:
            job = await self.runner.kill(job_id, sig, grace)
        facts["status"] = job.status
        await self.admission.audit("kill", client, job_id=job_id, detail=facts)
        note = None
        if not job.status.is_terminal:
            note = (
                f"Signalled, but its end is not recorded yet: the server that runs it (owner "
                f"{job.owner_id}) records it once its output is stored. Call wait."
            )
        return self._view(job, note)

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
        """See ``grepping.Finder.grep``."""
        return await self.finder.grep(job_id, pattern, stream, context, max_matches, ignore_case,
                                      cursor)  # fmt: skip

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
        """See ``grepping.Finder.search``."""
        return await self.finder.search(pattern, label, status, since, command_contains, limit,
                                        cursor, ignore_case)  # fmt: skip

    async def wait(
        self,
        job_id: str,
        timeout_s: float = 30.0,
        progress: ProgressFn | None = None,
        until: str | None = None,
        cursor: str | None = None,
    ) -> WaitResult:
        if until is not None:
            got = await self.finder.wait_until(job_id, until, timeout_s, cursor, progress)
            job = await self.store.get_job(got.job_id)
            message = {
                "matched": f"A line of job {job.id} matched after {got.waited_s:.1f} s.",
                "ended": f"Job {job.id} ended ({job.status}) before a line matched.",
                "timeout": f"No line matched after {got.waited_s:.1f} s; call wait again with "
                "the cursor.",
            }[got.until]
            return WaitResult(finished=job.status.is_terminal, waited_s=got.waited_s,
                              message=message, job=self._view(job), until=got.until,
                              match=got.match, cursor=got.cursor)  # fmt: skip
        check_wait(timeout_s)
        capped = min(timeout_s, MAX_WAIT_S)
        job_id = await self.store.resolve_id(job_id)
        waited = await until_ended(
            self.runner,
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
        check_wait(timeout_s)
        if not job_ids and label is None:
            raise InvalidRequest("Pass job_ids, a label, or both: the jobs to wait for.")
        known, ids = await self._wait_set(job_ids, label)
        # Jobs that have ended already are not waited for (nor looked up again one by one).
        running = [j for j in ids if not known[j].status.is_terminal]
        if return_when == "first" and len(running) < len(ids):
            running = []
        waited = await until_ended(
            self.runner,
            running,
            first=return_when == "first",
            capped=min(timeout_s, MAX_WAIT_S),
            progress=progress,
            note=lambda _, left: f"{len(ids) - left} of {len(ids)} jobs ended",
        )
        jobs = await self.store.get_jobs(ids)
        ordered = [jobs[j] for j in ids if j in jobs]  # a job pruned meanwhile is left out
        return _waited_many(ordered, return_when, waited)

    async def _wait_set(
        self, job_ids: Sequence[str], label: str | None
    ) -> tuple[dict[str, Job], list[str]]:
        """The jobs ``wait_many`` waits for, and their ids in order (given ones first, then the
        labelled ones, oldest first)."""
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
        return known, ids


async def until_ended(
    runner: Runner,
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
    pending = {asyncio.ensure_future(runner.wait_end(j, capped)) for j in job_ids}
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


def _waited_many(ordered: list[Job], return_when: str, waited: float) -> WaitManyResult:
    """``wait_many``'s answer about the jobs (in the order asked), after ``waited`` seconds."""
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


def _execute_detail(
    isolation: Isolation, timeout_s: float | None, env: Mapping[str, str], verdict: Verdict
) -> dict[str, object]:
    """The detail of an ``execute`` audit row: the boundary it runs in, never env values."""
    detail: dict[str, object] = {
        "isolation": isolation.mode,
        "limits": dict(isolation.rlimits),
        "timeout_s": timeout_s,
        "env_keys": sorted(env),
    }
    if verdict.audit_note:
        detail["unverified"] = verdict.audit_note
    return detail


def _detached(detach: bool | None, pty: bool, default: bool) -> bool:
    """Whether a job runs detached: ``detach``, else the setting (never for a PTY job unless
    asked: the setting does not refuse PTY jobs)."""
    if detach is None:
        return default and not pty
    if detach and pty:
        # Its terminal's master side would have to outlive the server: something must hold it
        # (dtach, abduco, tmux) and relay it to a later server. Not done: refused, not faked.
        raise InvalidRequest(
            "pty=true with detach=true is not supported: a terminal's master side dies with the "
            "server that holds it. Run the program without pty (detach=true), or with pty "
            "without detach."
        )
    return detach
