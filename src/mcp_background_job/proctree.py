"""Linux process facts from ``/proc``, and signalling a job's whole process tree.

Import rule: ``_watchdog`` only (layer ``processes`` in ``tests/test_layers.py``).
Only the ``runner`` package signals with it (or finds trees, reaps, watches); elsewhere only
the read-only facts are used (``is_alive`` of a server, the ``MARKER`` name). A job's tree is
every process that is, or descends from, its main process, shares its session or group, or
carries its ``MCP_BACKGROUND_JOB_ID`` marker in its environment; the marker finds children that
left with ``setsid``/``nohup`` and were re-parented (and a job's cgroup, where it has one, what
left both: see ``runner.trees``).
Identity is (pid, start time, boot id): ``pid_max`` is small, so a bare pid may be someone else.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import _watchdog

log = logging.getLogger(__name__)

MARKER = _watchdog.MARKER.decode().rstrip("=")
_PR_SET_CHILD_SUBREAPER = 36
_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int  # clock ticks after boot (field 22 of /proc/PID/stat)


def boot_id() -> str:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def read_stat(pid: int) -> ProcInfo | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: parse after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcInfo(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        start=int(fields[19]),
    )


def start_time(pid: int) -> int | None:
    info = read_stat(pid)
    return None if info is None else info.start


def is_alive(pid: int | None, start: int | None, boot: str | None) -> bool:
    """True if the process that had this identity still runs (a zombie counts as dead)."""
    if pid is None or boot != boot_id():
        return False
    info = read_stat(pid)
    if info is None or info.state in ("Z", "X"):
        return False
    return start is None or info.start == start


def snapshot() -> dict[int, ProcInfo]:
    procs: dict[int, ProcInfo] = {}
    for entry in os.scandir(_PROC):
        if entry.name.isdigit():
            info = read_stat(int(entry.name))
            if info is not None:
                procs[info.pid] = info
    return procs


def own_children() -> dict[int, ProcInfo]:
    """This process's children (zombies included), from ``/proc/self/task/*/children``: a few
    small reads instead of a ``snapshot`` of every process on the machine, which an idle server
    took once a second. The whole ``snapshot`` where the kernel lacks those files."""
    me = os.getpid()
    pids: set[int] = set()
    try:
        for task in os.scandir(_PROC / str(me) / "task"):
            pids.update(int(p) for p in (Path(task.path) / "children").read_bytes().split())
    except FileNotFoundError:  # no CONFIG_PROC_CHILDREN (or a thread ended meanwhile: rare)
        return {p.pid: p for p in snapshot().values() if p.ppid == me}
    found = {}
    for pid in pids:
        info = read_stat(pid)
        if info is not None and info.ppid == me:
            found[pid] = info
    return found


def job_tree(job_id: str, main_pid: int | None, main_start: int | None) -> set[int]:
    """Live processes that belong to the job (not zombies, never this process)."""
    return jobs_trees({job_id: (main_pid, main_start)}).get(job_id, set())


def jobs_trees(
    jobs: Mapping[str, tuple[int | None, int | None]], *, exclude: Iterable[int] = ()
) -> dict[str, set[int]]:
    """The live processes of each of ``jobs`` (id -> main pid and start time) that has any, in
    one pass over /proc: see ``_watchdog.find_trees``."""
    return _watchdog.find_trees(jobs, exclude=exclude)


def live(pids: Iterable[int]) -> set[int]:
    """Those of ``pids`` that are alive (not zombies), never this process."""
    me = os.getpid()
    found = set()
    for pid in pids:
        info = read_stat(pid)
        if pid != me and info is not None and info.state not in ("Z", "X"):
            found.add(pid)
    return found


def kill_tree(find: Callable[[], set[int]], timeout: float) -> set[int]:
    """Freeze what ``find`` returns (SIGSTOP until no new process appears: a tree that forks
    faster than it is killed cannot grow any more), then SIGKILL until nothing is left. Blocks
    (run it in a thread); returns the pids still alive after ``timeout`` (empty on success)."""
    return _watchdog.kill_tree(find, timeout)


def markers(pids: Iterable[int]) -> dict[int, str]:
    """The job id each of ``pids`` carries in its environment (those that carry one)."""
    found = {pid: _watchdog.marker(pid) for pid in pids}
    return {pid: job_id for pid, job_id in found.items() if job_id is not None}


def signal_pids(pids: set[int], sig: int) -> int:
    """Send ``sig`` to each pid (ones already gone are skipped); returns how many got it."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            sent += 1
        except ProcessLookupError:
            continue
        except PermissionError:
            log.warning("kill_denied pid=%d signal=%s", pid, signal.Signals(sig).name)
    return sent


def set_child_subreaper(on: bool) -> bool:
    """Adopt orphaned descendants (Linux), so ``setsid``/``nohup`` children stay reachable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    except (OSError, AttributeError) as exc:
        log.warning("subreaper_unavailable error=%s", exc)
        return False
    return True


def reap_orphans(procs: dict[int, ProcInfo], keep: set[int]) -> int:
    """Collect exit statuses of adopted orphans that died (zombies whose parent is this process).

    ``keep``: direct children whose status someone else will collect. ``procs`` must be a snapshot
    taken after every pid in ``keep`` was registered, so a fresh child is never taken for an orphan.
    """
    me = os.getpid()
    reaped = 0
    for p in procs.values():
        if p.ppid == me and p.state == "Z" and p.pid not in keep:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p.pid, os.WNOHANG)
                reaped += 1
    return reaped


# --- the watchdog ------------------------------------------------------------------------------


#: Watchdogs started again after one was lost, before giving up (something kills them).
_WATCHDOG_RESTARTS = 3


class Watchdog:
    """This server's end of its watchdog process (see ``_watchdog``): told each job as it starts,
    and told to forget it once none of its processes is left. If this process dies, the watchdog
    stops the jobs it still knows; if it is stopped, the watchdog pauses them.

    Never blocks: lines the watchdog has not taken yet wait here and go with the next one. If
    the watchdog is gone (killed by hand), a new one is started and told every job again.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._jobs: dict[str, tuple[int | None, int | None]] = {}
        self._pending = bytearray()
        self._restarts = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def jobs(self) -> dict[str, tuple[int | None, int | None]]:
        """Jobs this server started whose processes may still be alive: id -> main pid, start."""
        return dict(self._jobs)

    def start(self) -> bool:
        me = os.getpid()
        read, write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", _watchdog.__file__, str(me), str(start_time(me) or 0)],
                stdin=read,
                stdout=subprocess.DEVNULL,  # fd 1 may still be the MCP stream
                start_new_session=True,  # out of reach of a kill of this server's group
                close_fds=True,
            )
        except OSError as exc:
            os.close(write)
            log.warning("watchdog_unavailable error=%s (jobs will outlive a crash)", exc)
            return False
        finally:
            os.close(read)
        os.set_blocking(write, False)
        self._fd = write
        self._pending.clear()
        for job_id, (pid, start) in self._jobs.items():
            self._send(_started_line(job_id, pid, start))
        log.debug("watchdog_started pid=%d", self._proc.pid)
        return True

    def watch(self, job_id: str, pid: int, start: int | None) -> None:
        self._jobs[job_id] = (pid, start)
        self._send(_started_line(job_id, pid, start))

    def forget(self, job_id: str) -> None:
        if self._jobs.pop(job_id, None) is not None:
            self._send(f"-{job_id}")

    def close(self) -> None:
        """End of file for the watchdog: it stops the jobs it still knows, then exits."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._flush()
            os.close(self._fd)
            self._fd = -1
        self._collect()

    def _send(self, line: str) -> None:
        if self._fd < 0:
            return
        self._pending += line.encode() + b"\n"
        try:
            self._flush()
        except BlockingIOError:
            pass  # the watchdog is behind (stopped?): the rest goes with the next line
        except OSError as exc:  # it is gone: a new one is told every job
            os.close(self._fd)
            self._fd = -1
            self._restarts += 1
            again = self._restarts <= _WATCHDOG_RESTARTS
            log.warning(
                "watchdog_lost pid=%s error=%s restart=%s", self.pid, exc, "yes" if again else "no"
            )
            self._collect()
            if again:
                self.start()

    def _collect(self) -> None:
        """Collect the watchdog's exit status whenever it comes, without waiting for it here."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            threading.Thread(target=proc.wait, name="watchdog-exit", daemon=True).start()

    def _flush(self) -> None:
        while self._pending:
            sent = os.write(self._fd, self._pending)
            del self._pending[:sent]


def _started_line(job_id: str, pid: int | None, start: int | None) -> str:
    return f"+{job_id} {'-' if pid is None else pid} {'-' if start is None else start}"


# --- is a job waiting for input? -----------------------------------------------------------

#: System calls that block reading one descriptor, and those that wait on several (a line
#: editor waits for keys this way), by machine; elsewhere input waits are not detected.
_SYSCALLS: dict[str, tuple[frozenset[int], frozenset[int]]] = {
    # read, pread64, readv, preadv, preadv2 | poll, select, epoll_wait, pselect6, ppoll,
    # epoll_pwait, epoll_pwait2
    "x86_64": (frozenset({0, 17, 19, 295, 327}), frozenset({7, 23, 232, 270, 271, 281, 441})),
    # read, readv, pread64, preadv, preadv2 | epoll_pwait, pselect6, ppoll, epoll_pwait2
    "aarch64": (frozenset({63, 65, 67, 69, 286}), frozenset({22, 72, 73, 441})),
}
_READS, _POLLS = _SYSCALLS.get(platform.machine(), (frozenset(), frozenset()))


@dataclass(frozen=True, slots=True)
class InputState:
    """What the kernel shows about a job's processes right now.

    ``waiting``: one of them is blocked reading the job's terminal or stdin (or, on a terminal
    in non-canonical mode, waiting in poll/select as line editors and REPLs do), and none is
    busy. ``busy``: one of them is running on a CPU or waiting for the disk.
    """

    waiting: bool
    busy: bool


def _task_facts(pid: int, tid: str) -> tuple[str, int | None, int | None]:
    """(state, system call number, first argument) of one thread; unknowns are None."""
    base = _PROC / str(pid) / "task" / tid
    try:
        raw = (base / "stat").read_bytes()
        state = raw[raw.rindex(b")") + 2 :].split()[0].decode()
        fields = (base / "syscall").read_text().split()
    except (OSError, ValueError):
        return "?", None, None
    if len(fields) < 2 or not fields[0].lstrip("-").isdigit():
        return state, None, None  # "running"
    return state, int(fields[0]), int(fields[1], 16)


#: /dev/tty: a process's own controlling terminal, whichever it is.
_DEV_TTY = os.makedev(5, 0)


def _fd_is_input(pid: int, fd: int, pipe: tuple[int, int] | None, tty: int | None) -> bool:
    try:
        st = (_PROC / str(pid) / "fd" / str(fd)).stat()
    except OSError:
        return False
    if tty is not None and stat.S_ISCHR(st.st_mode):
        return st.st_rdev in (tty, _DEV_TTY)
    return pipe is not None and (st.st_dev, st.st_ino) == pipe


def input_state(
    pids: Iterable[int],
    *,
    pipe: tuple[int, int] | None = None,
    tty: int | None = None,
    line_editing: bool = False,
) -> InputState:
    """Whether ``pids`` wait for input (see InputState): on the stdin pipe whose (device, inode)
    is ``pipe``, or on the terminal whose device number is ``tty`` (also through /dev/tty, as
    password prompts read it).

    Reading another process's current system call needs ptrace rights, which a server has over
    its own jobs; threads whose state cannot be read are ignored.
    """
    waiting = busy = False
    for pid in pids:
        try:
            tids = [t.name for t in (_PROC / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            state, nr, arg = _task_facts(pid, tid)
            if state in ("R", "D"):
                busy = True
            elif nr is None:
                continue
            elif nr in _READS and arg is not None:
                waiting = waiting or _fd_is_input(pid, arg, pipe, tty)
            elif nr in _POLLS and line_editing:
                waiting = True
    return InputState(waiting=waiting and not busy, busy=busy)


def group_members(pgid: int) -> set[int]:
    """Live processes of one process group (a terminal's foreground group)."""
    return {p.pid for p in snapshot().values() if p.pgid == pgid and p.state not in ("Z", "X")}


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group, as a terminal does for Ctrl-C; False if it is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True
