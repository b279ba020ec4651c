"""Linux process facts from ``/proc``, and signalling a job's whole process tree.

Used by the runner only. A job's tree is every process that is, or descends from, its main
process, shares its session or group, or carries its ``MCP_BACKGROUND_JOB_ID`` marker in its
environment; the marker finds children that left with ``setsid``/``nohup`` and were re-parented.
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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "MCP_BACKGROUND_JOB_ID"
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


def _has_marker(pid: int, needle: bytes) -> bool:
    try:
        return needle in (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False


def job_tree(job_id: str, main_pid: int | None, main_start: int | None) -> set[int]:
    """Live processes that belong to the job (not zombies, never this process)."""
    procs = snapshot()
    me = os.getpid()
    members: set[int] = set()
    main = procs.get(main_pid) if main_pid is not None else None
    if main is not None and (main_start is None or main.start == main_start):
        members.add(main.pid)
        members |= {p.pid for p in procs.values() if main.pid in (p.sid, p.pgid)}
    needle = f"{MARKER}={job_id}\0".encode()
    members |= {
        p.pid for p in procs.values() if p.pid not in members and _has_marker(p.pid, needle)
    }
    # Descendants of members, including ones that cleared their environment.
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    members.discard(me)
    return {pid for pid in members if procs[pid].state not in ("Z", "X")}


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
