"""What the runner knows of this server's jobs while they run: one ``Running`` entry per spawned
job, and the bookkeeping the runner's parts share (done events, the queue count, jobs being
started or claimed). State only: nothing here touches a process or the database."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    from ..capture import EndRecord
    from ..ptyjob import Terminal

log = logging.getLogger(__name__)


class StdinProtocol(asyncio.BaseProtocol):
    def __init__(self) -> None:
        self.lost: Exception | None = None
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = exc


@dataclass(slots=True)
class Running:
    job_id: str
    #: The job's process: its main process, or for a detached job its keeper (runner/keeper.py).
    pid: int
    #: None for a detached job adopted from another server (its keeper is not our child).
    popen: subprocess.Popen[bytes] | None
    pid_start: int | None
    pidfd: int
    detached: bool = False
    terminal: Terminal | None = None
    stdin: asyncio.WriteTransport | None = None
    stdin_proto: StdinProtocol | None = None
    stdin_pipe: tuple[int, int] | None = None  # (device, inode) of the stdin pipe
    started: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None
    idle_timer: asyncio.TimerHandle | None = None
    idle_timeout_s: float | None = None
    spawned: float = field(default_factory=time.time)
    exited: EndRecord | None = None  # its main process has ended (the end may not be recorded)
    start_failed: str | None = None  # why its running row could not be written (it was stopped)
    end_error: str | None = None  # why its end could not be recorded yet (retrying)
    lost: str | None = None  # a detached job whose end is not known: failed with this reason


class JobTable:
    """This server's jobs as its runner tracks them, shared by the runner's parts."""

    def __init__(self) -> None:
        self.running: dict[str, Running] = {}
        #: Set once a job of this server has ended (its end recorded, or someone else's).
        self.done: dict[str, asyncio.Event] = {}
        self.queued = 0  # own queued jobs, as the last look at the queue found
        # Jobs submit() is starting itself, outside the start lock: each holds a slot, and the
        # scheduler does not see them until they run.
        self.direct: set[str] = set()
        # Jobs created by submit() here and not started yet: every other job is checked against
        # the policy before it starts (claimed ones: from which server, for the audit log).
        self.submitted: set[str] = set()
        self.claimed: dict[str, str | None] = {}
        #: Set when the queue may have changed: the scheduler looks again.
        self.wake = asyncio.Event()
        self.closing = False  # shutting down: nothing more is started

    def set_done(self, job_id: str) -> None:
        event = self.done.pop(job_id, None)
        if event is not None:
            event.set()


def log_task_end(task: asyncio.Task[None]) -> None:
    """A done callback for the runner's background tasks: a failure is logged, never lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("task_failed name=%s", task.get_name(), exc_info=task.exception())
