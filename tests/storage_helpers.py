"""Real storage faults for tests: a write lock held by a ``sqlite3`` process, small tmpfs mounts
(full, or remounted read-only), files that are not databases. Mounting needs root, as the
machines these tests run on give."""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

#: Kinds of files that cannot be the database, each with the phrase its error must contain.
BAD_FILES = {
    "text": "is not an SQLite database",
    "directory": "is a directory",
    "empty": "is an empty file",
    "truncated": "is damaged (it is truncated",
    "header-only": "is damaged",
}


def make_bad_file(kind: str, path: Path, good: Path | None = None) -> Path:
    """Put a file of ``kind`` (see ``BAD_FILES``) at ``path``; ``good`` is a real database to
    cut for the truncated kinds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "text":
        path.write_text("these are my notes, not a database\n" * 20)
    elif kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        assert good is not None, "truncated kinds need a real database to cut"
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2] if kind == "truncated" else data[:40])
    return path


def is_write_locked(db: Path) -> bool:
    """True if another connection holds the database's write lock (probed, never waited)."""
    con = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return True
    finally:
        con.close()


@contextlib.contextmanager
def sqlite3_holding_lock(db: Path, *, write: bool = True) -> Iterator[subprocess.Popen[str]]:
    """A real ``sqlite3`` shell inside ``BEGIN IMMEDIATE`` (``write``) or inside a read
    transaction, as a person at a prompt would leave it, until the block ends."""
    shell = subprocess.Popen(
        ["sqlite3", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert shell.stdin is not None and shell.stdout is not None
    # The shell waits for a lock a server holds (.timeout), then says when it holds its own:
    # seeing the file write-locked is not enough, the lock may still be a server's.
    if write:
        shell.stdin.write(
            ".timeout 30000\nBEGIN IMMEDIATE;\nUPDATE jobs SET priority = priority;\n"
            "SELECT 'held';\n"
        )
    else:
        shell.stdin.write(".timeout 30000\nBEGIN;\nSELECT count(*) FROM jobs;\nSELECT 'held';\n")
    shell.stdin.flush()
    try:
        ready, _, _ = select.select([shell.stdout], [], [], 60)
        assert ready, "sqlite3 did not take the lock within 60 s"
        while (line := shell.stdout.readline()) and line.strip() != "held":
            pass
        assert line.strip() == "held", "sqlite3 exited before it took the lock"
        if write:
            assert is_write_locked(db), "sqlite3 says it holds the write lock, the file says not"
        yield shell
    finally:
        with contextlib.suppress(BrokenPipeError, OSError):
            shell.stdin.write("ROLLBACK;\n.quit\n")
            shell.stdin.close()
        try:
            shell.wait(timeout=10)
        except subprocess.TimeoutExpired:
            shell.kill()
            shell.wait()
        shell.stdout.close()


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted at ``where`` (unmounted at the end)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def fill_disk(where: Path) -> Path:
    """Write a file in ``where`` until its file system has no space left."""
    filler = where / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(block)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 512)
    assert os.statvfs(where).f_bavail == 0
    return filler


def leave_wal_content(db: Path, sql: str) -> None:
    """Run ``sql`` in a process that dies without closing the database: it stays in the -wal
    file (not checkpointed), with the -shm next to it, as after a crash."""
    code = (
        "import os, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('PRAGMA wal_autocheckpoint=0')\n"
        "con.executescript(sys.argv[2])\n"
        "os._exit(0)\n"
    )
    subprocess.run(["python3", "-c", code, str(db), sql], check=True, timeout=60)
    assert db.with_name(db.name + "-wal").stat().st_size > 0
