"""Processes: spawning jobs, noticing their exit, stdin and keys, timeouts, killing trees, the
queue, reconciling jobs of dead servers, and an orderly shutdown. The only module that sends
signals.

Each job runs as ``SHELL -c COMMAND`` in a new session, stdin a pipe from this process, stdout and
stderr spool files (see ``capture``). A PTY job gets a pseudo-terminal instead (see ``ptyjob``):
the server reads its master into the stdout spool file. Its exit is seen through a pidfd,
independently of any pipe a background grandchild may hold open. Exit handling (store the last
output, then the final status) runs in tasks that shutdown awaits and never cancels, so a job
never stays ``running`` in the database because the task that would have finished it was
cancelled.

The queue lives in the database: a server starts its own queued jobs whose dependencies allow
it, highest priority first, then oldest (``Store.queue_state``); a queued job changes owner only
by a compare-and-set from a server that is gone (``Store.claim``). A job this server did not
accept itself (claimed, or written into the database by someone else) is checked against this
server's policy before it starts (``check_claimed``).

A job runs at most once, and its true end is recorded: the order of writes
--------------------------------------------------------------------------
A server may die (SIGKILL, power) between any two steps, and the database may refuse a write
(locked for longer than the busy timeout, disk full). Each step below leaves a state that the
next server on the database (``reconcile``, ``_take_over``) settles correctly:

1. The job row is created ``queued``, with its audit row in the same transaction (``execute``).
   Died here: the job never ran; the next server claims it and runs it.
2. The intent to start is committed (``start_attempted_at``: with the row for a job started at
   once, else by a compare-and-set), before anything is spawned. From here on no server starts
   the job again: a queued job with an intent is never in the queue (``Store.queue_state``).
   Died here: a server that takes the job over looks for a live process carrying the job's
   marker (``MCP_BACKGROUND_JOB_ID``) on this boot. One alive is stopped, and the job failed as
   ``lost: server exited``; none alive and no end file (step 5): ``lost: no exit status
   recorded (it may have run)``.
3. The spool files are created (never truncated: one run, one output), the process spawned.
4. ``running`` is recorded with pid, start time and boot id. If that write fails, the process
   tree is killed at once and the job recorded failed (step 5 path); if nothing can be written,
   the intent stays and the next server fails the job: never a live, untracked process.
5. When the main process exits, its exit status goes to an end file in the spool directory
   (``capture``), before anything is written to the database. Then the rest of its output is
   stored, then the end is recorded; a failure is retried with backoff until it succeeds, and
   the job stays known (``kill``/``status`` say its output is being stored, or why its end
   cannot be recorded yet). Then the end file is removed. Died (or stopped) before: whoever
   takes the job over stores the output left in the spool files and records the TRUE end from
   the end file, for jobs of servers that died or stopped alike.

Why a job ended: a stop request (kill, timeout, shutdown) is recorded before any signal, and only
while the job's main process is alive, so a job that exited by itself as it came keeps its own
outcome (``_request_end``, ``jobs.decide_outcome``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import proctree, ptyjob
from .capture import EndRecord, FailureLog, Ingester, describe_failure
from .config import Settings
from .db import utcnow
from .errors import InvalidRequest, JobStateError, StorageError, TransitionConflict
from .isolation import Isolation
from .jobs import (
    ACTIVE,
    REASON_LOST,
    REASON_NO_EXIT,
    AuditEvent,
    EndCause,
    Job,
    JobOptions,
    JobStatus,
    ServerInstance,
    Stream,
    signal_name,
)
from .store import JOB_ID_LENGTH, STORAGE_FAILURES, PruneResult, Store
from .terminal import Key

log = logging.getLogger(__name__)

#: Most bytes allowed to wait in our buffer for a job that does not read its stdin.
STDIN_BUFFER_MAX = 1024 * 1024
_POLL_S = 0.05
_FOREIGN_POLL_S = 0.2
_RECONCILE_EVERY_S = 5.0
#: How often processes of ended jobs of servers that are gone are looked for (and at start).
_STRAYS_EVERY_S = 60.0
#: How often ended jobs whose processes were still alive at the last look are looked at again.
_LINGER_EVERY_S = 5.0
#: Longest a tree is frozen and killed for (a tree that forks as fast as it can stops at once).
_KILL_TIMEOUT_S = 30.0
#: What shutdown waits for the last output to be stored and the ends recorded, past the grace.
_SHUTDOWN_FINISH_S = 1.0
#: How often the queue is looked at while jobs wait (dependencies may end on other servers).
_QUEUE_POLL_S = 1.0
#: TERM for programs on a PTY, unless the job's env sets one (the renderer reads xterm output).
PTY_TERM = "xterm-256color"
_INTERRUPT_BYTES = (b"\x03", b"\x1c")  # Ctrl-C, Ctrl-\ on a terminal
#: Backoff between attempts to record a job's end (the database locked, the disk full).
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 5.0
#: How long kill waits for the end to be recorded before it answers with a note saying why not.
_KILL_RECORD_WAIT_S = 10.0

#: Checks a job this server did not accept itself (claimed from a server that is gone, or written
#: into the database by someone else) against this server's policy and records the decision:
#: ``(job, claimed from server, this server's id)`` -> why it is refused, or None to run it.
ClaimCheck = Callable[[Job, str | None, str], Awaitable[str | None]]


class _StdinProtocol(asyncio.BaseProtocol):
    def __init__(self) -> None:
        self.lost: Exception | None = None
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc


@dataclass(slots=True)
class _Running:
    job_id: str
    popen: subprocess.Popen[bytes]
    pid_start: int | None
    pidfd: int
    terminal: ptyjob.Terminal | None = None
    stdin: asyncio.WriteTransport | None = None
    stdin_proto: _StdinProtocol | None = None
    stdin_pipe: tuple[int, int] | None = None  # (device, inode) of the stdin pipe
    started: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    idle_timer: asyncio.TimerHandle | None = None
    idle_timeout_s: float | None = None
    spawned: float = field(default_factory=time.time)
    exited: EndRecord | None = None  # its main process has ended (the end may not be recorded)
    start_failed: str | None = None  # why its running row could not be written (it was stopped)
    end_error: str | None = None  # why its end could not be recorded yet (retrying)


class Runner:
    """Runs this server's jobs and keeps their rows true."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ingester: Ingester,
        isolation: Isolation | None = None,
        *,
        check_claimed: ClaimCheck | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ingester = ingester
        self._check_claimed = check_claimed
        # No isolation given (unit tests of the runner): plain `sh -c`, explicit environment.
        self.isolation = isolation or Isolation(
            mode="none", network=True, writable=(), rlimits=(), env_allow=settings.env_allow
        )
        #: Called with a job's id once its output is all stored and before its final status
        #: (own jobs, and jobs of dead servers taken over): ``App`` masks stored output there.
        self.on_ended: Callable[[str], Awaitable[None]] | None = None
        self.server_id = uuid.uuid4().hex[:12]
        self.boot_id = proctree.boot_id()
        self._hostname = socket.gethostname()
        self._running: dict[str, _Running] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._queued = 0  # own queued jobs, as the last look at the queue found
        self._start_lock = asyncio.Lock()
        # Jobs submit() is starting itself, outside the start lock: each holds a slot, and the
        # scheduler does not see them until they run.
        self._direct: set[str] = set()
        self._direct_idle = asyncio.Event()
        self._direct_idle.set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Task[None]] = set()
        self._closing = False
        self._subreaper = False
        #: Stops this server's jobs if it dies; its job list is also every job this server
        #: started whose processes may be alive (running, or left behind by an ended job).
        self.watchdog = proctree.Watchdog()
        self._caught_up = asyncio.Event()
        # Jobs created by submit() here and not started yet: every other job is checked against
        # the policy before it starts (claimed ones: from which server, for the audit log).
        self._submitted: set[str] = set()
        self._claimed: dict[str, str | None] = {}
        self._unsettled: set[str] = set()  # taken over, end not written yet (see reconcile)
        # Jobs someone waits for: set once the database shows them ended (see wait_end).
        self._watched: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, int] = {}
        self._watching = False
        self._end_failures = FailureLog("job_end_not_recorded")

    # --- life of the runner ---------------------------------------------------------------

    async def start(self) -> None:
        """Register this server, start its watchdog and the background tasks. Reconciling what
        servers that are gone left behind runs in the background (see ``caught_up``): storing
        a big leftover spool must not delay the first answer."""
        await self.store.register_server(self.instance(), _version())
        if self.settings.subreaper:
            self._subreaper = proctree.set_child_subreaper(True)
        self.watchdog.start()
        self._spawn_task(self.ingester.run(), "ingest")
        self._spawn_task(self._reconciler(), "reconcile")
        self._spawn_task(self._scheduler(), "scheduler")
        self._spawn_task(self._maintenance(), "maintenance")
        if self.settings.retention_max_age or self.settings.retention_max_output_bytes is not None:
            self._spawn_task(self._retention(), "retention")
        log.info("server_started id=%s pid=%d", self.server_id, os.getpid())

    def instance(self) -> ServerInstance:
        return ServerInstance(
            id=self.server_id,
            pid=os.getpid(),
            pid_start=proctree.start_time(os.getpid()),
            boot_id=self.boot_id,
            hostname=self._hostname,
            started_at=utcnow(),
            stopped_at=None,
        )

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task_failed name=%s", task.get_name(), exc_info=task.exception())

    async def shutdown(self) -> None:
        """Stop accepting; stop the whole tree of every job this server started, running or
        ended (what an ended job left behind): TERM, ``shutdown_grace_s``, then freeze and KILL
        whatever is left; store the last output, record the ends, close. About the grace plus
        a second at most; the watchdog stops whatever this could not."""
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        began = loop.time()
        # A start in progress finishes first: cancelled between the spawn and the running row,
        # a job would run while recorded as queued, and the next server would run it again.
        async with self._start_lock:
            await self._direct_idle.wait()
            for task in list(self._tasks):
                if task.get_name() != "ingest":
                    task.cancel()
            running = list(self._running)
        # Concurrently: the writes share a commit.
        requested = await asyncio.gather(
            *(self._request_end(j, EndCause.SHUTDOWN) for j in running),
            return_exceptions=True,
        )
        for job_id, result in zip(running, requested, strict=True):
            if isinstance(result, Exception):  # go on stopping the others
                log.error("shutdown_end_not_requested id=%s", job_id, exc_info=result)
        own = self.watchdog.jobs()
        exclude = () if self.watchdog.pid is None else (self.watchdog.pid,)

        def trees() -> set[int]:
            return set().union(*proctree.jobs_trees(own, exclude=exclude).values())

        pids = await asyncio.to_thread(trees) if own else set()
        mains = {pid for pid, _ in own.values() if pid in pids}
        proctree.signal_pids(mains, signal.SIGTERM)  # first: see _stop_tree
        proctree.signal_pids(pids - mains, signal.SIGTERM)
        await self._wait_own_done(running, self.settings.shutdown_grace_s)
        left = await asyncio.to_thread(proctree.kill_tree, trees, 5.0) if pids else set()
        if left:
            log.warning("shutdown_tree_survived pids=%s", sorted(left)[:50])
        else:
            for job_id in own:
                self.watchdog.forget(job_id)
        # Their exits come at once after SIGKILL; then the last output is stored.
        finishing = [
            asyncio.ensure_future(self._done[j].wait()) for j in running if j in self._done
        ]
        if finishing or self._finishing:
            await asyncio.wait([*finishing, *self._finishing], timeout=_SHUTDOWN_FINISH_S)
            for waiter in finishing:
                waiter.cancel()
        # Ends that could not be recorded in time: their end files stay in the spool directory,
        # where the next server on the database finds them (see the module docstring).
        for entry in self._running.values():
            if entry.exited is not None:
                log.warning(
                    "job_end_left id=%s reason=%s: the next server records it from its end file",
                    entry.job_id,
                    entry.end_error or "still being stored",
                )
        for task in list(self._finishing):
            task.cancel()
        await asyncio.gather(*self._finishing, return_exceptions=True)
        unfinished = [j for j in running if j in self._running]
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingester.close()
        if self._subreaper:
            proctree.set_child_subreaper(False)
        if unfinished:
            # Their end files stay beside their spool files: the next server on the database
            # records their true ends from there (see reconcile), as for any stopped server.
            log.warning("shutdown_ends_not_recorded ids=%s", ",".join(unfinished))
        # Queued jobs stay queued: once this server is marked stopped, the next server on the
        # database claims them (see reconcile).
        try:
            await self.store.mark_server_stopped(self.server_id)
        except STORAGE_FAILURES as exc:  # the next server sees this one is gone by its pid
            log.warning(
                "server_not_marked_stopped id=%s reason=%s", self.server_id, describe_failure(exc)
            )
        self.watchdog.close()
        log.info(
            "server_stopped id=%s jobs_stopped=%d jobs_left_queued=%d seconds=%.3f",
            self.server_id,
            len(running),
            self._queued,
            loop.time() - began,
        )

    async def _wait_own_done(self, job_ids: Sequence[str], timeout: float) -> None:
        waiters = [
            asyncio.ensure_future(self._done[j].wait())
            for j in job_ids
            if j in self._done and j in self._running
        ]
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
            for w in waiters:
                w.cancel()

    # --- submitting and starting ----------------------------------------------------------

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
        if self._closing:
            raise JobStateError("The server is shutting down; start the job on a new server.")

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
            )
            self._done[job.id] = asyncio.Event()
            self._submitted.add(job.id)
            return job

        job_id = uuid.uuid4().hex[:JOB_ID_LENGTH]
        if not options.after and not self._queued and self._free_slots() > 0:
            # Started here, not by the scheduler: many submissions at once are created and
            # started concurrently (their writes share commits) instead of one at a time under
            # the start lock. Taking the slot has no await before it, so it cannot be oversold.
            # The row is created with its intent to start (no write of its own), so from its
            # commit on the job must be started here: a shutdown that began meanwhile waits for
            # it (``_direct_idle``) and then stops it.
            self._direct.add(job_id)
            self._direct_idle.clear()

            async def create_and_start() -> Job:
                return await self._start(await create(job_id, starting=True))

            # Shielded: a cancelled call must not leave a created job unstarted, nor a spawned
            # job recorded as queued.
            start = asyncio.ensure_future(create_and_start())
            start.add_done_callback(lambda task: self._started_directly(job_id, task))
            return await asyncio.shield(start)
        job = await create(job_id, starting=False)
        if self._free_slots() <= 0:
            self._queued += 1  # later submissions queue behind it; the scheduler recounts
            return job
        started = await self._schedule()
        return started.get(job.id) or await self.store.get_job(job.id)

    def _started_directly(self, job_id: str, task: asyncio.Future[Job]) -> None:
        self._direct.discard(job_id)
        if not self._direct:
            self._direct_idle.set()
        if not task.cancelled() and task.exception() is not None:
            # Also read when the caller went away (the error reached it otherwise).
            log.debug("job_start_error id=%s error=%s", job_id, task.exception())

    def _free_slots(self) -> int:
        return self.settings.max_concurrent - len(self._running.keys() | self._direct)

    async def _scheduler(self) -> None:
        failures = FailureLog("schedule_failed")
        while True:
            try:
                await self._schedule()
                failures.succeeded()
            except Exception as exc:  # noqa: BLE001 (task boundary, logged: keep scheduling)
                failures.failed(exc)
                await asyncio.sleep(1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _QUEUE_POLL_S if self._queued else None)
            self._wake.clear()

    async def _schedule(self) -> dict[str, Job]:
        """Fail queued jobs whose dependencies did not complete, then start the best startable
        ones into the free slots. Returns the jobs it started, as they now stand."""
        started: dict[str, Job] = {}
        async with self._start_lock:
            while not self._closing:
                # Never a job submit() is starting: those are left out of the read, which is
                # queued with the writes at once. A job whose start submit() recorded first is
                # running in it; one created after it is not in it (see Store.queue_state).
                free = self._free_slots()
                state = await self.store.queue_state(
                    self.server_id, free, starting=frozenset(self._direct)
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
                    self._set_done(job_id)
                self._queued = state.queued - len(state.doomed)
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
                        self._queued -= 1
                if not state.doomed:
                    break  # else their own dependents may now be doomed too: look again
        return started

    async def _start(self, job: Job) -> Job:
        """Spawn a queued job; returns it as it now stands (running, failed to start, refused,
        or still queued if its intent to start could not be recorded: the scheduler tries
        again). Raises ``StorageError`` if it was spawned but its start could not be recorded:
        it was stopped then (see the module docstring, step 4)."""
        if job.id in self._submitted:
            self._submitted.discard(job.id)
        elif self._check_claimed is not None:
            claimed_from = self._claimed.get(job.id, job.owner_id)
            refused = await self._check_claimed(job, claimed_from, self.server_id)
            self._claimed.pop(job.id, None)
            if refused is not None:
                log.warning("job_refused id=%s claimed_from=%s", job.id, claimed_from)
                return await self._fail_start(job, refused)
        if job.start_attempted_at is None:
            try:
                job = await self.store.mark_start_attempt(job.id, self.server_id, self.boot_id)
            except TransitionConflict:
                return await self.store.get_job(job.id, events=False)  # killed meanwhile
            except STORAGE_FAILURES as exc:
                log.warning("job_start_deferred id=%s reason=%s", job.id, describe_failure(exc))
                self._queued += 1  # nothing was spawned; the scheduler looks again
                return job
        # An explicit environment: the server's secrets do not reach jobs (see isolation.py).
        try:
            env = self.isolation.environment(job.env, (proctree.MARKER, job.id))
        except InvalidRequest as exc:  # secret values this server does not hold
            return await self._fail_start(job, f"failed to start: {exc}")
        try:
            writers = self.ingester.create_spool(job.id)
        except OSError as exc:
            return await self._fail_start(job, f"cannot create spool files: {exc}")
        terminal: ptyjob.Terminal | None = None
        stdin_r = stdin_w = -1
        spawned_at = utcnow()  # before the exit, which may come before the running row does
        try:
            if job.pty:
                terminal = ptyjob.Terminal(
                    job.rows or self.settings.pty_rows, job.cols or self.settings.pty_cols
                )
                if "TERM" not in job.env:
                    env["TERM"] = PTY_TERM
                # The helper makes the terminal the job's controlling terminal in a new session.
                popen = subprocess.Popen(  # noqa: ASYNC220
                    self.isolation.wrap(ptyjob.exec_argv(job.shell, job.command), job.cwd, job.id),
                    stdin=terminal.slave,
                    stdout=terminal.slave,
                    stderr=terminal.slave,
                    cwd=job.cwd,
                    env=env,
                    close_fds=True,
                )
            else:
                stdin_r, stdin_w = os.pipe()
                # Popen, not asyncio's subprocess: its wait() also waits for pipe EOF, which a
                # background grandchild can hold forever. Popen spawns with vfork: it is quick.
                popen = subprocess.Popen(  # noqa: ASYNC220
                    self.isolation.argv(job.shell, job.command, job.cwd, job.id),
                    stdin=stdin_r,
                    stdout=writers[Stream.STDOUT],
                    stderr=writers[Stream.STDERR],
                    cwd=job.cwd,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            for fd in (stdin_w, writers[Stream.STDOUT]):
                if fd >= 0:
                    os.close(fd)
            if terminal is not None:
                terminal.close()
            self.ingester.discard(job.id)
            return await self._fail_start(job, f"failed to start: {exc}")
        finally:
            if stdin_r >= 0:
                os.close(stdin_r)
            os.close(writers[Stream.STDERR])
        if terminal is not None:
            terminal.attach(writers[Stream.STDOUT])  # the server appends what the job prints
        else:
            os.close(writers[Stream.STDOUT])
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError as exc:
            # Its exit could not be seen: it must not run untracked.
            proctree.signal_pids(proctree.job_tree(job.id, popen.pid, None), signal.SIGKILL)
            popen.wait()
            if stdin_w >= 0:
                os.close(stdin_w)
            if terminal is not None:
                terminal.close()
            self.ingester.discard(job.id)
            return await self._fail_start(job, f"failed to start: cannot watch its process: {exc}")
        entry = _Running(
            job.id,
            popen,
            proctree.start_time(popen.pid),
            pidfd,
            terminal=terminal,
            idle_timeout_s=job.idle_timeout_s,
        )
        self._running[job.id] = entry
        self.watchdog.watch(job.id, popen.pid, entry.pid_start)
        self._done.setdefault(job.id, asyncio.Event())
        loop = asyncio.get_running_loop()
        loop.add_reader(entry.pidfd, self._on_exit, job.id)
        try:
            if terminal is not None:
                loop.add_reader(terminal.master, self._on_terminal_output, job.id)
                stdin_w = os.dup(terminal.master)  # the transport closes its own descriptor
            else:
                entry.stdin_pipe = ptyjob.fd_identity(stdin_w)
            transport, proto = await loop.connect_write_pipe(
                _StdinProtocol, os.fdopen(stdin_w, "wb", buffering=0)
            )
            entry.stdin, entry.stdin_proto = transport, proto
            job = await self.store.transition(
                job.id,
                JobStatus.RUNNING,
                server_id=self.server_id,
                only_from=frozenset({JobStatus.QUEUED}),
                pid=popen.pid,
                pid_start=entry.pid_start,
                boot_id=self.boot_id,
                started_at=spawned_at,
            )
            log.info("job_started id=%s pid=%d pty=%s", job.id, popen.pid, job.pty)
            if job.timeout_s is not None:
                entry.timer = loop.call_later(
                    job.timeout_s, self._on_timeout, job.id, EndCause.TIMEOUT
                )
            if job.idle_timeout_s is not None:
                entry.idle_timer = loop.call_later(job.idle_timeout_s, self._check_idle, job.id)
        except TransitionConflict:
            # Killed while it was being started: stop what we just started.
            proctree.signal_pids(self._tree_of_own(job.id), signal.SIGKILL)
        except Exception as exc:
            # Its start cannot be recorded: it must not run untracked. Stopped now; its end
            # records it failed (retried until written, see _finish), or, if nothing can be
            # written, the intent in its row makes the next server fail it.
            entry.start_failed = describe_failure(exc)
            log.exception("job_start_not_recorded id=%s reason=%s", job.id, entry.start_failed)
            proctree.signal_pids(self._tree_of_own(job.id), signal.SIGKILL)
            raise StorageError(
                f"Job {job.id} was spawned, but its start could not be recorded "
                f"({entry.start_failed}): it was stopped at once and is recorded as failed, so "
                "nothing of it keeps running. Start it again once the database can be written."
            ) from exc
        finally:
            entry.started.set()
        return job

    async def _fail_start(self, job: Job, reason: str) -> Job:
        """Record that a job could not be started (nothing of it runs). If that cannot be
        written now, it is retried in the background and the error raised."""
        log.warning("job_spawn_failed id=%s reason=%s", job.id, reason)

        async def record() -> Job:
            try:
                return await self.store.transition(
                    job.id,
                    JobStatus.FAILED,
                    server_id=self.server_id,
                    reason=reason,
                    only_from=frozenset({JobStatus.QUEUED}),
                )
            except TransitionConflict:
                return await self.store.get_job(job.id, events=False)

        try:
            job = await record()
        except STORAGE_FAILURES as exc:
            self._retry_in_background(job.id, record)
            raise StorageError(
                f"Job {job.id} could not be started ({reason}), and that could not be recorded "
                f"yet ({describe_failure(exc)}); it is retried. Nothing of it runs."
            ) from exc
        self._set_done(job.id)
        return job

    def _retry_in_background(self, job_id: str, write: Callable[[], Awaitable[Job]]) -> None:
        async def retry() -> None:
            delay = _RETRY_FIRST_S
            while True:
                await asyncio.sleep(delay)
                try:
                    await write()
                except STORAGE_FAILURES as exc:
                    self._end_failures.failed(exc)
                    delay = min(2 * delay, _RETRY_MAX_S)
                    continue
                self._end_failures.succeeded()
                self._set_done(job_id)
                return

        task = asyncio.get_running_loop().create_task(retry(), name=f"fail-start-{job_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        task.add_done_callback(self._task_ended)

    # --- exits ----------------------------------------------------------------------------

    def _on_exit(self, job_id: str) -> None:
        entry = self._running[job_id]
        loop = asyncio.get_running_loop()
        loop.remove_reader(entry.pidfd)
        os.close(entry.pidfd)
        returncode = entry.popen.wait()  # already exited: reaps at once
        entry.exited = EndRecord(returncode, utcnow(), self.ingester.disk_full())
        if entry.start_failed is None:
            # Before any database write: whoever takes the job over records this true end if
            # this server cannot (a job stopped because its start was not recorded has none).
            self.ingester.write_end(job_id, entry.exited)
        task = loop.create_task(self._finish(entry, entry.exited), name=f"finish-{job_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        task.add_done_callback(self._task_ended)

    async def _finish(self, entry: _Running, end: EndRecord) -> None:
        """Store the rest of the job's output, then record its end; retried with backoff until
        it is written (or someone else ended the job), the job known meanwhile. Cancelled only
        by shutdown, which leaves the end file for the next server."""
        job_id = entry.job_id
        for timer in (entry.timer, entry.idle_timer):
            if timer is not None:
                timer.cancel()
        await entry.started.wait()
        if entry.terminal is not None:
            # What it printed before it ended; then hang up, as closing a terminal window does.
            asyncio.get_running_loop().remove_reader(entry.terminal.master)
            entry.terminal.pump()
            entry.terminal.close()
        if entry.stdin is not None:
            if entry.terminal is not None:
                entry.stdin.abort()  # nobody will read what is still buffered
            else:
                entry.stdin.close()
        delay = _RETRY_FIRST_S
        attempts = 0
        while True:
            attempts += 1
            try:
                job = await self._record_end(entry, end)
            except TransitionConflict as exc:
                log.warning("job_end_not_recorded id=%s: %s", job_id, exc)
                break
            except STORAGE_FAILURES as exc:  # (before the bug catch-all below)
                self._end_failures.failed(exc)
                if entry.end_error is None:
                    log.warning(
                        "job_end_deferred id=%s reason=%s (retried until recorded)",
                        job_id,
                        describe_failure(exc),
                    )
                entry.end_error = describe_failure(exc)
                await asyncio.sleep(delay)
                delay = min(2 * delay, _RETRY_MAX_S)
                continue
            except Exception:  # a bug, not the database: retrying would not help
                log.exception("job_end_failed id=%s", job_id)
                break
            self._end_failures.succeeded()
            log.info(
                "job_ended id=%s status=%s returncode=%d attempts=%d",
                job_id,
                job.status,
                end.returncode,
                attempts,
            )
            break
        self.ingester.clear_end(job_id)
        self._running.pop(job_id, None)
        self._set_done(job_id)
        self._wake.set()

    async def _record_end(self, entry: _Running, end: EndRecord) -> Job:
        """One attempt: store the rest of the output (masked), then the final status."""
        job_id = entry.job_id
        try:
            await self.ingester.finish(job_id)
            if self.on_ended is not None:
                await self.on_ended(job_id)
        except STORAGE_FAILURES:
            raise  # the database: tried again (the output before the status)
        except Exception:  # a bug storing or masking: the status must still be recorded
            log.exception("final_ingest_failed id=%s", job_id)
        if entry.start_failed is not None:
            exit_code = end.returncode if end.returncode >= 0 else None
            sig = signal_name(-end.returncode) if end.returncode < 0 else None
            return await self.store.transition(
                job_id,
                JobStatus.FAILED,
                server_id=self.server_id,
                reason=f"failed to start: its start could not be recorded ({entry.start_failed})"
                "; it was stopped",
                only_from=ACTIVE,
                exit_code=exit_code,
                signal=sig,
                ended_at=end.ended_at,
            )
        return await self.store.record_exit(
            job_id, end.returncode, end.ended_at, server_id=self.server_id, disk_full=end.disk_full
        )

    def _set_done(self, job_id: str) -> None:
        event = self._done.pop(job_id, None)
        if event is not None:
            event.set()

    def _on_terminal_output(self, job_id: str) -> None:
        entry = self._running.get(job_id)
        terminal = entry.terminal if entry is not None else None
        if terminal is not None and not terminal.closed and not terminal.pump():
            # End of file: nothing has the terminal open any more; the exit comes by pidfd.
            asyncio.get_running_loop().remove_reader(terminal.master)

    def _on_timeout(self, job_id: str, cause: EndCause) -> None:
        self._spawn_task(self._timeout(job_id, cause), f"{cause}-{job_id}")

    def _check_idle(self, job_id: str) -> None:
        """Time the job out if it printed nothing for ``idle_timeout_s``, else look again when
        that much time will have passed since its last output."""
        entry = self._running.get(job_id)
        if entry is None or entry.idle_timeout_s is None:
            return
        if entry.terminal is not None:
            entry.terminal.pump()
        last = max(self.ingester.last_write(job_id) or 0.0, entry.spawned)
        left = entry.idle_timeout_s - (time.time() - last)
        if left <= 0:
            self._on_timeout(job_id, EndCause.IDLE_TIMEOUT)
        else:
            loop = asyncio.get_running_loop()
            entry.idle_timer = loop.call_later(max(left, _POLL_S), self._check_idle, job_id)

    async def _timeout(self, job_id: str, cause: EndCause) -> None:
        job = await self._request_end(job_id, cause)
        if job is not None and job.end_cause is cause:
            log.info("job_timed_out id=%s cause=%s", job_id, cause)
            await self._stop_tree(job, signal.SIGTERM, self.settings.kill_grace_s)

    # --- kill -----------------------------------------------------------------------------

    async def kill(self, job_id: str, sig: signal.Signals, grace_s: float) -> Job:
        """Signal the job's whole tree; SIGKILL what is left after ``grace_s``. Returns the final
        job. Works for jobs of other servers on this host; on an ended job it only clears out
        processes it left behind."""
        job = await self.store.get_job(job_id, events=False)
        if job.status is JobStatus.QUEUED:
            try:
                job = await self.store.transition(
                    job_id,
                    JobStatus.KILLED,
                    server_id=self.server_id,
                    reason="killed before it started",
                    only_from=frozenset({JobStatus.QUEUED}),
                )
                self._set_done(job_id)
                self._submitted.discard(job_id)
                log.info("job_killed id=%s (queued)", job_id)
                if job.start_attempted_at is not None:
                    # Its server was starting it (or died doing so): stop whatever of it runs.
                    await self._stop_tree(job, sig, grace_s)
                return await self.store.get_job(job_id)
            except TransitionConflict:
                job = await self.store.get_job(job_id, events=False)
        if job.status is JobStatus.RUNNING:
            job = await self._request_end(job_id, EndCause.KILL, job) or job
        log.info("job_kill id=%s signal=%s grace_s=%s", job_id, sig.name, grace_s)
        await self._stop_tree(job, sig, grace_s)
        if not job.status.is_terminal:
            # Its end is recorded once its output is stored; if that takes longer, the view
            # says so (see end_note) rather than leave the caller guessing.
            await self.wait_end(job_id, _KILL_RECORD_WAIT_S)
        return await self.store.get_job(job_id)

    async def _request_end(
        self, job_id: str, cause: EndCause, job: Job | None = None
    ) -> Job | None:
        """Record why the server is stopping a job, before any signal; None (nothing recorded)
        if its main process has exited already: a job that ended by itself as a shutdown or a
        kill came keeps its own outcome. Only a job on this machine can be looked at; others
        get the request."""
        entry = self._running.get(job_id)
        if entry is not None:
            if entry.exited is not None or not proctree.is_alive(
                entry.popen.pid, entry.pid_start, self.boot_id
            ):
                return None  # (a zombie not reaped yet counts as exited)
        else:
            job = job or await self.store.get_job(job_id, events=False)
            if job.boot_id == self.boot_id and not proctree.is_alive(
                job.pid, job.pid_start, job.boot_id
            ):
                return None
        return await self.store.request_end(job_id, cause)

    def end_note(self, job_id: str) -> str | None:
        """For a job of this server whose process has exited but whose end is not recorded
        yet: what is going on (None otherwise)."""
        entry = self._running.get(job_id)
        if entry is None or entry.exited is None:
            return None
        rc = entry.exited.returncode
        how = f"exit code {rc}" if rc >= 0 else f"signal {signal_name(-rc)}"
        if entry.end_error is not None:
            return (
                f"Its process has ended ({how}), but its end cannot be recorded yet: "
                f"{entry.end_error}. This server keeps trying; if it stops first, the next "
                "server on the database records the end. Call wait."
            )
        return (
            f"Its process has ended ({how}); its output is still being stored, and its end is "
            "recorded once that is done. Call wait."
        )

    def _tree_of_own(self, job_id: str) -> set[int]:
        entry = self._running.get(job_id)
        if entry is None:
            return set()
        return proctree.job_tree(job_id, entry.popen.pid, entry.pid_start)

    async def _stop_tree(self, job: Job, sig: signal.Signals, grace_s: float) -> None:
        """TERM (or ``sig``) the tree and wait up to ``grace_s`` for it to be gone; then freeze
        what is left (SIGSTOP until a sweep finds no new process, so a tree that forks faster
        than it is killed stops growing) and KILL it until nothing is left. Kill, timeouts,
        reconciliation and stray processes all stop trees this way."""

        def tree() -> set[int]:
            return proctree.job_tree(job.id, job.pid, job.pid_start)

        loop = asyncio.get_running_loop()
        pids = await asyncio.to_thread(tree)
        if job.pid in pids:
            # The main process first: a shell that saw its child die of the signal before
            # getting it itself would exit 143 instead of dying of it (seen on a loaded machine).
            proctree.signal_pids({job.pid}, sig)
        proctree.signal_pids(pids - {job.pid}, sig)
        deadline = loop.time() + grace_s
        while pids and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
            pids = await asyncio.to_thread(tree)
        if pids:
            pids = await asyncio.to_thread(proctree.kill_tree, tree, _KILL_TIMEOUT_S)
            await self._reap()  # killed orphans are ours to collect; they count as processes
        if pids:
            log.warning("job_tree_survived id=%s pids=%s", job.id, sorted(pids)[:50])

    # --- stdin and waiting ----------------------------------------------------------------

    def owns(self, job_id: str) -> bool:
        return job_id in self._running

    async def send_input(
        self, job: Job, data: bytes, *, keys: Sequence[Key] = (), eof: bool = False
    ) -> None:
        """Queue ``data``, then ``keys``, for the job without blocking; ``eof`` ends its input.

        On a terminal, keys are the bytes a terminal sends (Ctrl-C makes the kernel interrupt
        the foreground processes) and end of input is Ctrl-D. Without one, Ctrl-C, Ctrl-\\
        and Ctrl-Z signal the job's process group, Ctrl-D and ``eof`` close its stdin.
        """
        entry = self._input_entry(job)
        await entry.started.wait()
        stdin = entry.stdin
        if stdin is None or stdin.is_closing():
            raise JobStateError(
                f"The stdin of job {job.id} is closed (EOF was sent, or the program closed it); "
                "nothing more can be written. Read its output with `output` or `tail`."
            )
        pty = entry.terminal is not None
        steps: list[bytes | signal.Signals | None] = [data] if data else []  # None: close stdin
        for key in keys:
            if pty:
                steps.append(key.data)
            elif key.pipe_signal is not None:
                steps.append(key.pipe_signal)
            elif key.pipe_eof:
                steps.append(None)
            else:
                steps.append(key.pipe_data or key.data)
        if eof:
            steps.append(ptyjob.EOF_BYTES if pty else None)
        if None in steps[:-1]:
            raise JobStateError(
                "Ctrl-D closes the stdin of a job without a terminal: it can only be the last "
                "key (send the rest first)."
            )
        size = sum(len(s) for s in steps if isinstance(s, bytes))
        waiting = stdin.get_write_buffer_size()
        if size and waiting + size > STDIN_BUFFER_MAX:
            raise JobStateError(
                f"Job {job.id} is not reading its stdin: {waiting} bytes are still waiting to be "
                "delivered. Wait for it to read them, or send eof=true / kill the job."
            )
        for step in steps:
            if isinstance(step, bytes):
                if pty and any(b in step for b in _INTERRUPT_BYTES):
                    await self.store.request_end(job.id, EndCause.INTERRUPT)
                stdin.write(step)
            elif step is None:
                stdin.close()
            else:
                if step in (signal.SIGINT, signal.SIGQUIT):
                    await self.store.request_end(job.id, EndCause.INTERRUPT)
                log.info("job_key_signal id=%s signal=%s", job.id, step.name)
                proctree.signal_group(entry.popen.pid, step)

    def _input_entry(self, job: Job) -> _Running:
        entry = self._running.get(job.id)
        if entry is not None and job.status is JobStatus.RUNNING:
            return entry
        if job.status is JobStatus.QUEUED:
            raise JobStateError(
                f"Job {job.id} is still queued; its stdin opens when it starts. "
                "Call `wait` or `status` and try again once it is running."
            )
        if job.status.is_terminal:
            raise JobStateError(
                f"Job {job.id} has ended ({job.status}); its stdin is closed. "
                "Start a new job with `execute` (or `rerun`) to run the program again."
            )
        raise JobStateError(
            f"Job {job.id} is run by another server process (owner {job.owner_id}); only "
            "that server holds its stdin. Use the MCP session that started it."
        )

    def pump(self, job_id: str) -> None:
        """Move what a PTY job printed into its spool file now (reads want the latest)."""
        entry = self._running.get(job_id)
        if entry is not None and entry.terminal is not None:
            entry.terminal.pump()

    async def input_state(self, job_id: str) -> proctree.InputState | None:
        """Whether the job is waiting for input: blocked reading its terminal or stdin with
        everything sent to it read (see ``proctree.InputState``). None: not known (not a
        running job of this server, or its state cannot be read)."""
        entry = self._running.get(job_id)
        if entry is None or not entry.started.is_set() or entry.stdin is None:
            return None
        unread = entry.stdin.get_write_buffer_size()
        terminal = entry.terminal
        pid, pid_start = entry.popen.pid, entry.pid_start
        try:
            if terminal is not None:
                unread += terminal.pending_input()
                editing = terminal.line_editing()
                group = terminal.foreground_group()

                def probe() -> proctree.InputState:
                    # On a terminal only its foreground processes read it.
                    pids = (
                        proctree.group_members(group)
                        if group
                        else proctree.job_tree(job_id, pid, pid_start)
                    )
                    return proctree.input_state(pids, tty=terminal.device, line_editing=editing)

            else:
                pipe = None if entry.stdin.is_closing() else entry.stdin.get_extra_info("pipe")
                if pipe is not None:
                    unread += ptyjob.unread_bytes(pipe.fileno())
                stdin_pipe = entry.stdin_pipe if pipe is not None else None

                def probe() -> proctree.InputState:
                    pids = proctree.job_tree(job_id, pid, pid_start)
                    return proctree.input_state(pids, pipe=stdin_pipe)

            state = await asyncio.to_thread(probe)
        except OSError:
            return None
        if unread:
            return proctree.InputState(waiting=False, busy=state.busy)
        return state

    async def wait_end(self, job_id: str, timeout: float) -> bool:
        """Wait until the job has ended or ``timeout`` passed; True if it ended.

        Ends recorded by anyone count. Own jobs wake on an event as their end is recorded; every
        job waited for is also looked up in the database a few times a second, in one read for
        all of them (``_watch_ends``), which sees ends that other servers or the CLI recorded:
        a kill of a queued job of this server, say."""
        ended = self._watch(job_id)
        waits: list[asyncio.Future[bool]] = []
        try:
            own = self._done.get(job_id)
            if own is not None:
                waits.append(asyncio.ensure_future(own.wait()))
            elif (await self.store.get_job(job_id, events=False)).status.is_terminal:
                return True  # (an own job not ended has its event: no read for it)
            waits.append(asyncio.ensure_future(ended.wait()))
            done, _ = await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            return bool(done)
        finally:
            for w in waits:
                w.cancel()
            self._unwatch(job_id)

    def _watch(self, job_id: str) -> asyncio.Event:
        event = self._watched.setdefault(job_id, asyncio.Event())
        self._watchers[job_id] = self._watchers.get(job_id, 0) + 1
        if not self._watching:
            self._watching = True
            self._spawn_task(self._watch_ends(), "watch-ends")
        return event

    def _unwatch(self, job_id: str) -> None:
        left = self._watchers.get(job_id, 1) - 1
        if left > 0:
            self._watchers[job_id] = left
        else:
            self._watchers.pop(job_id, None)
            self._watched.pop(job_id, None)

    async def _watch_ends(self) -> None:
        """While anyone waits: which of the jobs waited for have ended, by anyone's hand."""
        failures = FailureLog("watch_ends_failed")
        try:
            while self._watched:
                await asyncio.sleep(_FOREIGN_POLL_S)
                try:
                    ended = await self.store.ended_among(list(self._watched))
                except Exception as exc:  # noqa: BLE001 (task boundary, logged: waiters time out at worst)
                    failures.failed(exc)
                    continue
                failures.succeeded()
                for job_id in ended:
                    event = self._watched.get(job_id)
                    if event is not None:
                        event.set()
                    if job_id not in self._running and job_id not in self._direct:
                        # A queued job of ours that someone else ended: nothing to wait for.
                        self._set_done(job_id)
                        self._submitted.discard(job_id)
        finally:
            self._watching = False

    async def flush(self, job_id: str) -> None:
        await self.ingester.flush(job_id)

    # --- reconciliation and housekeeping --------------------------------------------------

    async def reconcile(self) -> int:
        """Take over what servers that are gone left behind. Jobs that may have run there
        (running, or queued with a start intent) get the true end their end file holds, or are
        failed as lost (the output they wrote is stored, processes still alive are killed); their
        queued jobs that never started, and those of servers that stopped, are claimed and run
        here (after this server's policy allows them). A stopped server's running job is one
        whose end it could not record: taken over the same way. Live servers' jobs are never
        touched. Returns the number of jobs failed."""
        dead: list[str] = []
        for srv in await self.store.servers_not_stopped(exclude=self.server_id):
            if srv.hostname != self._hostname:
                continue  # cannot see its processes: leave it to a server on its host
            if proctree.is_alive(srv.pid, srv.pid_start, srv.boot_id):
                continue
            dead.append(srv.id)
        failed = claimed = 0
        # Taken over earlier, but their end could not be written then: this server owns them
        # now (no other server will look at them while it lives), so it tries again.
        for job in (await self.store.get_jobs(list(self._unsettled))).values():
            if job.status.is_terminal:  # (as read again: its counters moved on meanwhile)
                self._unsettled.discard(job.id)
            elif await self._settle(job) is JobStatus.FAILED:
                failed += 1
        for job in await self.store.orphaned_jobs(dead):
            if not await self.store.claim(job.id, job.owner_id, self.server_id):
                continue  # another server is reconciling it
            if job.status is JobStatus.QUEUED and job.start_attempted_at is None:
                claimed += 1
                self._claimed[job.id] = job.owner_id  # checked against the policy at its start
                log.info("job_adopted id=%s owner=%s", job.id, job.owner_id)
                continue
            if await self._settle(job) is JobStatus.FAILED:
                failed += 1
        for server_id in dead:
            await self.store.mark_server_stopped(server_id)
        if claimed:
            self._queued += claimed
            self._wake.set()
        return failed

    async def _settle(self, job: Job) -> JobStatus | None:
        """``_take_over``, kept for the next reconcile if the database cannot be written."""
        try:
            status = await self._take_over(job)
        except asyncio.CancelledError:
            # This server is shutting down (it reconciles in the background): give the job back
            # to its dead owner, so that the next server takes it over.
            if job.owner_id is not None:
                await asyncio.shield(self.store.claim(job.id, self.server_id, job.owner_id))
            raise
        except STORAGE_FAILURES as exc:
            self._unsettled.add(job.id)
            log.warning("job_takeover_deferred id=%s reason=%s", job.id, describe_failure(exc))
            return None
        self._unsettled.discard(job.id)
        return status

    async def _take_over(self, job: Job) -> JobStatus | None:
        """Settle a job that may have run under a server that is gone (running, or queued with
        its start intent): store the output its spool files hold, then record the true end its
        end file holds; without one, stop what is left of it and fail it as lost. Returns the
        status recorded (None: someone else ended it first)."""
        end = self.ingester.read_end(job.id)
        alive = False
        if job.boot_id == self.boot_id:
            # Processes carrying its marker, by pid+start time too once running was recorded.
            alive = bool(await asyncio.to_thread(proctree.job_tree, job.id, job.pid, job.pid_start))
            if alive:
                await self._stop_tree(job, signal.SIGTERM, 0.5)
        await self.ingester.adopt(job)
        if self.on_ended is not None:
            await self.on_ended(job.id)
        try:
            if end is not None:
                done = await self.store.record_exit(
                    job.id,
                    end.returncode,
                    end.ended_at,
                    server_id=self.server_id,
                    disk_full=end.disk_full,
                )
                log.info(
                    "job_end_recovered id=%s owner=%s status=%s returncode=%d",
                    job.id,
                    job.owner_id,
                    done.status,
                    end.returncode,
                )
            else:
                # A process still alive means it ran: lost like any running job of a dead
                # server. None alive and no end: it may have run, its exit status is unknown.
                reason = REASON_LOST if job.status is JobStatus.RUNNING or alive else REASON_NO_EXIT
                done = await self.store.transition(
                    job.id,
                    JobStatus.FAILED,
                    server_id=self.server_id,
                    reason=reason,
                    only_from=ACTIVE,
                )
                log.warning("job_lost id=%s owner=%s reason=%s", job.id, job.owner_id, reason)
        except TransitionConflict:
            return None
        finally:
            self._set_done(job.id)
        self.ingester.clear_end(job.id)
        return done.status

    async def _sweep_end_files(self) -> None:
        """Remove end files of jobs whose end is recorded (a server stopped or died between
        recording an end and removing its file)."""
        ids = self.ingester.end_files()
        if ids:
            for job_id in await self.store.ended_among(ids):
                if job_id not in self._running:
                    self.ingester.clear_end(job_id)

    async def caught_up(self) -> None:
        """Return once the first reconciliation after start has run (tests, commands)."""
        await self._caught_up.wait()

    async def _reconciler(self) -> None:
        """Reconcile at once, then every few seconds; look for stray processes of ended jobs at
        start and now and then. Calls on jobs being reconciled meanwhile see them as they are
        in the database: running, until they are recorded lost."""
        loop = asyncio.get_running_loop()
        next_strays = loop.time()
        first = True
        while True:
            try:
                await self.reconcile()
                if first:
                    first = False
                    await self._sweep_end_files()
                if loop.time() >= next_strays:
                    next_strays = loop.time() + _STRAYS_EVERY_S
                    await self.sweep_strays()
            except Exception:  # task boundary: keep the server going
                log.exception("reconcile_failed")
            self._caught_up.set()
            await asyncio.sleep(_RECONCILE_EVERY_S)

    async def sweep_strays(self) -> int:
        """Stop processes that ended jobs left behind after their server went away (killed
        together with its watchdog, or a version without one). Found by the job marker in their
        environment; left alone unless the job is in this database, has ended, and its server is
        gone (pid, start time and boot id: never a live server's job). Returns how many jobs'
        processes were stopped."""
        own = self.watchdog.jobs()

        def scan() -> dict[str, set[int]]:
            found: dict[str, set[int]] = {}
            for pid, job_id in proctree.markers(proctree.snapshot()).items():
                if job_id not in own:
                    found.setdefault(job_id, set()).add(pid)
            return found

        found = await asyncio.to_thread(scan)
        if not found:
            return 0
        jobs = await self.store.get_jobs(sorted(found))
        gone: dict[str, bool] = {}
        stopped = 0
        for job in jobs.values():
            owner = job.owner_id
            if not job.status.is_terminal or owner is None or owner == self.server_id:
                continue
            if owner not in gone:
                srv = await self.store.get_server(owner)
                gone[owner] = (
                    srv is not None
                    and srv.hostname == self._hostname
                    and not proctree.is_alive(srv.pid, srv.pid_start, srv.boot_id)
                )
            if not gone[owner]:
                continue
            log.warning(
                "job_strays_stopped id=%s status=%s owner=%s pids=%d",
                job.id,
                job.status,
                owner,
                len(found[job.id]),
            )
            await self._stop_tree(job, signal.SIGTERM, 0.5)
            stopped += 1
        if stopped:
            log.info("strays_swept jobs=%d", stopped)
        return stopped

    async def _reap(self) -> None:
        """Collect the exit status of adopted orphans that died (subreaper only)."""
        if self._subreaper:
            procs = await asyncio.to_thread(proctree.snapshot)
            keep = {e.popen.pid for e in self._running.values()}
            if self.watchdog.pid is not None:
                keep.add(self.watchdog.pid)
            proctree.reap_orphans(procs, keep)

    async def _maintenance(self) -> None:
        """Every second: collect adopted orphans that died; let go of ended jobs none of whose
        processes is left (at once after they end, then every few seconds while some are)."""
        loop = asyncio.get_running_loop()
        looked_at: set[str] = set()
        next_look = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._reap()
                ended = {j: v for j, v in self.watchdog.jobs().items() if j not in self._running}
                if ended and (ended.keys() - looked_at or loop.time() >= next_look):
                    next_look = loop.time() + _LINGER_EVERY_S
                    looked_at = set(ended)
                    alive = await asyncio.to_thread(proctree.jobs_trees, ended)
                    for job_id in ended.keys() - alive.keys():
                        self.watchdog.forget(job_id)
                        self.ingester.release(job_id)
            except Exception:  # task boundary: keep the server going
                log.exception("maintenance_failed")

    async def apply_retention(self) -> PruneResult:
        """Delete ended jobs past the retention settings, in small transactions (see
        ``Store.delete_jobs``), so tool calls of every server keep going meanwhile."""
        max_age = self.settings.retention_max_age
        candidates = await self.store.prune_candidates(
            ended_before=utcnow() - max_age if max_age else None,
            max_output_bytes=self.settings.retention_max_output_bytes,
        )
        if not candidates:
            return PruneResult()
        result = await self.store.delete_jobs([c.job_id for c in candidates])
        log.info(
            "retention_pruned jobs=%d output_bytes=%d chunks=%d max_age=%s max_output_bytes=%s",
            result.jobs,
            result.output_bytes,
            result.chunks,
            max_age,
            self.settings.retention_max_output_bytes,
        )
        return result

    async def _retention(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except Exception:  # task boundary: retention must never stop the server
                log.exception("retention_failed")
            await asyncio.sleep(self.settings.retention_interval_s)


def _version() -> str:
    from . import __version__

    return __version__
