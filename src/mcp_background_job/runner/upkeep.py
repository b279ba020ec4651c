"""Upkeep of the database and of this machine: taking over what servers that are gone left
behind (``reconcile``: true ends from end files, jobs lost, queued jobs claimed), stopping
processes that ended jobs left behind, letting go of ended jobs once none of their processes is
left, and deleting old jobs past the retention settings."""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from typing import TYPE_CHECKING

from .. import proctree
from ..capture import describe_failure
from ..db import utcnow
from ..errors import TransitionConflict
from ..jobs import (
    ACTIVE,
    REASON_LOST,
    REASON_NO_EXIT,
    REASON_REBOOTED,
    JobStatus,
    reason_host_lost,
)
from ..store import STORAGE_FAILURES, PruneResult

if TYPE_CHECKING:
    from ..capture import Ingester
    from ..config import Settings
    from ..jobs import Job
    from ..store import Store
    from .adopting import Adopter
    from .ending import OnEnded
    from .table import JobTable
    from .trees import Trees

log = logging.getLogger(__name__)

_RECONCILE_EVERY_S = 5.0
#: How often processes of ended jobs of servers that are gone are looked for (and at start).
_STRAYS_EVERY_S = 60.0
#: How often ended jobs whose processes were still alive at the last look are looked at again.
_LINGER_EVERY_S = 5.0
#: How often a server with no job collects adopted orphans (every second while it has jobs).
_IDLE_REAP_EVERY_S = 30.0
#: A server heart-beats every this fraction of ``host_dead_after_s`` (and at most this often).
_BEATS_PER_DEADLINE = 10
_BEAT_MAX_S = 30.0


class Upkeep:
    """Reconciliation, stray processes, letting go of ended jobs, retention."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        ingester: Ingester,
        table: JobTable,
        trees: Trees,
        *,
        server_id: str,
        boot_id: str,
        hostname: str,
        on_ended: OnEnded | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ingester = ingester
        self.table = table
        self.trees = trees
        self.watchdog = trees.watchdog
        self.server_id = server_id
        self.boot_id = boot_id
        self.hostname = hostname
        self.on_ended = on_ended
        #: Takes over running detached jobs (see ``adopting``); set by the runner.
        self.adopter: Adopter | None = None
        self._unsettled: set[str] = set()  # taken over, end not written yet (see reconcile)
        self._caught_up = asyncio.Event()
        self._next_beat = 0.0

    async def reconcile(self) -> int:
        """Take over what servers that are gone left behind. Jobs that may have run there
        (running, or queued with a start intent) get the true end their end file holds, or are
        failed as lost (the output they wrote is stored, processes still alive are killed); their
        queued jobs that never started, and those of servers that stopped, are claimed and run
        here (after this server's policy allows them). A stopped server's running job is one
        whose end it could not record: taken over the same way. Live servers' jobs are never
        touched. Returns the number of jobs failed (here, and on hosts declared dead)."""
        failed = await self._judge_hosts()
        dead: list[str] = []
        for srv in await self.store.servers_not_stopped(exclude=self.server_id):
            if srv.hostname != self.hostname:
                continue  # cannot see its processes: leave it to a server on its host
            if proctree.is_alive(srv.pid, srv.pid_start, srv.boot_id):
                continue
            dead.append(srv.id)
        claimed = 0
        # Taken over earlier, but their end could not be written then: this server owns them
        # now (no other server will look at them while it lives), so it tries again.
        unsettled = await self.store.get_jobs(list(self._unsettled)) if self._unsettled else {}
        for job in unsettled.values():
            if job.status.is_terminal:  # (as read again: its counters moved on meanwhile)
                self._unsettled.discard(job.id)
            elif await self._settle(job) is JobStatus.FAILED:
                failed += 1
        for job in await self.store.orphaned_jobs(dead, self.hostname):
            if self.adopter is not None and await self.adopter.adopt(job):
                continue  # a detached job that runs on: adopted (here or by another server)
            if not await self.store.claim(job.id, job.owner_id, self.server_id):
                continue  # another server is reconciling it
            if job.status is JobStatus.QUEUED and job.start_attempted_at is None:
                claimed += 1
                self.table.claimed[job.id] = job.owner_id  # checked against the policy at its start
                log.info("job_adopted id=%s owner=%s", job.id, job.owner_id)
                continue
            if await self._settle(job) is JobStatus.FAILED:
                failed += 1
        for server_id in dead:
            await self.store.mark_server_stopped(server_id)
        if claimed:
            self.table.queued += claimed
            self.table.wake.set()
        return failed

    async def _judge_hosts(self) -> int:
        """Heart-beat (now and then), and declare dead the other hosts none of whose servers
        beat for ``host_dead_after_s``: their pids cannot be looked at from here, so silence is
        the only sign. Returns the number of their jobs failed."""
        loop = asyncio.get_running_loop()
        dead_after = self.settings.host_dead_after_s
        if loop.time() >= self._next_beat:
            await self.store.heartbeat(self.server_id)
            self._next_beat = loop.time() + min(dead_after / _BEATS_PER_DEADLINE, _BEAT_MAX_S)
        before = utcnow() - timedelta(seconds=dead_after)
        failed = 0
        for host in await self.store.silent_hosts(before, exclude=self.hostname):
            ids = await self.store.declare_dead(host, before, self.server_id,
                                                reason_host_lost(host))  # fmt: skip
            if ids is None:
                continue  # one of its servers beat meanwhile, or another server declared it
            for job_id in ids:
                self.table.set_done(job_id)
            failed += len(ids)
            log.warning("host_declared_dead host=%s silent_s=%.0f jobs_failed=%d", host,
                        dead_after, len(ids))  # fmt: skip
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
                await self.trees.stop(job, signal.SIGTERM, 0.5)
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
                if job.detached and job.boot_id not in (None, self.boot_id):
                    reason = REASON_REBOOTED  # its keeper died with the machine
                elif job.detached and not alive:
                    reason = REASON_NO_EXIT  # its keeper was killed before it could write it
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
            self.table.set_done(job.id)
        self.ingester.clear_end(job.id)
        return done.status

    async def _sweep_end_files(self) -> None:
        """Remove end files of jobs whose end is recorded (a server stopped or died between
        recording an end and removing its file)."""
        ids = self.ingester.end_files()
        if ids:
            for job_id in await self.store.ended_among(ids):
                if job_id not in self.table.running:
                    self.ingester.clear_end(job_id)

    async def caught_up(self) -> None:
        """Return once the first reconciliation after start has run (tests, commands)."""
        await self._caught_up.wait()

    async def run_reconciler(self) -> None:
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
                    and srv.hostname == self.hostname
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
            await self.trees.stop(job, signal.SIGTERM, 0.5)
            stopped += 1
        if stopped:
            log.info("strays_swept jobs=%d", stopped)
        return stopped

    async def run_maintenance(self) -> None:
        """Every second: collect adopted orphans that died; let go of ended jobs none of whose
        processes is left (at once after they end, then every few seconds while some are)."""
        loop = asyncio.get_running_loop()
        looked_at: set[str] = set()
        next_look = 0.0
        next_idle_reap = 0.0
        while True:
            await asyncio.sleep(1.0)
            if not self.table.running and not self.watchdog.jobs():
                # No job and nothing left of one: only an orphan that died after its job was let
                # go can be waiting to be collected; look now and then, not every second.
                if loop.time() < next_idle_reap:
                    continue
                next_idle_reap = loop.time() + _IDLE_REAP_EVERY_S
            try:
                await self.trees.reap()
                ended = {
                    j: v for j, v in self.watchdog.jobs().items() if j not in self.table.running
                }
                if ended and (ended.keys() - looked_at or loop.time() >= next_look):
                    next_look = loop.time() + _LINGER_EVERY_S
                    looked_at = set(ended)
                    alive = await asyncio.to_thread(self.trees.alive, ended)
                    for job_id in ended.keys() - alive:
                        self.watchdog.forget(job_id)
                        self.ingester.release(job_id)
                        await self.trees.remove_cgroup(job_id)
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

    async def run_retention(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except Exception:  # task boundary: retention must never stop the server
                log.exception("retention_failed")
            await asyncio.sleep(self.settings.retention_interval_s)
