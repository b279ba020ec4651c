"""Adopting detached jobs: a running detached job of a server that is gone (it stopped, or
died) is taken over by a compare-and-set of its owner with an "adopted" event (one server wins),
while its keeper still runs on this boot; this server then stores the rest of its output from
where the counters in its row say storing stopped, reopens its stdin (the FIFO), watches the
keeper's exit through a pidfd, and records the true end the keeper writes (see ``keeper``).

A detached job whose keeper is gone is not adopted: ``Upkeep`` settles it from its end file
(it ended while no server ran), or fails it as lost (``lost: host rebooted`` when it was
recorded on another boot, ``lost: no exit status recorded`` otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .. import proctree, ptyjob
from ..jobs import JobStatus
from . import keeper
from .table import Running, StdinProtocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..capture import Ingester
    from ..jobs import Job
    from ..store import Store
    from .ending import Ends
    from .table import JobTable

log = logging.getLogger(__name__)


class Adopter:
    """Takes over running detached jobs of servers that are gone."""

    def __init__(
        self,
        store: Store,
        ingester: Ingester,
        table: JobTable,
        ends: Ends,
        arm_timers: Callable[[Running, Job], None],
        *,
        server_id: str,
        boot_id: str,
    ) -> None:
        self.store = store
        self.ingester = ingester
        self.table = table
        self.ends = ends
        self.arm_timers = arm_timers
        self.server_id = server_id
        self.boot_id = boot_id

    async def adopt(self, job: Job) -> bool:
        """True if the job is handled here: adopted, or another server adopted it first. False:
        not a running detached job whose keeper runs on this boot (the caller settles it)."""
        if (
            not job.detached
            or job.status is not JobStatus.RUNNING
            or job.pid is None
            or job.boot_id != self.boot_id
            or self.table.closing
            or self.ingester.read_end(job.id) is not None  # it ended: settled from its end file
        ):
            return False
        try:
            pidfd = os.pidfd_open(job.pid)
        except ProcessLookupError:
            return False
        # After the pidfd is open the pid cannot name another process: check its identity now.
        if not proctree.is_alive(job.pid, job.pid_start, job.boot_id):
            os.close(pidfd)
            return False
        try:
            won = await self.store.adopt(job.id, job.owner_id, self.server_id)
        except BaseException:
            os.close(pidfd)
            raise
        if not won:
            os.close(pidfd)
            return True  # another server adopted it (or it ended meanwhile)
        await self._watch(job, pidfd)
        log.info("job_adopted id=%s owner=%s pid=%d (detached)", job.id, job.owner_id, job.pid)
        return True

    async def _watch(self, job: Job, pidfd: int) -> None:
        assert job.pid is not None  # (checked by adopt)
        entry = Running(job.id, job.pid, None, job.pid_start, pidfd, detached=True)
        if job.started_at is not None:
            entry.spawned = job.started_at.replace(tzinfo=job.started_at.tzinfo or UTC).timestamp()
        entry.idle_timeout_s = job.idle_timeout_s
        # Its output from where storing stopped, before its exit can be seen (the end stores
        # the rest through this capture).
        await self.ingester.resume(job)
        loop = asyncio.get_running_loop()
        try:
            fd = keeper.open_input(self.ingester.spool_dir, job.id)
        except OSError as exc:  # the keeper removes the FIFO as the job ends
            log.info("job_adopted_without_input id=%s reason=%s", job.id, exc)
        else:
            transport, proto = await loop.connect_write_pipe(
                StdinProtocol, os.fdopen(fd, "wb", buffering=0)
            )
            entry.stdin, entry.stdin_proto = transport, proto
            entry.stdin_pipe = ptyjob.fd_identity(fd)
        self.table.running[job.id] = entry
        self.table.done.setdefault(job.id, asyncio.Event())
        loop.add_reader(pidfd, self.ends.on_exit, job.id)
        entry.started.set()
        self.arm_timers(entry, _with_time_left(job))


def _with_time_left(job: Job) -> Job:
    """The job with the part of its timeout that is left (its clock started with the job)."""
    if job.timeout_s is None or job.started_at is None:
        return job
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return replace(job, timeout_s=max(job.timeout_s - elapsed, 0.001))
