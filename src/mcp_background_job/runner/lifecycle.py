"""The runner's facade (``Runner``): its life (start, an orderly shutdown), stopping jobs (kill,
timeouts) and recording why before any signal, and the calls ``App`` makes, each passed on to
the part of the runner that does it (see the package docstring for the parts)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from typing import TYPE_CHECKING, Any

from .. import proctree
from ..capture import describe_failure
from ..db import utcnow
from ..errors import TransitionConflict
from ..isolation import Isolation
from ..jobs import EndCause, JobOptions, JobStatus, ServerInstance, signal_name
from ..store import STORAGE_FAILURES
from .adopting import Adopter
from .ending import Ends, EndWatch
from .jobinput import JobInput
from .starting import Starter
from .table import JobTable, log_task_end
from .trees import Trees
from .upkeep import Upkeep

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable, Mapping, Sequence

    from ..capture import Ingester
    from ..config import Settings
    from ..jobs import AuditEvent, Job
    from ..store import PruneResult, Store
    from ..terminal import Key
    from .ending import OnEnded
    from .starting import ClaimCheck
    from .table import Running

log = logging.getLogger(__name__)

_POLL_S = 0.05
#: What shutdown waits for the last output to be stored and the ends recorded, past the grace.
_SHUTDOWN_FINISH_S = 1.0
#: How long kill waits for the end to be recorded before it answers with a note saying why not.
_KILL_RECORD_WAIT_S = 10.0


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
        on_ended: OnEnded | None = None,
    ) -> None:
        """``on_ended``: called with a job's id once its output is all stored and before its
        final status (own jobs, and jobs of dead servers taken over): ``App`` masks stored
        output there."""
        self.settings = settings
        self.store = store
        self.ingester = ingester
        # No isolation given (unit tests of the runner): plain `sh -c`, explicit environment.
        self.isolation = isolation or Isolation(
            mode="none", network=True, writable=(), rlimits=(), env_allow=settings.env_allow
        )
        self.server_id = uuid.uuid4().hex[:12]
        self.boot_id = proctree.boot_id()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Stops this server's jobs if it dies; its job list is also every job this server
        #: started whose processes may be alive (running, or left behind by an ended job).
        self.watchdog = proctree.Watchdog()
        self._table = JobTable()
        self._trees = Trees(self.isolation, self.watchdog, self._table)
        self._ends = Ends(store, ingester, self._table, self._trees, self.server_id, on_ended)
        self._waits = EndWatch(store, self._table, self._spawn_task)
        self._input = JobInput(store, self._table)
        self._starter = Starter(
            settings, store, ingester, self.isolation, self._table, self._ends, self._trees,
            server_id=self.server_id, boot_id=self.boot_id, check_claimed=check_claimed,
            arm_timers=self._arm_timers,
        )  # fmt: skip
        self._upkeep = Upkeep(
            settings, store, ingester, self._table, self._trees, server_id=self.server_id,
            boot_id=self.boot_id, hostname=settings.host, on_ended=on_ended,
        )  # fmt: skip
        self._upkeep.adopter = Adopter(
            store, ingester, self._table, self._ends, self._arm_timers,
            server_id=self.server_id, boot_id=self.boot_id,
        )  # fmt: skip

    # --- life of the runner ---------------------------------------------------------------

    async def start(self) -> None:
        """Register this server, start its watchdog and the background tasks. Reconciling what
        servers that are gone left behind runs in the background (see ``caught_up``): storing
        a big leftover spool must not delay the first answer."""
        await self.store.register_server(self.instance(), _version())
        if self.settings.subreaper:
            self._trees.subreaper = proctree.set_child_subreaper(True)
        self.watchdog.start()
        self._spawn_task(self.ingester.run(), "ingest")
        self._spawn_task(self._upkeep.run_reconciler(), "reconcile")
        self._spawn_task(self._starter.run_scheduler(), "scheduler")
        self._spawn_task(self._upkeep.run_maintenance(), "maintenance")
        if self.settings.retention_max_age or self.settings.retention_max_output_bytes is not None:
            self._spawn_task(self._upkeep.run_retention(), "retention")
        log.info("server_started id=%s pid=%d", self.server_id, os.getpid())

    def instance(self) -> ServerInstance:
        return ServerInstance(
            id=self.server_id,
            pid=os.getpid(),
            pid_start=proctree.start_time(os.getpid()),
            boot_id=self.boot_id,
            hostname=self._upkeep.hostname,
            started_at=utcnow(),
            stopped_at=None,
        )

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_task_end)

    async def shutdown(self) -> None:
        """Stop accepting; stop the whole tree of every job this server started, running or
        ended (what an ended job left behind): TERM, ``shutdown_grace_s``, then freeze and KILL
        whatever is left; store the last output, record the ends, close. About the grace plus
        a second at most; the watchdog stops whatever this could not."""
        if self._table.closing:
            return
        self._table.closing = True
        loop = asyncio.get_running_loop()
        began = loop.time()
        # A start in progress finishes first: cancelled between the spawn and the running row,
        # a job would run while recorded as queued, and the next server would run it again.
        async with self._starter.start_lock:
            await self._starter.direct_idle.wait()
            for task in list(self._tasks):
                if task.get_name() != "ingest":
                    task.cancel()
            running = list(self._table.running)
        left = [j for j in running if self._leaves_running(j)]
        running = [j for j in running if j not in left]
        await self._leave_running(left)
        # Concurrently: the writes share a commit.
        requested = await asyncio.gather(
            *(self._request_end(j, EndCause.SHUTDOWN) for j in running),
            return_exceptions=True,
        )
        for job_id, result in zip(running, requested, strict=True):
            if isinstance(result, Exception):  # go on stopping the others
                log.error("shutdown_end_not_requested id=%s", job_id, exc_info=result)
        await self._trees.stop_all(
            lambda: self._wait_own_done(running, self.settings.shutdown_grace_s)
        )
        unfinished = await self._finish_ends(running)
        await self._close(unfinished)
        log.info(
            "server_stopped id=%s jobs_stopped=%d jobs_left_queued=%d seconds=%.3f",
            self.server_id,
            len(running),
            self._table.queued,
            loop.time() - began,
        )

    def _leaves_running(self, job_id: str) -> bool:
        entry = self._table.running[job_id]
        return entry.detached and entry.exited is None

    async def _leave_running(self, job_ids: Sequence[str]) -> None:
        """Shutdown: let go of detached jobs, which keep running under their keepers: their
        output so far stored, an event on each, and nothing of them held (a later server
        adopts them, see ``Upkeep``)."""
        loop = asyncio.get_running_loop()
        for job_id in job_ids:
            entry = self._table.running.pop(job_id)
            loop.remove_reader(entry.pidfd)
            os.close(entry.pidfd)
            for timer in (entry.timer, entry.idle_timer):
                if timer is not None:
                    timer.cancel()
            if entry.stdin is not None:
                entry.stdin.abort()  # its keeper holds the FIFO open: no end of input
            try:
                await self.ingester.flush(job_id)
                await self.store.note(job_id, "left running: detached", server_id=self.server_id)
            except STORAGE_FAILURES as exc:  # the next server stores it from the spool files
                log.warning("job_left_note_failed id=%s reason=%s", job_id, describe_failure(exc))
            log.info("job_left_running id=%s pid=%d (detached)", job_id, entry.pid)

    async def _finish_ends(self, running: Sequence[str]) -> list[str]:
        """Shutdown: give the last output and the ends a moment to be stored; returns the jobs
        whose ends were not recorded (their end files stay for the next server)."""
        done = self._table.done
        # Their exits come at once after SIGKILL; then the last output is stored.
        finishing = [asyncio.ensure_future(done[j].wait()) for j in running if j in done]
        if finishing or self._ends.finishing:
            await asyncio.wait([*finishing, *self._ends.finishing], timeout=_SHUTDOWN_FINISH_S)
            for waiter in finishing:
                waiter.cancel()
        # Ends that could not be recorded in time: their end files stay in the spool directory,
        # where the next server on the database finds them (see the package docstring).
        for entry in self._table.running.values():
            if entry.exited is not None:
                log.warning(
                    "job_end_left id=%s reason=%s: the next server records it from its end file",
                    entry.job_id,
                    entry.end_error or "still being stored",
                )
        for task in list(self._ends.finishing):
            task.cancel()
        await asyncio.gather(*self._ends.finishing, return_exceptions=True)
        return [j for j in running if j in self._table.running]

    async def _close(self, unfinished: Sequence[str]) -> None:
        """Shutdown, last: the background tasks, capture, the subreaper, this server's row."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingester.close()
        if self._trees.subreaper:
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

    async def _wait_own_done(self, job_ids: Iterable[str], timeout: float) -> None:
        waiters = [
            asyncio.ensure_future(self._table.done[j].wait())
            for j in job_ids
            if j in self._table.done and j in self._table.running
        ]
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
            for w in waiters:
                w.cancel()

    # --- timeouts -------------------------------------------------------------------------

    def _arm_timers(self, entry: Running, job: Job) -> None:
        """A job just recorded running: time it out after ``timeout_s``, and when it printed
        nothing for ``idle_timeout_s``."""
        loop = asyncio.get_running_loop()
        if job.timeout_s is not None:
            entry.timer = loop.call_later(job.timeout_s, self._on_timeout, job.id, EndCause.TIMEOUT)
        if job.idle_timeout_s is not None:
            entry.idle_timer = loop.call_later(job.idle_timeout_s, self._check_idle, job.id)

    def _on_timeout(self, job_id: str, cause: EndCause) -> None:
        self._spawn_task(self._timeout(job_id, cause), f"{cause}-{job_id}")

    def _check_idle(self, job_id: str) -> None:
        """Time the job out if it printed nothing for ``idle_timeout_s``, else look again when
        that much time will have passed since its last output."""
        entry = self._table.running.get(job_id)
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
            await self._trees.stop(job, signal.SIGTERM, self.settings.kill_grace_s)

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
                self._table.set_done(job_id)
                self._table.submitted.discard(job_id)
                log.info("job_killed id=%s (queued)", job_id)
                if job.start_attempted_at is not None:
                    # Its server was starting it (or died doing so): stop whatever of it runs.
                    await self._trees.stop(job, sig, grace_s)
                return await self.store.get_job(job_id)
            except TransitionConflict:
                job = await self.store.get_job(job_id, events=False)
        if job.status is JobStatus.RUNNING:
            job = await self._request_end(job_id, EndCause.KILL, job) or job
        log.info("job_kill id=%s signal=%s grace_s=%s", job_id, sig.name, grace_s)
        await self._trees.stop(job, sig, grace_s)
        if not job.status.is_terminal:
            # Its end is recorded once its output is stored; if that takes longer, the view
            # says so (see end_note) rather than leave the caller guessing.
            await self._waits.wait_end(job_id, _KILL_RECORD_WAIT_S)
        return await self.store.get_job(job_id)

    async def _request_end(
        self, job_id: str, cause: EndCause, job: Job | None = None
    ) -> Job | None:
        """Record why the server is stopping a job, before any signal; None (nothing recorded)
        if its main process has exited already: a job that ended by itself as a shutdown or a
        kill came keeps its own outcome. Only a job on this machine can be looked at; others
        get the request."""
        entry = self._table.running.get(job_id)
        if entry is not None:
            if entry.exited is not None or not proctree.is_alive(
                entry.pid, entry.pid_start, self.boot_id
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
        entry = self._table.running.get(job_id)
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

    # --- passed on to the runner's parts --------------------------------------------------

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
        """See ``Starter.submit``."""
        return await self._starter.submit(
            command, cwd=cwd, env=env, labels=labels, timeout_s=timeout_s, options=options,
            shell=shell, audit=audit, secret_env=secret_env,
        )  # fmt: skip

    def owns(self, job_id: str) -> bool:
        return job_id in self._table.running

    def has_jobs(self) -> bool:
        """Whether this server runs any job (whose end is not recorded yet)."""
        return bool(self._table.running)

    async def send_input(
        self, job: Job, data: bytes, *, keys: Sequence[Key] = (), eof: bool = False
    ) -> None:
        """See ``JobInput.send_input``."""
        await self._input.send_input(job, data, keys=keys, eof=eof)

    def pump(self, job_id: str) -> None:
        self._input.pump(job_id)

    async def input_state(self, job_id: str) -> proctree.InputState | None:
        return await self._input.input_state(job_id)

    async def wait_end(self, job_id: str, timeout: float) -> bool:
        """See ``EndWatch.wait_end``."""
        return await self._waits.wait_end(job_id, timeout)

    async def flush(self, job_id: str) -> None:
        await self.ingester.flush(job_id)

    async def reconcile(self) -> int:
        """See ``Upkeep.reconcile``."""
        return await self._upkeep.reconcile()

    async def sweep_strays(self) -> int:
        return await self._upkeep.sweep_strays()

    async def apply_retention(self) -> PruneResult:
        return await self._upkeep.apply_retention()

    async def caught_up(self) -> None:
        """Return once the first reconciliation after start has run (tests, commands)."""
        await self._upkeep.caught_up()


def _version() -> str:
    from .. import __version__

    return __version__
