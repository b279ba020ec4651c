"""A running job's input: data and keys to its stdin pipe or terminal, and whether it waits
for input. Keys that stand for signals on a pipe (Ctrl-C, Ctrl-\\, Ctrl-Z) go to the job's
process group through ``proctree``; an interrupt is recorded as the cause before it is sent."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from .. import proctree, ptyjob
from ..errors import JobStateError
from ..jobs import EndCause, JobStatus
from . import keeper

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..jobs import Job
    from ..store import Store
    from ..terminal import Key
    from .table import JobTable, Running

log = logging.getLogger(__name__)

#: Most bytes allowed to wait in our buffer for a job that does not read its stdin.
STDIN_BUFFER_MAX = 1024 * 1024
_INTERRUPT_BYTES = (b"\x03", b"\x1c")  # Ctrl-C, Ctrl-\ on a terminal


class JobInput:
    """Input to this server's running jobs (only the server that runs a job holds its stdin)."""

    def __init__(self, store: Store, table: JobTable) -> None:
        self.store = store
        self.table = table

    async def send_input(
        self, job: Job, data: bytes, *, keys: Sequence[Key] = (), eof: bool = False
    ) -> None:
        """Queue ``data``, then ``keys``, for the job without blocking; ``eof`` ends its input.

        On a terminal, keys are the bytes a terminal sends (Ctrl-C makes the kernel interrupt
        the foreground processes) and end of input is Ctrl-D. Without one, Ctrl-C, Ctrl-\\
        and Ctrl-Z signal the job's process group, Ctrl-D and ``eof`` close its stdin.
        """
        entry = self._entry(job)
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
                if entry.detached:
                    keeper.end_input(entry.pid)  # it holds the FIFO open too
            else:
                if step in (signal.SIGINT, signal.SIGQUIT):
                    await self.store.request_end(job.id, EndCause.INTERRUPT)
                log.info("job_key_signal id=%s signal=%s", job.id, step.name)
                proctree.signal_group(entry.pid, step)

    def _entry(self, job: Job) -> Running:
        entry = self.table.running.get(job.id)
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
        entry = self.table.running.get(job_id)
        if entry is not None and entry.terminal is not None:
            entry.terminal.pump()

    async def input_state(self, job_id: str) -> proctree.InputState | None:
        """Whether the job is waiting for input: blocked reading its terminal or stdin with
        everything sent to it read (see ``proctree.InputState``). None: not known (not a
        running job of this server, or its state cannot be read)."""
        entry = self.table.running.get(job_id)
        if entry is None or not entry.started.is_set() or entry.stdin is None:
            return None
        unread = entry.stdin.get_write_buffer_size()
        terminal = entry.terminal
        pid, pid_start = entry.pid, entry.pid_start
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
