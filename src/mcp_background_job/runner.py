"""Processes: spawning jobs, noticing their exit, stdin, timeouts, killing trees, the queue,
reconciling jobs of dead servers, and an orderly shutdown. The only module that sends signals.

Each job runs as ``SHELL -c COMMAND`` in a new session, stdin a pipe from this process, stdout and
stderr spool files (see ``capture``). Its exit is seen through a pidfd, independently of any pipe
a background grandchild may hold open. Exit handling (store the last output, then the final
status) runs in tasks that shutdown awaits and never cancels, so a job never stays ``running`` in
the database because the task that would have finished it was cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import proctree
from .capture import Ingester
from .config import Settings
from .db import utcnow
from .errors import JobStateError, TransitionConflict
from .isolation import Isolation
from .jobs import (
    ACTIVE,
    REASON_LOST,
    REASON_SHUTDOWN,
    EndCause,
    Job,
    JobStatus,
    ServerInstance,
    Stream,
)
from .store import JOB_ID_LENGTH, PruneResult, Store

log = logging.getLogger(__name__)

#: Most bytes allowed to wait in our buffer for a job that does not read its stdin.
STDIN_BUFFER_MAX = 1024 * 1024
_POLL_S = 0.05
_FOREIGN_POLL_S = 0.2
_RECONCILE_EVERY_S = 5.0


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
    stdin: asyncio.WriteTransport | None = None
    stdin_proto: _StdinProtocol | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None


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
        self._queue: deque[str] = deque()
        self._start_lock = asyncio.Lock()
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
        while self._queue:
            job_id = self._queue.popleft()
            with contextlib.suppress(TransitionConflict):
                await self.store.transition(
                    job_id,
                    JobStatus.KILLED,
                    server_id=self.server_id,
                    reason=REASON_SHUTDOWN,
                    only_from=frozenset({JobStatus.QUEUED}),
                )
        if self._finishing:
            await asyncio.wait(self._finishing, timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingester.close()
        if self._subreaper:
            proctree.set_child_subreaper(False)
        await self.store.mark_server_stopped(self.server_id)
        log.info("server_stopped id=%s jobs_stopped=%d", self.server_id, len(running))

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
    ) -> Job:
        """Record a new job and start it now if a slot is free, else queue it."""
        if self._closing:
            raise JobStateError("The server is shutting down; start the job on a new server.")
        job = await self.store.create_job(
            job_id=uuid.uuid4().hex[:JOB_ID_LENGTH],
            command=command,
            cwd=cwd,
            shell=self.settings.shell,
            env=env,
            labels=labels,
            timeout_s=timeout_s if timeout_s is not None else self.settings.default_timeout_s,
            owner_id=self.server_id,
        )
        self._done[job.id] = asyncio.Event()
        async with self._start_lock:
            if not self._queue and len(self._running) < self.settings.max_concurrent:
                return await self._start(job)
            self._queue.append(job.id)
        return job

    async def _scheduler(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            async with self._start_lock:
                while self._queue and len(self._running) < self.settings.max_concurrent:
                    job_id = self._queue.popleft()
                    job = await self.store.get_job(job_id, events=False)
                    if job.status is JobStatus.QUEUED:
                        await self._start(job)

    async def _start(self, job: Job) -> Job:
        """Spawn a queued job; returns it as it now stands (running, or failed to start)."""
        # An explicit environment: the server's secrets do not reach jobs (see isolation.py).
        env = self.isolation.environment(job.env, (proctree.MARKER, job.id))
        argv = self.isolation.argv(job.shell, job.command, job.cwd)
        try:
            writers = self.ingester.create_spool(job.id)
        except OSError as exc:
            return await self._fail_start(job, f"cannot create spool files: {exc}")
        stdin_r, stdin_w = os.pipe()
        spawned_at = utcnow()  # before the exit, which may come before the running row does
        try:
            # Popen, not asyncio's subprocess: its wait() also waits for pipe EOF, which a
            # background grandchild can hold forever. Popen spawns with vfork: it is quick.
            popen = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=stdin_r,
                stdout=writers[Stream.STDOUT],
                stderr=writers[Stream.STDERR],
                cwd=job.cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            os.close(stdin_w)
            self.ingester.discard(job.id)
            return await self._fail_start(job, f"failed to start: {exc}")
        finally:
            os.close(stdin_r)
            for fd in writers.values():
                os.close(fd)
        entry = _Running(job.id, popen, proctree.start_time(popen.pid), os.pidfd_open(popen.pid))
        self._running[job.id] = entry
        loop = asyncio.get_running_loop()
        loop.add_reader(entry.pidfd, self._on_exit, job.id)
        try:
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
            log.info("job_started id=%s pid=%d", job.id, popen.pid)
            if job.timeout_s is not None:
                entry.timer = loop.call_later(job.timeout_s, self._on_timeout, job.id)
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
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.stdin is not None:
            entry.stdin.close()
        await entry.started.wait()
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

    def _on_timeout(self, job_id: str) -> None:
        self._spawn_task(self._timeout(job_id), f"timeout-{job_id}")

    async def _timeout(self, job_id: str) -> None:
        job = await self.store.request_end(job_id, EndCause.TIMEOUT)
        if job.end_cause is EndCause.TIMEOUT:
            log.info("job_timed_out id=%s", job_id)
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
                with contextlib.suppress(ValueError):
                    self._queue.remove(job_id)
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
        log.warning("job_tree_survived id=%s pids=%s", job.id, sorted(pids))

    # --- stdin and waiting ----------------------------------------------------------------

    def owns(self, job_id: str) -> bool:
        return job_id in self._running

    async def send_input(self, job: Job, data: bytes, *, eof: bool) -> None:
        """Queue ``data`` for the job's stdin without blocking; ``eof`` closes it afterwards."""
        entry = self._running.get(job.id)
        if entry is None or job.status is not JobStatus.RUNNING:
            if job.status is JobStatus.QUEUED:
                raise JobStateError(
                    f"Job {job.id} is still queued; its stdin opens when it starts. "
                    "Call `wait` or `status` and try again once it is running."
                )
            if job.status.is_terminal:
                raise JobStateError(
                    f"Job {job.id} has ended ({job.status}); its stdin is closed. "
                    "Start a new job with `execute` to run the program again."
                )
            raise JobStateError(
                f"Job {job.id} is run by another server process (owner {job.owner_id}); only "
                "that server holds its stdin. Use the MCP session that started it."
            )
        await entry.started.wait()
        if entry.stdin is None or entry.stdin.is_closing():
            raise JobStateError(
                f"The stdin of job {job.id} is closed (EOF was sent, or the program closed it); "
                "nothing more can be written. Read its output with `output` or `tail`."
            )
        waiting = entry.stdin.get_write_buffer_size()
        if waiting + len(data) > STDIN_BUFFER_MAX:
            raise JobStateError(
                f"Job {job.id} is not reading its stdin: {waiting} bytes are still waiting to be "
                "delivered. Wait for it to read them, or send eof=true / kill the job."
            )
        if data:
            entry.stdin.write(data)
        if eof:
            entry.stdin.close()

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
        """Fail the jobs of servers that died (storing the output they left), and kill any of
        their processes still alive. Live servers' jobs are never touched. Returns jobs failed."""
        dead: list[str | None] = []
        for srv in await self.store.servers_not_stopped(exclude=self.server_id):
            if srv.hostname != self._hostname:
                continue  # cannot see its processes: leave it to a server on its host
            if proctree.is_alive(srv.pid, srv.pid_start, srv.boot_id):
                continue
            dead.append(srv.id)
        failed = 0
        for job in await self.store.active_jobs([*dead, None]):
            if not await self.store.claim(job.id, job.owner_id, self.server_id):
                continue  # another server is reconciling it
            if job.status is JobStatus.RUNNING and job.boot_id == self.boot_id:
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
            if server_id is not None:
                await self.store.mark_server_stopped(server_id)
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
