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
it, highest priority first, then oldest (``Store.queue_state``); the queued-to-running change is
a compare-and-set, and a queued job changes owner only by a compare-and-set from a server that
is gone (``Store.claim``), so no job is started twice, even with several servers on one file.
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
from datetime import datetime
from typing import Any

from . import proctree, ptyjob
from .capture import Ingester
from .config import Settings
from .db import utcnow
from .errors import InvalidRequest, JobStateError, TransitionConflict
from .isolation import Isolation
from .jobs import (
    ACTIVE,
    REASON_LOST,
    EndCause,
    Job,
    JobOptions,
    JobStatus,
    ServerInstance,
    Stream,
)
from .store import JOB_ID_LENGTH, PruneResult, Store
from .terminal import Key

log = logging.getLogger(__name__)

#: Most bytes allowed to wait in our buffer for a job that does not read its stdin.
STDIN_BUFFER_MAX = 1024 * 1024
_POLL_S = 0.05
_FOREIGN_POLL_S = 0.2
_RECONCILE_EVERY_S = 5.0
#: How often the queue is looked at while jobs wait (dependencies may end on other servers).
_QUEUE_POLL_S = 1.0
#: TERM for programs on a PTY, unless the job's env sets one (the renderer reads xterm output).
PTY_TERM = "xterm-256color"
_INTERRUPT_BYTES = (b"\x03", b"\x1c")  # Ctrl-C, Ctrl-\ on a terminal


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


class Runner:
    """Runs this server's jobs and keeps their rows true."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ingester: Ingester,
        isolation: Isolation | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ingester = ingester
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

    # --- life of the runner ---------------------------------------------------------------

    async def start(self) -> None:
        """Register this server, reconcile jobs of dead servers, then start background tasks."""
        await self.store.register_server(self.instance(), _version())
        if self.settings.subreaper:
            self._subreaper = proctree.set_child_subreaper(True)
        await self.reconcile()
        self._spawn_task(self.ingester.run(), "ingest")
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
        """Stop accepting, stop every running job (TERM, grace, KILL), store, record, close."""
        if self._closing:
            return
        self._closing = True
        # A start in progress finishes first: cancelled between the spawn and the running row,
        # a job would run while recorded as queued, and the next server would run it again.
        async with self._start_lock:
            await self._direct_idle.wait()
            for task in list(self._tasks):
                if task.get_name() != "ingest":
                    task.cancel()
            running = list(self._running)
        for job_id in running:
            with contextlib.suppress(Exception):
                await self.store.request_end(job_id, EndCause.SHUTDOWN)
        trees = {j: self._tree_of_own(j) for j in running}
        for pids in trees.values():
            proctree.signal_pids(pids, signal.SIGTERM)
        await self._wait_own_done(running, self.settings.shutdown_grace_s)
        for job_id in running:
            if job_id in self._running:
                proctree.signal_pids(self._tree_of_own(job_id), signal.SIGKILL)
        await self._wait_own_done(running, 2.0)
        # Queued jobs stay queued: once this server is marked stopped, the next server on the
        # database claims them (see reconcile).
        if self._finishing:
            await asyncio.wait(self._finishing, timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingester.close()
        if self._subreaper:
            proctree.set_child_subreaper(False)
        await self.store.mark_server_stopped(self.server_id)
        log.info(
            "server_stopped id=%s jobs_stopped=%d jobs_left_queued=%d",
            self.server_id,
            len(running),
            self._queued,
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
        secret_env: Mapping[str, str] | None = None,
    ) -> Job:
        """Record a new job and start it now if it may (a slot is free, nothing is queued ahead
        of it, no dependencies), else leave it queued for the scheduler. ``shell``: default
        the server's. ``secret_env``: values ``env`` holds as ``WITHHELD``, kept in memory only
        (see isolation.py)."""
        if self._closing:
            raise JobStateError("The server is shutting down; start the job on a new server.")

        async def create(job_id: str) -> Job:
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
            )
            self._done[job.id] = asyncio.Event()
            return job

        job_id = uuid.uuid4().hex[:JOB_ID_LENGTH]
        if not options.after and not self._queued and self._free_slots() > 0:
            # Started here, not by the scheduler: many submissions at once are created and
            # started concurrently (their writes share commits) instead of one at a time under
            # the start lock. Taking the slot has no await before it, so it cannot be oversold.
            self._direct.add(job_id)
            self._direct_idle.clear()
            try:
                job = await create(job_id)
            except BaseException:
                self._release(job_id)
                raise
            if self._closing:
                self._release(job_id)
                return job  # left queued: the next server on the database starts it
            # Shielded: a cancelled call must not leave a spawned job recorded as queued.
            start = asyncio.ensure_future(self._start(job))
            start.add_done_callback(lambda _: self._release(job_id))
            return await asyncio.shield(start)
        job = await create(job_id)
        if self._free_slots() <= 0:
            self._queued += 1  # later submissions queue behind it; the scheduler recounts
            return job
        started = await self._schedule()
        return started.get(job.id) or await self.store.get_job(job.id)

    def _release(self, job_id: str) -> None:
        self._direct.discard(job_id)
        if not self._direct:
            self._direct_idle.set()

    def _free_slots(self) -> int:
        return self.settings.max_concurrent - len(self._running.keys() | self._direct)

    async def _scheduler(self) -> None:
        while True:
            try:
                await self._schedule()
            except Exception:  # task boundary: keep scheduling
                log.exception("schedule_failed")
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
                for job in await asyncio.gather(*(self._start(j) for j in state.startable)):
                    started[job.id] = job
                    self._queued -= 1
                if not state.doomed:
                    break  # else their own dependents may now be doomed too: look again
        return started

    async def _start(self, job: Job) -> Job:
        """Spawn a queued job; returns it as it now stands (running, or failed to start)."""
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
        entry = _Running(
            job.id,
            popen,
            proctree.start_time(popen.pid),
            os.pidfd_open(popen.pid),
            terminal=terminal,
            idle_timeout_s=job.idle_timeout_s,
        )
        self._running[job.id] = entry
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
                values={
                    "pid": popen.pid,
                    "pid_start": entry.pid_start,
                    "boot_id": self.boot_id,
                    "started_at": spawned_at,
                },
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
        finally:
            entry.started.set()
        return job

    async def _fail_start(self, job: Job, reason: str) -> Job:
        log.warning("job_spawn_failed id=%s reason=%s", job.id, reason)
        try:
            job = await self.store.transition(
                job.id, JobStatus.FAILED, server_id=self.server_id, reason=reason
            )
        except TransitionConflict:
            job = await self.store.get_job(job.id, events=False)
        self._set_done(job.id)
        return job

    # --- exits ----------------------------------------------------------------------------

    def _on_exit(self, job_id: str) -> None:
        entry = self._running[job_id]
        loop = asyncio.get_running_loop()
        loop.remove_reader(entry.pidfd)
        os.close(entry.pidfd)
        returncode = entry.popen.wait()  # already exited: reaps at once
        task = loop.create_task(self._finish(entry, returncode, utcnow()), name=f"finish-{job_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        task.add_done_callback(self._task_ended)

    async def _finish(self, entry: _Running, returncode: int, ended_at: datetime) -> None:
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
        try:
            await self.ingester.finish(job_id)
            if self.on_ended is not None:
                await self.on_ended(job_id)
        except Exception:  # the status must still be recorded
            log.exception("final_ingest_failed id=%s", job_id)
        try:
            job = await self.store.record_exit(
                job_id, returncode, ended_at, server_id=self.server_id
            )
            log.info("job_ended id=%s status=%s returncode=%d", job_id, job.status, returncode)
        except TransitionConflict as exc:
            log.warning("job_end_not_recorded id=%s: %s", job_id, exc)
        finally:
            self._running.pop(job_id, None)
            self._set_done(job_id)
            self._wake.set()

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
        job = await self.store.request_end(job_id, cause)
        if job.end_cause is cause:
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
                log.info("job_killed id=%s (queued)", job_id)
                return await self.store.get_job(job_id)
            except TransitionConflict:
                job = await self.store.get_job(job_id, events=False)
        if job.status is JobStatus.RUNNING:
            job = await self.store.request_end(job_id, EndCause.KILL)
        log.info("job_kill id=%s signal=%s grace_s=%s", job_id, sig.name, grace_s)
        await self._stop_tree(job, sig, grace_s)
        if not job.status.is_terminal:
            await self.wait_end(job_id, 10.0)
        return await self.store.get_job(job_id)

    def _tree_of_own(self, job_id: str) -> set[int]:
        entry = self._running.get(job_id)
        if entry is None:
            return set()
        return proctree.job_tree(job_id, entry.popen.pid, entry.pid_start)

    async def _stop_tree(self, job: Job, sig: signal.Signals, grace_s: float) -> None:
        """TERM (or ``sig``) the tree, wait up to ``grace_s`` for it to be gone, then KILL the rest
        until nothing is left; processes spawned meanwhile are found on each sweep."""

        def tree() -> set[int]:
            return proctree.job_tree(job.id, job.pid, job.pid_start)

        loop = asyncio.get_running_loop()
        pids = await asyncio.to_thread(tree)
        proctree.signal_pids(pids, sig)
        deadline = loop.time() + grace_s
        while pids and loop.time() < deadline:
            await asyncio.sleep(_POLL_S)
            pids = await asyncio.to_thread(tree)
        for _ in range(40):
            if not pids:
                return
            proctree.signal_pids(pids, signal.SIGKILL)
            await asyncio.sleep(_POLL_S)
            pids = await asyncio.to_thread(tree)
        if pids:  # (the last sweep may have found none left)
            log.warning("job_tree_survived id=%s pids=%s", job.id, sorted(pids))

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

        Own jobs wake on an event; other servers' jobs are checked in the database a few times a
        second (no busy loop)."""
        event = self._done.get(job_id)
        if event is not None:
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                return False
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            job = await self.store.get_job(job_id, events=False)
            if job.status.is_terminal:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(_FOREIGN_POLL_S, left))

    async def flush(self, job_id: str) -> None:
        await self.ingester.flush(job_id)

    # --- reconciliation and housekeeping --------------------------------------------------

    async def reconcile(self) -> int:
        """Take over what servers that are gone left behind. Their running jobs are failed as
        lost (the output they wrote is stored, processes still alive are killed); their queued
        jobs, and those of servers that stopped, are claimed and run here. Live servers' jobs
        are never touched. Returns the number of jobs failed."""
        dead: list[str] = []
        for srv in await self.store.servers_not_stopped(exclude=self.server_id):
            if srv.hostname != self._hostname:
                continue  # cannot see its processes: leave it to a server on its host
            if proctree.is_alive(srv.pid, srv.pid_start, srv.boot_id):
                continue
            dead.append(srv.id)
        failed = claimed = 0
        for job in await self.store.orphaned_jobs(dead):
            if not await self.store.claim(job.id, job.owner_id, self.server_id):
                continue  # another server is reconciling it
            if job.status is JobStatus.QUEUED:
                claimed += 1
                log.info("job_adopted id=%s owner=%s", job.id, job.owner_id)
                continue
            if job.boot_id == self.boot_id:
                await self._stop_tree(job, signal.SIGTERM, 0.5)
            await self.ingester.adopt(job)
            if self.on_ended is not None:
                await self.on_ended(job.id)
            with contextlib.suppress(TransitionConflict):
                await self.store.transition(
                    job.id,
                    JobStatus.FAILED,
                    server_id=self.server_id,
                    reason=REASON_LOST,
                    only_from=ACTIVE,
                )
                failed += 1
                log.warning("job_lost id=%s owner=%s", job.id, job.owner_id)
        for server_id in dead:
            await self.store.mark_server_stopped(server_id)
        if claimed:
            self._queued += claimed
            self._wake.set()
        return failed

    async def _maintenance(self) -> None:
        loop = asyncio.get_running_loop()
        next_reconcile = loop.time() + _RECONCILE_EVERY_S
        while True:
            await asyncio.sleep(1.0)
            try:
                if self._subreaper:
                    procs = await asyncio.to_thread(proctree.snapshot)
                    keep = {e.popen.pid for e in self._running.values()}
                    proctree.reap_orphans(procs, keep)
                if loop.time() >= next_reconcile:
                    next_reconcile = loop.time() + _RECONCILE_EVERY_S
                    await self.reconcile()
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
