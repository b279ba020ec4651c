"""Pseudo-terminals for interactive jobs; used by the runner only.

Import rule: nothing from the package (layer ``processes`` in ``tests/test_layers.py``).

A PTY job's stdin, stdout and stderr are the slave side of a new pseudo-terminal, which is also
its controlling terminal, so Ctrl-C reaches its foreground processes and programs prompt,
colour and line-buffer as they do in a terminal. The controlling terminal must be set in the
child between ``setsid()`` and ``exec``; ``preexec_fn`` can deadlock in this threaded process,
so a tiny exec helper does it: ``python -I -S -c HELPER SHELL -c COMMAND`` runs ``setsid()``,
``ioctl(0, TIOCSCTTY)`` and ``execvp`` — the job's main process keeps the helper's pid.
(Measured: ~25 ms to the first output, ~12 ms more than util-linux ``setsid -c``, which is not
on every system and forks when started as a process-group leader.)

The shell runs with job control (``-m``) when it is a POSIX shell that has it, as a shell at a
terminal does: the program in the foreground gets its own process group, so Ctrl-C interrupts
it and not the shell running the command line. (Measured with dash: without ``-m``, a REPL that
handled Ctrl-C and later exited 0 still made ``sh -c`` die of SIGINT; a loop stops either way.)

The server reads the master and appends the raw bytes to the job's stdout spool file, where the
ingester stores them like any other output (``\\r\\n`` line ends and escape sequences as the
terminal produced them). The server also keeps the slave open, to ask the kernel how much of
the input it wrote the job has not read yet (``TIOCINQ``).
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import logging
import os
import struct
import sys
import termios
from pathlib import Path

log = logging.getLogger(__name__)

_HELPER = (
    "import os,sys,fcntl,termios\n"
    "try:\n"
    " os.setsid();fcntl.ioctl(0,termios.TIOCSCTTY,0);os.execvp(sys.argv[1],sys.argv[1:])\n"
    "except OSError as e:\n"
    " sys.stderr.write(f'cannot start {sys.argv[1]}: {e}\\n');sys.exit(127)\n"
)
_READ_SIZE = 65536
#: Bytes a terminal sends for "end of input" (VEOF, Ctrl-D).
EOF_BYTES = b"\x04"


#: Shells known to take ``-m`` (job control) with ``-c``.
_JOB_CONTROL_SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "ash", "yash"})


def exec_argv(shell: str, command: str) -> list[str]:
    """``SHELL [-m] -c COMMAND`` run in a new session whose controlling terminal is the
    child's stdin."""
    flags = ["-m"] if Path(shell).name in _JOB_CONTROL_SHELLS else []
    return [sys.executable, "-I", "-S", "-c", _HELPER, shell, *flags, "-c", command]


class Terminal:
    """One pseudo-terminal: the master the server reads and writes, and the slave the job gets."""

    def __init__(self, rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()  # both close-on-exec
        try:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.set_blocking(self.master, False)
            self.device = os.fstat(self.slave).st_rdev
        except OSError:
            self.close()
            raise
        self._spool: int | None = None
        self.eof = False
        self.closed = False

    def attach(self, spool_fd: int) -> None:
        """Append what the job writes to ``spool_fd`` (the terminal takes it over)."""
        self._spool = spool_fd

    def pump(self) -> bool:
        """Move everything readable from the master to the spool file, without blocking.
        Returns False at end of file (EIO: no process has the slave open any more)."""
        while not self.eof and not self.closed:
            try:
                data = os.read(self.master, _READ_SIZE)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno != errno.EIO:
                    log.warning("pty_read_failed errno=%d", exc.errno)
                self.eof = True
                break
            if not data:
                self.eof = True
                break
            self._append(data)
        return False

    def _append(self, data: bytes) -> None:
        if self._spool is None:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._spool, view) :]
            except OSError as exc:  # a full disk must not stop the terminal being read
                log.warning("pty_spool_write_failed errno=%d", exc.errno)
                return

    def pending_input(self) -> int:
        """Bytes written to the job that it has not read yet (whole lines in canonical mode)."""
        self._check_open()
        return unread_bytes(self.slave)

    def line_editing(self) -> bool:
        """True if the program switched canonical mode off (a line editor or full-screen
        program reading keys itself, e.g. readline, node, vim)."""
        self._check_open()
        return not termios.tcgetattr(self.master)[3] & termios.ICANON

    def foreground_group(self) -> int | None:
        self._check_open()
        try:
            return os.tcgetpgrp(self.master)
        except OSError:
            return None

    def _check_open(self) -> None:
        # After close the descriptor numbers may already name other files.
        if self.closed:
            raise OSError(errno.EBADF, "the terminal is closed")

    def close(self) -> None:
        """Close both sides and the spool descriptor; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.master, self.slave, self._spool):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._spool = None


def fd_identity(fd: int) -> tuple[int, int]:
    """(device, inode) of an open file: what ``proctree`` compares a job's descriptors with."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def unread_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (either end) or terminal for its reader (``FIONREAD``)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]
