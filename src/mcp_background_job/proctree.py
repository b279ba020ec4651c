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
import signal
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
