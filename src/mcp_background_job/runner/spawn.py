"""Spawning one job's process: its spool files, its stdin (a pipe, or a pseudo-terminal), the
``subprocess.Popen`` under the isolation, and the pidfd its exit is seen through.

Every descriptor a start opens belongs to one ``ExitStack`` from the moment it exists: those the
child gets are closed once it has them, whatever happens; those the job keeps (the stdin write
end, the terminal, the spool files) are let go of only when the whole start succeeded, so a
failure at any step leaves nothing open, nothing on disk and nothing running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import proctree, ptyjob
from ..jobs import Stream
from . import keeper
from .table import Running

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from ..capture import Ingester
    from ..config import Settings
    from ..isolation import Isolation
    from ..jobs import Job

#: TERM for programs on a PTY, unless the job's env sets one (the renderer reads xterm output).
PTY_TERM = "xterm-256color"


class SpawnFailed(Exception):
    """The job could not be started; ``reason`` says why, as its row will. Nothing of it runs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Spawned:
    """A job's process, spawned and watched: its entry, and the write end of its input (the
    stdin pipe, or a duplicate of the terminal's master) for the caller's transport."""

    entry: Running
    stdin: int


def spawn(
    job: Job, env: dict[str, str], *, settings: Settings, isolation: Isolation, ingester: Ingester
) -> Spawned:
    """Create the job's spool files and spawn it; raises ``SpawnFailed`` (after undoing every
    step) if it cannot be started or its exit could not be watched."""
    with contextlib.ExitStack() as stack:
        try:
            writers = ingester.create_spool(job.id)
        except OSError as exc:
            raise SpawnFailed(f"cannot create spool files: {exc}") from exc
        _on_failure(stack, lambda: ingester.discard(job.id))
        stack.callback(os.close, writers[Stream.STDERR])  # the child has its own copy
        out = writers[Stream.STDOUT]
        try:
            if job.pty:
                _on_failure(stack, lambda: os.close(out))  # the terminal takes it on success
                popen, terminal, stdin = _spawn_on_terminal(stack, job, env, settings, isolation)
            elif job.detached:
                stack.callback(os.close, out)
                popen, stdin = _spawn_kept(stack, job, env, isolation, writers, ingester)
                terminal = None
            else:
                stack.callback(os.close, out)
                popen, stdin = _spawn_on_pipe(stack, job, env, isolation, writers)
                terminal = None
        except OSError as exc:
            raise SpawnFailed(f"failed to start: {exc}") from exc
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError as exc:
            # Its exit could not be seen: it must not run untracked.
            proctree.signal_pids(proctree.job_tree(job.id, popen.pid, None), signal.SIGKILL)
            popen.wait()
            raise SpawnFailed(f"failed to start: cannot watch its process: {exc}") from exc
        if terminal is not None:
            terminal.attach(out)  # the server appends what the job prints
        entry = Running(
            job.id,
            popen.pid,
            popen,
            proctree.start_time(popen.pid),
            pidfd,
            terminal=terminal,
            idle_timeout_s=job.idle_timeout_s,
            detached=job.detached,
        )
        if terminal is None:
            entry.stdin_pipe = ptyjob.fd_identity(stdin)
        return Spawned(entry, stdin)
    raise AssertionError("unreachable")  # (mypy: an ExitStack may swallow exceptions)


def _spawn_on_terminal(
    stack: contextlib.ExitStack[bool | None],
    job: Job,
    env: dict[str, str],
    settings: Settings,
    isolation: Isolation,
) -> tuple[subprocess.Popen[bytes], ptyjob.Terminal, int]:
    terminal = ptyjob.Terminal(job.rows or settings.pty_rows, job.cols or settings.pty_cols)
    _on_failure(stack, terminal.close)
    stdin = os.dup(terminal.master)  # the transport closes its own descriptor
    _on_failure(stack, lambda: os.close(stdin))
    if "TERM" not in job.env:
        env["TERM"] = PTY_TERM
    # The helper makes the terminal the job's controlling terminal in a new session.
    popen = subprocess.Popen(
        isolation.wrap(ptyjob.exec_argv(job.shell, job.command), job.cwd, job.id),
        stdin=terminal.slave,
        stdout=terminal.slave,
        stderr=terminal.slave,
        cwd=job.cwd,
        env=env,
        close_fds=True,
    )
    return popen, terminal, stdin


def _spawn_on_pipe(
    stack: contextlib.ExitStack[bool | None],
    job: Job,
    env: dict[str, str],
    isolation: Isolation,
    writers: dict[Stream, int],
) -> tuple[subprocess.Popen[bytes], int]:
    stdin_r, stdin_w = os.pipe()
    stack.callback(os.close, stdin_r)  # the child's end
    _on_failure(stack, lambda: os.close(stdin_w))
    argv = isolation.argv(job.shell, job.command, job.cwd, job.id)
    return _popen(argv, stdin_r, job, env, writers), stdin_w


def _spawn_kept(
    stack: contextlib.ExitStack[bool | None],
    job: Job,
    env: dict[str, str],
    isolation: Isolation,
    writers: dict[Stream, int],
    ingester: Ingester,
) -> tuple[subprocess.Popen[bytes], int]:
    """A detached job: under its keeper (see ``keeper``), in a session of its own, its stdin a
    FIFO in the spool directory that a later server can reopen."""
    spool = ingester.spool_dir
    fifo = keeper.make_fifo(spool, job.id)
    _on_failure(stack, fifo.unlink)
    stdin_w = keeper.open_input(spool, job.id)
    _on_failure(stack, lambda: os.close(stdin_w))
    argv = keeper.argv(spool, job.id, isolation.argv(job.shell, job.command, job.cwd, job.id))
    return _popen(argv, subprocess.DEVNULL, job, env, writers), stdin_w


def _popen(
    argv: list[str], stdin: int, job: Job, env: dict[str, str], writers: dict[Stream, int]
) -> subprocess.Popen[bytes]:
    """The job's process in a session of its own, its output into the spool files.

    Popen, not asyncio's subprocess: its wait() also waits for pipe EOF, which a background
    grandchild can hold forever. Popen spawns with vfork: it is quick."""
    return subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=writers[Stream.STDOUT],
        stderr=writers[Stream.STDERR],
        cwd=job.cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
    )


def _on_failure(stack: contextlib.ExitStack[bool | None], undo: Callable[[], object]) -> None:
    """Register ``undo`` to run only if the start fails (the stack unwinds with an exception):
    what the job keeps on success is let go of then."""

    def exit_(
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is not None:
            undo()
        return False

    stack.push(exit_)
