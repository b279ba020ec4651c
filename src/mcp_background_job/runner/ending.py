"""The end of a job: its exit seen through its pidfd, the rest of its output stored, its final
status recorded (retried with backoff while the database cannot be written), a failed start
recorded; and waiting for ends, this server's or anyone's.

See the order of writes in the package docstring: the exit status goes to the end file before
anything is written to the database, so whoever takes the job over records its true end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..capture import EndRecord, FailureLog, describe_failure
from ..db import utcnow
from ..errors import StorageError, TransitionConflict
from ..jobs import ACTIVE, REASON_NO_EXIT, JobStatus, signal_name
from ..store import STORAGE_FAILURES
from .table import log_task_end

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ..capture import Ingester
    from ..jobs import Job
    from ..store import Store
    from .table import JobTable, Running
    from .trees import Trees

log = logging.getLogger(__name__)

#: How often the database is asked which of the jobs waited for have ended (by anyone).
_FOREIGN_POLL_S = 0.2
#: Backoff between attempts to record a job's end (the database locked, the disk full).
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 5.0

#: Called with a job's id once its output is all stored and before its final status.
OnEnded = Callable[[str], Awaitable[None]]


class Ends:
    """Records the ends of this server's jobs, and starts that could not happen."""

    def __init__(
        self,
        store: Store,
        ingester: Ingester,
        table: JobTable,
        trees: Trees,
        server_id: str,
        on_ended: OnEnded | None = None,
    ) -> None:
        self.store = store
        self.ingester = ingester
        self.table = table
        self.trees = trees
        self.server_id = server_id
        self.on_ended = on_ended
        #: Tasks storing last output and recording ends: shutdown waits for them, never cancels
        #: them before its deadline.
        self.finishing: set[asyncio.Task[None]] = set()
        self._end_failures = FailureLog("job_end_not_recorded")

    async def fail_start(self, job: Job, reason: str) -> Job:
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
        self.table.set_done(job.id)
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
                self.table.set_done(job_id)
                return

        task = asyncio.get_running_loop().create_task(retry(), name=f"fail-start-{job_id}")
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)
        task.add_done_callback(log_task_end)

    def on_exit(self, job_id: str) -> None:
        entry = self.table.running[job_id]
        loop = asyncio.get_running_loop()
        loop.remove_reader(entry.pidfd)
        os.close(entry.pidfd)
        # Already exited: reaps at once (an adopted keeper is not our child: no status here).
        returncode = entry.popen.wait() if entry.popen is not None else None
        kept = self.ingester.read_end(job_id) if entry.detached else None
        if kept is not None:
            # The keeper recorded the job's true end (its own status says nothing of the job).
            entry.exited = kept
        elif returncode is None:
            # The keeper died without writing it (SIGKILLed): what the job did is not known.
            entry.lost = REASON_NO_EXIT
            entry.exited = EndRecord(-signal.SIGKILL, utcnow(), self.ingester.disk_full())
        else:
            entry.exited = EndRecord(returncode, utcnow(), self.ingester.disk_full())
        if entry.start_failed is None and entry.lost is None and kept is None:
            # Before any database write: whoever takes the job over records this true end if
            # this server cannot (a job stopped because its start was not recorded has none).
            self.ingester.write_end(job_id, entry.exited)
        task = loop.create_task(self._finish(entry, entry.exited), name=f"finish-{job_id}")
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)
        task.add_done_callback(log_task_end)

    async def _finish(self, entry: Running, end: EndRecord) -> None:
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
        if entry.detached:
            # Not in the watchdog's list, so maintenance never lets go of its spool files: now
            # (what a process it left writes after this is not stored, as for any job).
            self.ingester.release(job_id)
        self.table.running.pop(job_id, None)
        self.table.set_done(job_id)
        self.table.wake.set()
        await self.trees.remove_cgroup(job_id)  # kept while processes it left behind run on

    async def _record_end(self, entry: Running, end: EndRecord) -> Job:
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
        if entry.lost is not None:
            return await self.store.transition(
                job_id,
                JobStatus.FAILED,
                server_id=self.server_id,
                reason=entry.lost,
                only_from=ACTIVE,
            )
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


class EndWatch:
    """Waits for jobs to end, whoever ends them: own jobs by their done event, every job waited
    for also by one read of the database for all of them a few times a second."""

    def __init__(
        self,
        store: Store,
        table: JobTable,
        spawn_task: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.store = store
        self.table = table
        self._spawn_task = spawn_task
        # Jobs someone waits for: set once the database shows them ended (see wait_end).
        self._watched: dict[str, asyncio.Event] = {}
        self._watchers: dict[str, int] = {}
        self._watching = False

    async def wait_end(self, job_id: str, timeout: float) -> bool:
        """Wait until the job has ended or ``timeout`` passed; True if it ended.

        Ends recorded by anyone count. Own jobs wake on an event as their end is recorded; every
        job waited for is also looked up in the database a few times a second, in one read for
        all of them (``_watch_ends``), which sees ends that other servers or the CLI recorded:
        a kill of a queued job of this server, say."""
        ended = self._watch(job_id)
        waits: list[asyncio.Future[bool]] = []
        try:
            own = self.table.done.get(job_id)
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
                    if job_id not in self.table.running and job_id not in self.table.direct:
                        # A queued job of ours that someone else ended: nothing to wait for.
                        self.table.set_done(job_id)
                        self.table.submitted.discard(job_id)
        finally:
            self._watching = False
