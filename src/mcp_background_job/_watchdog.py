"""Per-server watchdog: stops a server's jobs when the server is gone, pauses them while it is
stopped. Also the functions that find and stop job process trees (``proctree`` uses them), so the
server and its watchdog stop a tree the same way.

Run by the server as ``python -I -S _watchdog.py SERVER_PID SERVER_START`` in a session of its
own (a process-group kill of the server, as MCP clients send, does not reach it), with its stdin a
pipe from the server. Stdlib only, and it imports nothing from the package: ``-I -S`` keeps its
start at ~10 ms of CPU and its memory at ~10 MB. The server writes one line per change:

    +JOB_ID PID START    a job started (its main process: pid and start time, ``-`` if unknown)
    -JOB_ID              the job ended and none of its processes is left (or none was found)

End of file means the server is gone (it exited, or was killed: its descriptors closed with it).
The watchdog then stops the trees of the jobs it still knows (SIGSTOP until nothing new appears,
then SIGKILL until nothing is left) and exits. A job that is not detached does not outlive its
server: without a server nothing stores its output, and its spool file would grow without bound.
A server that shuts down cleanly stops its jobs itself and forgets them here first, so the
watchdog then has nothing to do.

While the server is stopped (``SIGSTOP``, Ctrl-Z: state ``T`` twice in a row, half a second
apart), its jobs are paused with SIGSTOP as well, for the same reason, and continued when the
server runs again. A traced server (a debugger, py-spy: state ``t``) does not pause them.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping

MARKER = b"MCP_BACKGROUND_JOB_ID="
_POLL_S = 0.5
_DEAD = ("Z", "X")

#: pid -> (state, ppid, pgid, sid, start): fields 3, 4, 5, 6 and 22 of /proc/PID/stat.
Stat = tuple[str, int, int, int, int]


def read_stat(pid: int) -> Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: parse after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])


def stats() -> dict[int, Stat]:
    procs: dict[int, Stat] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                st = read_stat(int(entry.name))
                if st is not None:
                    procs[int(entry.name)] = st
    return procs


def marker(pid: int) -> str | None:
    """The job id in the process's environment, if it carries one (and may be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    if env.startswith(MARKER):
        start = len(MARKER)
    else:
        at = env.find(b"\0" + MARKER)
        if at < 0:
            return None
        start = at + 1 + len(MARKER)
    end = env.find(b"\0", start)
    return env[start : end if end >= 0 else len(env)].decode("ascii", "replace")


def find_trees(
    jobs: Mapping[str, tuple[int | None, int | None]], *, exclude: Iterable[int] = ()
) -> dict[str, set[int]]:
    """Live processes of each job (zombies are dead): its main process while that identity
    (pid, start time) still runs, with the members of its session and process group; every
    process carrying the job's marker; and the descendants of all of those, including ones
    that cleared their environment. One pass over /proc for all the jobs. ``exclude``: pids
    never returned (besides this process)."""
    procs = stats()
    skip = {os.getpid(), *exclude}
    owner: dict[int, str] = {}
    for job_id, (pid, start) in jobs.items():
        main = procs.get(pid or 0)
        if pid is None or main is None or main[0] in _DEAD or start not in (None, main[4]):
            continue
        owner[pid] = job_id
        for p, st in procs.items():
            if pid in (st[2], st[3]):
                owner.setdefault(p, job_id)
    wanted = set(jobs)
    for p in procs:
        if p not in owner and p not in skip:
            found = marker(p)
            if found is not None and found in wanted:
                owner[p] = found
    children: dict[int, list[int]] = {}
    for p, st in procs.items():
        children.setdefault(st[1], []).append(p)
    todo = list(owner)
    while todo:
        parent = todo.pop()
        for child in children.get(parent, ()):
            if child not in owner:
                owner[child] = owner[parent]
                todo.append(child)
    trees: dict[str, set[int]] = {}
    for p, job_id in owner.items():
        if p not in skip and procs[p][0] not in _DEAD:
            trees.setdefault(job_id, set()).add(p)
    return trees


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            continue


def freeze(find: Callable[[], set[int]], deadline: float) -> set[int]:
    """SIGSTOP the processes ``find`` returns until a pass finds none not stopped yet; returns
    every pid stopped. A stopped process cannot fork (a fork that a stop interrupts is not
    completed), so this ends even for a tree that forks faster than it can be killed."""
    stopped: set[int] = set()
    while True:
        new = find() - stopped
        if not new:
            return stopped
        signal_all(new, signal.SIGSTOP)
        stopped |= new
        if time.monotonic() >= deadline:
            return stopped


def kill_tree(find: Callable[[], set[int]], timeout: float) -> set[int]:
    """Stop everything ``find`` returns, then SIGKILL it until nothing is left (or ``timeout``
    has passed); returns what is still alive (empty on success)."""
    deadline = time.monotonic() + timeout
    freeze(find, deadline)
    while True:
        pids = find()
        if not pids:
            return pids
        signal_all(pids, signal.SIGKILL)
        if time.monotonic() >= deadline:
            return find()
        time.sleep(0.01)


# --- the watchdog process -----------------------------------------------------------------------


def _log(event: str) -> None:
    sys.stderr.write(f"mcp-background-job watchdog[{os.getpid()}]: {event}\n")
    sys.stderr.flush()


def _server_state(pid: int, start: int) -> str | None:
    """The server's state letter, or None if it is gone (or its pid names another process;
    ``start`` 0: not known)."""
    st = read_stat(pid)
    if st is None or st[0] in _DEAD or start not in (0, st[4]):
        return None
    return st[0]


def _apply(line: str, jobs: dict[str, tuple[int | None, int | None]]) -> None:
    parts = line.split()
    if not parts:
        return
    head = parts[0]
    if head.startswith("+") and len(parts) == 3:
        pid, start = (int(p) if p.isdigit() else None for p in parts[1:])
        jobs[head[1:]] = (pid, start)
    elif head.startswith("-"):
        jobs.pop(head[1:], None)


def watch(server_pid: int, server_start: int) -> int:
    jobs: dict[str, tuple[int | None, int | None]] = {}
    paused: set[int] = set()
    stopped_polls = 0
    pending = b""

    def tree() -> set[int]:
        return set().union(*find_trees(jobs).values())

    while True:
        ready, _, _ = select.select([0], [], [], _POLL_S)
        if ready:
            data = os.read(0, 65536)
            if not data:
                break  # the server is gone
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _apply(line.decode("ascii", "replace"), jobs)
        state = _server_state(server_pid, server_start)
        if state is None:
            break
        stopped_polls = stopped_polls + 1 if state == "T" else 0
        if stopped_polls >= 2 and not paused and jobs:
            # Stopped processes of the jobs (a job's own Ctrl-Z) stay stopped afterwards.
            before = {p for p in tree() if (read_stat(p) or ("?",))[0] == "T"}
            paused = freeze(tree, time.monotonic() + 10.0) - before
            if paused:
                _log(f"watchdog_jobs_paused jobs={len(jobs)} pids={len(paused)} (server stopped)")
        elif stopped_polls == 0 and paused:
            signal_all(paused, signal.SIGCONT)
            _log(f"watchdog_jobs_continued pids={len(paused)}")
            paused = set()
    if jobs:
        left = kill_tree(tree, 30.0)
        _log(f"watchdog_jobs_stopped jobs={len(jobs)} left={len(left)} (the server is gone)")
    return 0


def main(argv: list[str]) -> int:
    # Its own session already (the server starts it so); a terminal's signals are not for it.
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        server_pid, server_start = int(argv[0]), int(argv[1])
    except (IndexError, ValueError):
        _log("usage: _watchdog.py SERVER_PID SERVER_START")
        return 2
    return watch(server_pid, server_start)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
