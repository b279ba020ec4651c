"""The keeper of a detached job: a few lines of POSIX sh (about 1 MB of memory, not a Python
interpreter) in a session of its own, the parent of the job's process. It waits for the job and
writes the job's end file (``capture``'s format: true exit code and end time) into the spool
directory, so the end survives any server; whichever server runs then records it.

Its stdin is a FIFO in the spool directory (``<id>.stdin``) that the keeper also holds open for
writing, so the job sees no end of file while no server holds its input; a later server reopens
the FIFO, and end of input is the server closing its end and sending the keeper ``SIGUSR1``
(it closes its own). Stop signals aimed at the tree or the process group (TERM, INT, HUP, QUIT,
TSTP) are caught, not ignored: the job gets their default actions (caught handlers are reset at
exec), the keeper stays to record the end. Servers leave the keeper out of the trees they kill
(``Trees.stop``); it exits by itself once the job's main process has.

The exit status comes from the shell's ``wait``: 128+N is taken as "killed by signal N", as
shells report it (a job that calls ``exit 130`` itself is recorded as killed by SIGINT).
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

#: $1: the end file's prefix (``<spool>/<id>``), $2: the FIFO, the rest: the job's argv.
SCRIPT = r"""
end=$1 fifo=$2
shift 2
exec 3<>"$fifo"
trap 'exec 3>&-' USR1
trap ':' INT TERM HUP QUIT TSTP
"$@" <"$fifo" 3>&- &
pid=$!
while :; do
  wait "$pid"
  rc=$?
  kill -0 "$pid" 2>/dev/null || break
done
if [ "$rc" -gt 128 ]; then rc=-$((rc - 128)); fi
us=$(date +%s%6N)
: >"$end.end.$rc.$us"
rm -f "$fifo"
"""

#: Argv[0] of the keeper (``ps`` shows it).
NAME = "mcp-background-job-keeper"


def fifo_path(spool_dir: Path, job_id: str) -> Path:
    return spool_dir / f"{job_id}.stdin"


def make_fifo(spool_dir: Path, job_id: str) -> Path:
    """Create the job's stdin FIFO (0600); an existing one is an error (a job has one run)."""
    path = fifo_path(spool_dir, job_id)
    os.mkfifo(path, 0o600)
    return path


def argv(spool_dir: Path, job_id: str, job_argv: list[str]) -> list[str]:
    """The keeper's command line around the job's own (``/bin/sh``: POSIX, small)."""
    fifo = str(fifo_path(spool_dir, job_id))
    return ["/bin/sh", "-c", SCRIPT, NAME, str(spool_dir / job_id), fifo, *job_argv]


def open_input(spool_dir: Path, job_id: str) -> int:
    """A descriptor to write the job's input through (read-write: it never blocks, and it works
    before or after the keeper opened the FIFO)."""
    return os.open(fifo_path(spool_dir, job_id), os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


def end_input(keeper_pid: int) -> None:
    """Ask the keeper to close its end of the FIFO: the job sees end of file once the server
    has closed its own."""
    with contextlib.suppress(ProcessLookupError):  # it exited: the job has ended
        os.kill(keeper_pid, signal.SIGUSR1)
