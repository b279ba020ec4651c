"""Stopping a job's process tree, and its cgroups: what kill, timeouts, shutdown,
reconciliation and the sweep of stray processes all do the same way. With ``proctree`` (which
finds trees in ``/proc`` and signals them) and ``cgroup``, the only code that sends signals to
jobs; ``_watchdog`` stops trees the same way when the server is gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING

from .. import proctree

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from ..isolation import Isolation
    from ..jobs import Job
    from .table import JobTable

log = logging.getLogger(__name__)

_POLL_S = 0.05
#: Longest a tree is frozen and killed for (a tree that forks as fast as it can stops at once).
KILL_TIMEOUT_S = 30.0


class Trees:
    """Stops job trees and removes job cgroups; collects adopted orphans (as a subreaper)."""

    def __init__(self, isolation: Isolation, watchdog: proctree.Watchdog, table: JobTable) -> None:
        self.isolation = isolation
        self.watchdog = watchdog
        self.table = table
        self.subreaper = False  # set once this server adopts orphaned descendants

    def kill_own(self, job_id: str) -> None:
        """SIGKILL the tree of a job this server is starting, at once (no grace: its start
        could not be recorded, or it was killed meanwhile)."""
        entry = self.table.running.get(job_id)
        if entry is not None:
            pids = proctree.job_tree(job_id, entry.pid, entry.pid_start)
            proctree.signal_pids(pids, signal.SIGKILL)

    async def stop(self, job: Job, sig: signal.Signals, grace_s: float) -> None:
        """TERM (or ``sig``) the tree and wait up to ``grace_s`` for it to be gone; then freeze
        what is left (SIGSTOP until a sweep finds no new process, so a tree that forks faster
        than it is killed stops growing) and KILL it until nothing is left. Kill, timeouts,
        reconciliation and stray processes all stop trees this way."""
        cgroups = self.isolation.cgroups

        def tree() -> set[int]:
            pids = proctree.job_tree(job.id, job.pid, job.pid_start)
            if cgroups is not None:
                # Its group also holds what left the tree (new session, marker cleared, parent
                # gone): no process of the job escapes the signal.
                pids |= proctree.live(cgroups.procs(job.id))
            if job.detached:
                # Its keeper records the job's end, and exits by itself once the job has.
                pids.discard(job.pid or 0)
            return pids

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
            pids = await asyncio.to_thread(proctree.kill_tree, tree, KILL_TIMEOUT_S)
            if cgroups is not None:
                # The kernel's own kill of the group (cgroup.kill, or frozen and killed): a fork
                # racing the sweeps above cannot slip out of it.
                await asyncio.to_thread(cgroups.kill, job.id)
                pids = await asyncio.to_thread(tree)
            await self.reap()  # killed orphans are ours to collect; they count as processes
        if pids:
            log.warning("job_tree_survived id=%s pids=%s", job.id, sorted(pids)[:50])
        else:
            await self.remove_cgroup(job.id)

    async def stop_all(self, grace: Callable[[], Awaitable[None]]) -> None:
        """Shutdown: TERM every tree of this server's jobs (running ones, and what ended ones
        left behind), await ``grace`` (the running ones ending, or the grace period), then
        freeze and KILL what is left, through the jobs' cgroups too."""
        own = self.watchdog.jobs()
        exclude = () if self.watchdog.pid is None else (self.watchdog.pid,)

        def trees() -> set[int]:
            return set().union(*proctree.jobs_trees(own, exclude=exclude).values())

        pids = await asyncio.to_thread(trees) if own else set()
        mains = {pid for pid, _ in own.values() if pid in pids}
        proctree.signal_pids(mains, signal.SIGTERM)  # first: see stop
        proctree.signal_pids(pids - mains, signal.SIGTERM)
        await grace()
        left = await asyncio.to_thread(proctree.kill_tree, trees, 5.0) if pids else set()
        left |= await asyncio.to_thread(self.kill_cgroups, own)
        if left:
            log.warning("shutdown_tree_survived pids=%s", sorted(left)[:50])
        else:
            for job_id in own:
                self.watchdog.forget(job_id)

    async def remove_cgroup(self, job_id: str) -> None:
        """Remove the job's cgroups once nothing is in them (else they stay: a process left
        behind is still in one; a later try, or the sweep of empty groups, removes them)."""
        cgroups = self.isolation.cgroups
        if cgroups is None:
            return
        try:
            await asyncio.to_thread(cgroups.remove, job_id)
        except OSError as exc:  # not ours to remove, or gone wrong: the sweep tries again
            log.warning("job_cgroup_not_removed id=%s error=%s", job_id, exc)

    def kill_cgroups(self, job_ids: Iterable[str]) -> set[int]:
        """Kill what is left in the cgroups of ``job_ids`` (what escaped their trees) and remove
        the groups; returns the pids still alive in them. Blocks: run it in a thread."""
        cgroups = self.isolation.cgroups
        left: set[int] = set()
        if cgroups is None:
            return left
        for job_id in job_ids:
            if not cgroups.kill(job_id):
                left |= proctree.live(cgroups.procs(job_id))
            with contextlib.suppress(OSError):  # a zombie not reaped yet: the sweep removes it
                cgroups.remove(job_id)
        return left

    def alive(self, jobs: dict[str, tuple[int | None, int | None]]) -> set[str]:
        """Which of ``jobs`` still have processes: in their tree, or in their cgroups. Blocks."""
        alive = set(proctree.jobs_trees(jobs))
        cgroups = self.isolation.cgroups
        if cgroups is not None:
            alive.update(j for j in jobs.keys() - alive if proctree.live(cgroups.procs(j)))
        return alive

    async def reap(self) -> None:
        """Collect the exit status of adopted orphans that died (subreaper only)."""
        if self.subreaper:
            procs = await asyncio.to_thread(proctree.own_children)
            keep = {e.pid for e in self.table.running.values()}
            if self.watchdog.pid is not None:
                keep.add(self.watchdog.pid)
            proctree.reap_orphans(procs, keep)
