"""Submitting and starting jobs: a new job is recorded and started at once when a slot is free
and nothing is queued ahead of it; else the scheduler starts the queue's best startable jobs
(``Store.queue_state``) into the free slots. Starting a job: the policy check of a job this
server did not accept itself, the intent to start, the spawn (``spawn``), the running row
(steps 2-4 of the order of writes in the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .. import proctree
from ..capture import FailureLog, describe_failure
from ..db import utcnow
from ..errors import InvalidRequest, JobStateError, StorageError, TransitionConflict
from ..jobs import Job, JobOptions, JobStatus
from ..store import JOB_ID_LENGTH, STORAGE_FAILURES
from .spawn import SpawnFailed, spawn
from .table import StdinProtocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from ..capture import Ingester
    from ..config import Settings
    from ..isolation import Isolation
    from ..jobs import AuditEvent
    from ..store import Store
    from .ending import Ends
    from .spawn import Spawned
    from .table import JobTable, Running
    from .trees import Trees

log = logging.getLogger(__name__)

#: How often the queue is looked at while jobs wait (dependencies may end on other servers).
_QUEUE_POLL_S = 1.0

#: Checks a job this server did not accept itself (claimed from a server that is gone, or written
#: into the database by someone else) against this server's policy and records the decision:
#: ``(job, claimed from server, this server's id)`` -> why it is refused, or None to run it.
ClaimCheck = Callable[[Job, str | None, str], Awaitable[str | None]]


class Starter:
    """Creates this server's jobs and starts them, at once or from the queue."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ingester: Ingester,
        isolation: Isolation,
        table: JobTable,
        ends: Ends,
        trees: Trees,
        *,
        server_id: str,
        boot_id: str,
        check_claimed: ClaimCheck | None,
        arm_timers: Callable[[Running, Job], None],
    ) -> None:
        self.settings = settings
        self.store = store
        self.ingester = ingester
        self.isolation = isolation
        self.table = table
        self.ends = ends
        self.trees = trees
        self.watchdog = trees.watchdog
        self.server_id = server_id
        self.boot_id = boot_id
        self._check_claimed = check_claimed
        self._arm_timers = arm_timers
        self.start_lock = asyncio.Lock()
        #: Clear while submit() starts jobs itself (shutdown waits for those starts).
        self.direct_idle = asyncio.Event()
        self.direct_idle.set()

    async def submit(
        self,
        command: str,
        *,
        cwd: str,
        env: Mapping[str, str],
        labels: Sequence[str],
        timeout_s: float | None,
        options: JobOptions = JobOptions(),  # noqa: B008 (frozen)
        shell: str | None = None,
        audit: AuditEvent | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> Job:
        """Record a new job and start it now if it may (a slot is free, nothing is queued ahead
        of it, no dependencies), else leave it queued for the scheduler. ``shell``: default
        the server's. ``audit``: written with the job, in its transaction (its ``job_id`` is
        set there): if it cannot be written, nothing is created or run. ``secret_env``: values
        ``env`` holds as ``WITHHELD``, kept in memory only (see isolation.py)."""
        if self.table.closing:
            raise JobStateError("The server is shutting down; start the job on a new server.")
        remote = options.host is not None and options.host != self.settings.host

        async def create(job_id: str, *, starting: bool) -> Job:
            self.isolation.secrets.put(job_id, secret_env or {})
            job = await self.store.create_job(
                job_id=job_id,
                command=command,
                cwd=cwd,
                shell=shell or self.settings.shell,
                env=env,
                labels=labels,
                timeout_s=timeout_s if timeout_s is not None else self.settings.default_timeout_s,
                owner_id=self.server_id,
                options=options,
                audit=audit,
                starting_on=self.boot_id if starting else None,
                host=self.settings.host,
            )
            self.table.done[job.id] = asyncio.Event()
            self.table.submitted.add(job.id)
            return job

        job_id = uuid.uuid4().hex[:JOB_ID_LENGTH]
        if remote:
            # Queued for another machine, with no owner: a server there claims it (the same
            # compare-and-set as taking over a dead server's queue) and runs it.
            return await self.store.create_job(
                job_id=job_id, command=command, cwd=cwd, shell=shell or self.settings.shell,
                env=env, labels=labels, owner_id=None, options=options, audit=audit,
                timeout_s=timeout_s if timeout_s is not None else self.settings.default_timeout_s,
                host=options.host,
            )  # fmt: skip
        if not options.after and not self.table.queued and self._free_slots() > 0:
            # Started here, not by the scheduler: many submissions at once are created and
            # started concurrently (their writes share commits) instead of one at a time under
            # the start lock. Taking the slot has no await before it, so it cannot be oversold.
            # The row is created with its intent to start (no write of its own), so from its
            # commit on the job must be started here: a shutdown that began meanwhile waits for
            # it (``direct_idle``) and then stops it.
            self.table.direct.add(job_id)
            self.direct_idle.clear()

            async def create_and_start() -> Job:
                return await self._start(await create(job_id, starting=True))

            # Shielded: a cancelled call must not leave a created job unstarted, nor a spawned
            # job recorded as queued.
            start = asyncio.ensure_future(create_and_start())
            start.add_done_callback(lambda task: self._started_directly(job_id, task))
            return await asyncio.shield(start)
        job = await create(job_id, starting=False)
        if self._free_slots() <= 0:
            self.table.queued += 1  # later submissions queue behind it; the scheduler recounts
            return job
        started = await self.schedule()
        return started.get(job.id) or await self.store.get_job(job.id)

    def _started_directly(self, job_id: str, task: asyncio.Future[Job]) -> None:
        self.table.direct.discard(job_id)
        if not self.table.direct:
            self.direct_idle.set()
        if not task.cancelled() and task.exception() is not None:
            # Also read when the caller went away (the error reached it otherwise).
            log.debug("job_start_error id=%s error=%s", job_id, task.exception())

    def _free_slots(self) -> int:
        return self.settings.max_concurrent - len(self.table.running.keys() | self.table.direct)

    async def run_scheduler(self) -> None:
        failures = FailureLog("schedule_failed")
        while True:
            try:
                await self.schedule()
                failures.succeeded()
            except Exception as exc:  # noqa: BLE001 (task boundary, logged: keep scheduling)
                failures.failed(exc)
                await asyncio.sleep(1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.table.wake.wait(), _QUEUE_POLL_S if self.table.queued else None
                )
            self.table.wake.clear()

    async def schedule(self) -> dict[str, Job]:
        """Fail queued jobs whose dependencies did not complete, then start the best startable
        ones into the free slots. Returns the jobs it started, as they now stand."""
        started: dict[str, Job] = {}
        async with self.start_lock:
            while not self.table.closing:
                # Never a job submit() is starting: those are left out of the read, which is
                # queued with the writes at once. A job whose start submit() recorded first is
                # running in it; one created after it is not in it (see Store.queue_state).
                free = self._free_slots()
                state = await self.store.queue_state(
                    self.server_id, free, starting=frozenset(self.table.direct)
                )
                for job_id, reason in state.doomed:
                    with contextlib.suppress(TransitionConflict):
                        await self.store.transition(
                            job_id,
                            JobStatus.FAILED,
                            server_id=self.server_id,
                            reason=reason,
                            only_from=frozenset({JobStatus.QUEUED}),
                        )
                        log.info("job_not_started id=%s reason=%s", job_id, reason)
                    self.table.set_done(job_id)
                self.table.queued = state.queued - len(state.doomed)
                # Concurrently: their running rows share a commit.
                results = await asyncio.gather(
                    *(self._start(j) for j in state.startable), return_exceptions=True
                )
                for queued, result in zip(state.startable, results, strict=True):
                    if isinstance(result, BaseException):
                        log.error("job_start_failed id=%s", queued.id, exc_info=result)
                        continue
                    started[result.id] = result
                    if result.status is not JobStatus.QUEUED:  # (queued: deferred, see _start)
                        self.table.queued -= 1
                if not state.doomed:
                    break  # else their own dependents may now be doomed too: look again
        return started

    async def _start(self, job: Job) -> Job:
        """Spawn a queued job; returns it as it now stands (running, failed to start, refused,
        or still queued if its intent to start could not be recorded: the scheduler tries
        again). Raises ``StorageError`` if it was spawned but its start could not be recorded:
        it was stopped then (see the package docstring, step 4)."""
        if job.id in self.table.submitted:
            self.table.submitted.discard(job.id)
        elif self._check_claimed is not None:
            claimed_from = self.table.claimed.get(job.id, job.owner_id)
            refused = await self._check_claimed(job, claimed_from, self.server_id)
            self.table.claimed.pop(job.id, None)
            if refused is not None:
                log.warning("job_refused id=%s claimed_from=%s", job.id, claimed_from)
                return await self.ends.fail_start(job, refused)
        if job.start_attempted_at is None:
            try:
                job = await self.store.mark_start_attempt(job.id, self.server_id, self.boot_id)
            except TransitionConflict:
                return await self.store.get_job(job.id, events=False)  # killed meanwhile
            except STORAGE_FAILURES as exc:
                log.warning("job_start_deferred id=%s reason=%s", job.id, describe_failure(exc))
                self.table.queued += 1  # nothing was spawned; the scheduler looks again
                return job
        # An explicit environment: the server's secrets do not reach jobs (see isolation.py).
        try:
            env = self.isolation.environment(job.env, (proctree.MARKER, job.id))
        except InvalidRequest as exc:  # secret values this server does not hold
            return await self.ends.fail_start(job, f"failed to start: {exc}")
        spawned_at = utcnow()  # before the exit, which may come before the running row does
        try:
            spawned = spawn(
                job, env, settings=self.settings, isolation=self.isolation, ingester=self.ingester
            )
        except SpawnFailed as exc:
            return await self.ends.fail_start(job, exc.reason)
        return await self._record_running(job, spawned, spawned_at)

    async def _record_running(self, job: Job, spawned: Spawned, spawned_at: datetime) -> Job:
        """Watch the spawned job's exit and output, open its input, and record it running; if
        that write fails, stop it at once (see the package docstring, step 4)."""
        entry = spawned.entry
        pid = entry.pid
        self.table.running[job.id] = entry
        if not entry.detached:  # a detached job outlives this server: the watchdog leaves it
            self.watchdog.watch(job.id, pid, entry.pid_start)
        self.table.done.setdefault(job.id, asyncio.Event())
        loop = asyncio.get_running_loop()
        loop.add_reader(entry.pidfd, self.ends.on_exit, job.id)
        try:
            if entry.terminal is not None:
                loop.add_reader(entry.terminal.master, self._on_terminal_output, job.id)
            transport, proto = await loop.connect_write_pipe(
                StdinProtocol, os.fdopen(spawned.stdin, "wb", buffering=0)
            )
            entry.stdin, entry.stdin_proto = transport, proto
            job = await self.store.transition(
                job.id,
                JobStatus.RUNNING,
                server_id=self.server_id,
                only_from=frozenset({JobStatus.QUEUED}),
                pid=pid,
                pid_start=entry.pid_start,
                boot_id=self.boot_id,
                started_at=spawned_at,
            )
            log.info("job_started id=%s pid=%d pty=%s", job.id, pid, job.pty)
            self._arm_timers(entry, job)
        except TransitionConflict:
            # Killed while it was being started: stop what we just started.
            self.trees.kill_own(job.id)
        except Exception as exc:
            # Its start cannot be recorded: it must not run untracked. Stopped now; its end
            # records it failed (retried until written, see Ends), or, if nothing can be
            # written, the intent in its row makes the next server fail it.
            entry.start_failed = describe_failure(exc)
            log.exception("job_start_not_recorded id=%s reason=%s", job.id, entry.start_failed)
            self.trees.kill_own(job.id)
            raise StorageError(
                f"Job {job.id} was spawned, but its start could not be recorded "
                f"({entry.start_failed}): it was stopped at once and is recorded as failed, so "
                "nothing of it keeps running. Start it again once the database can be written."
            ) from exc
        finally:
            entry.started.set()
        return job

    def _on_terminal_output(self, job_id: str) -> None:
        entry = self.table.running.get(job_id)
        terminal = entry.terminal if entry is not None else None
        if terminal is not None and not terminal.closed and not terminal.pump():
            # End of file: nothing has the terminal open any more; the exit comes by pidfd.
            asyncio.get_running_loop().remove_reader(terminal.master)
