"""The database file: what is at a path, who owns it, whether it can be written, and what an
SQLite or OS error about it means, said plainly (``storage_error``)."""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3
import stat
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from ..errors import StorageError
from .engine import BUSY_TIMEOUT_MS
from .target import pg_error

SQLITE_MAGIC = b"SQLite format 3\0"
#: Where to look for help with a database path, in messages.
DB_HINT = "Pass --db PATH (or set MCP_BACKGROUND_JOB_DB) to the database your MCP server uses."


def side_file(path: Path, suffix: str) -> Path:
    """``jobs.db-wal`` / ``jobs.db-shm`` next to ``jobs.db``."""
    return path.with_name(path.name + suffix)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def make_private_dirs(path: Path) -> None:
    """Create the directory ``path`` and each missing parent with mode 0700, whatever the umask
    (the state directory holds commands and output; under umask 000 ``mkdir -p`` made them
    0777). Directories that already exist are left as they are."""
    missing: list[Path] = []
    at = path
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(0o700)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        directory.chmod(0o700)  # the umask may have taken bits away


def ensure_db_file(path: Path) -> None:
    """Create an empty database file (and its folder) readable by its owner only: for tests and
    tools that migrate it themselves. Servers and commands use ``create_database``."""
    make_private_dirs(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


def no_database(path: Path) -> StorageError:
    """Nothing at ``path``: said instead of creating a database at a mistyped path."""
    return StorageError(
        f"No database at {path}: nothing has been recorded there. {DB_HINT}",
        kind="cannot_open",
    )


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def check_owned(path: Path, what: str) -> None:
    """Refuse ``path`` (the database, its directory or the spool) if another user owns it: a
    server on it would run jobs queued by whoever can write it, as this user."""
    try:
        owner = path.stat().st_uid
    except FileNotFoundError:
        return
    except OSError as error:
        raise storage_error(error, path) or StorageError(str(error)) from error
    if owner != os.geteuid():
        raise StorageError(
            f"The {what} {path} belongs to {_user(owner)}, not to {_user(os.geteuid())} who runs "
            "this: a server does not use another user's database (jobs queued in it would run "
            "as you). Run it as that user, or pass --db PATH (or MCP_BACKGROUND_JOB_DB) to a "
            "database of your own; reading commands (list, show, logs, stats, audit) can still "
            "read it.",
            kind="not_owned",
        )


def is_owned(path: Path) -> bool:
    """True unless the database or its directory belongs to another user."""
    try:
        return all(p.stat().st_uid == os.geteuid() for p in (path, path.parent))
    except OSError:
        return True  # let opening it say what is wrong


def inspect_file(path: Path) -> bool:
    """True if a database file is at ``path``, False if nothing is there. Anything there that
    cannot be a database raises a ``StorageError`` saying so, before SQLite is asked (it would
    turn an empty file into a new database, and take a directory's missing file for a new
    one)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise storage_error(error, path) or StorageError(str(error)) from error
    if stat.S_ISDIR(st.st_mode):
        raise StorageError(
            f"{path} is a directory, not a database file. Pass the file in it, such as "
            f"--db {path / 'jobs.db'}.",
            kind="cannot_open",
        )
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(
            f"{path} is not a regular file (a device, FIFO or socket), so it cannot be a "
            f"database. {DB_HINT}",
            kind="cannot_open",
        )
    wal = _size(side_file(path, "-wal"))
    if st.st_size == 0 and not wal:
        raise StorageError(
            f"{path} is an empty file, not a database (a server creates its database itself, "
            "never from a file someone else made). If it should hold a new history, delete it "
            f"and start the server again. {DB_HINT}",
            kind="not_a_database",
        )
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError as error:
        raise storage_error(error, path) or StorageError(str(error)) from error
    if header[:16] != SQLITE_MAGIC and not (header and SQLITE_MAGIC.startswith(header)):
        raise _not_a_database(path)
    if len(header) < 100:
        raise _damaged(path, f"only {len(header)} bytes are left of it")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The header's page count is valid if the file's change counter matches (SQLite's rule);
    # a file shorter than that lost its end, unless the WAL (not checkpointed yet) holds it.
    if header[24:28] == header[92:96] and pages * page_size > st.st_size and not wal:
        raise _damaged(
            path, f"it is truncated: its header says {pages * page_size} bytes, it has {st.st_size}"
        )
    return True


def check_for_writing(path: Path) -> bool:
    """``inspect_file`` for a server or a command that changes the database: also refuses
    another user's database or directory, and one this process cannot write. True if the
    database exists."""
    exists = inspect_file(path)
    if path.parent.is_dir():
        check_owned(path.parent, "database directory")
    if exists:
        check_owned(path, "database")
        if not writable(path):
            raise read_only(path)
    return exists


def writable(path: Path) -> bool:
    """Whether this process can write the database: the file, and its -wal and -shm files (or
    the directory, to create them). A read-only mount says no, even to root."""
    if not os.access(path, os.W_OK):
        return False
    sides = [side_file(path, s) for s in ("-wal", "-shm")]
    if any(p.exists() and not os.access(p, os.W_OK) for p in sides):
        return False
    return all(p.exists() for p in sides) or os.access(path.parent, os.W_OK | os.X_OK)


# --- SQLite and OS errors, said plainly ---------------------------------------------------------

#: SQLite's primary result codes (sqlite3.h) that are about the database file itself.
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26


def is_locked(error: BaseException) -> bool:
    """True for SQLite's "database is locked" (SQLITE_BUSY: another connection holds the
    lock). Not SQLITE_LOCKED, "database table is locked": a conflict within one connection."""
    if isinstance(error, DBAPIError):
        error = error.orig  # type: ignore[assignment]
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF == _SQLITE_BUSY


def storage_error(error: BaseException, path: Path | str) -> StorageError | None:
    """The one place that turns an SQLite or OS error about the database at ``path`` into a
    ``StorageError`` saying what is wrong and what to do; None for any other error (a bug, a
    domain error), which the caller passes on as it is. An ``OSError`` about another file (a
    spool file) is described with that file's name."""
    if isinstance(error, StorageError):
        return error
    if isinstance(path, str):  # a PostgreSQL URL
        return pg_error(error, path)
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return None if code is None else _sqlite_error(code & 0xFF, error, path)
    if isinstance(error, OSError):
        return _os_error(error, path)
    return None


def _sqlite_error(code: int, error: sqlite3.Error, path: Path) -> StorageError | None:
    if code == _SQLITE_BUSY:
        return database_locked(path)
    if code == _SQLITE_FULL:
        return disk_full(path)
    if code == _SQLITE_READONLY:
        return read_only(path)
    if code == _SQLITE_NOTADB:
        return _not_a_database(path)
    if code == _SQLITE_CORRUPT:
        return _damaged(path, str(error))
    if code == _SQLITE_IOERR and _free_bytes(path) == 0:
        return disk_full(path)
    if code in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_PERM):
        if code == _SQLITE_CANTOPEN:
            try:
                inspect_file(path)
            except StorageError as clearer:
                return clearer
            if path.exists() and not writable(path):
                return read_only(path)
            if not path.parent.is_dir():
                return StorageError(
                    f"Cannot open the database {path}: the directory {path.parent} does not "
                    f"exist. {DB_HINT}",
                    kind="cannot_open",
                )
        return StorageError(
            f"Cannot use the database {path}: {error} (SQLite {error.sqlite_errorname}). Check "
            "the file and its directory (permissions, the file system), then retry.",
            kind="cannot_open",
        )
    return None


def _os_error(error: OSError, path: Path) -> StorageError:
    where = Path(error.filename) if error.filename else path
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(where)
    if error.errno == errno.EROFS:
        return read_only(where)
    if error.errno == errno.ENOTDIR:
        return StorageError(
            f"Cannot use {where}: a part of that path is a file, not a directory. {DB_HINT}",
            kind="cannot_open",
        )
    if error.errno in (errno.EACCES, errno.EPERM):
        return StorageError(
            f"Permission denied on {where} for {_user(os.geteuid())}: give this user access, or "
            f"use another path. {DB_HINT}",
            kind="cannot_open",
        )
    return StorageError(f"Cannot use {where}: {error.strerror or error}.", kind="cannot_open")


def _not_a_database(path: Path) -> StorageError:
    return StorageError(
        f"{path} is not an SQLite database (a text file, or an encrypted one?). {DB_HINT} "
        "If this file is in the way, move it.",
        kind="not_a_database",
    )


def _damaged(path: Path, why: str) -> StorageError:
    return StorageError(
        f"The database {path} is damaged ({why}). Restore it from a backup, or move it (with "
        f"its -wal and -shm files) away to start a new history; `sqlite3 {path} .recover` may "
        "rescue what is left.",
        kind="damaged",
    )


def _free_bytes(path: Path) -> int | None:
    for at in (path, *path.parents):
        try:
            st = os.statvfs(at)
        except OSError:
            continue
        return st.f_bavail * st.f_frsize
    return None


def disk_full(path: Path) -> StorageError:
    """The disk (or the user's quota) holding ``path`` is full."""
    free = _free_bytes(path)
    left = "" if free is None else f" ({free // 1024} KiB left)"
    return StorageError(
        f"Disk full: no space left for {path}{left}. Free some space on that file system (or "
        "raise the quota), then retry; nothing already stored is lost.",
        kind="disk_full",
    )


def read_only(path: Path) -> StorageError:
    """The database cannot be written by this process; says why."""
    try:
        mounted_ro = bool(os.statvfs(path if path.exists() else path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        mounted_ro = False
    if mounted_ro:
        why = "its file system is mounted read-only"
    elif path.exists() and not os.access(path, os.W_OK):
        why = f"{_user(os.geteuid())} may not write the file"
    else:
        why = f"{_user(os.geteuid())} may not create its -wal and -shm files in {path.parent}"
    return StorageError(
        f"The database {path} is read-only here ({why}). Reading commands (list, show, logs, "
        "stats, audit) still work; a server and commands that change it (run, kill, db) need "
        "to write it: make it writable, or copy it (with its -wal file) somewhere writable.",
        kind="read_only",
    )


def database_locked(path: Path) -> StorageError:
    """Another program holds the database's write lock (named, if /proc/locks shows it)."""
    holders = lock_holders(path)
    who = ", ".join(f"pid {pid} ({name})" for pid, name in holders)
    return StorageError(
        f"The database {path} is locked by another program{f' ({who})' if who else ''}: it "
        f"held the write lock for longer than this waits ({BUSY_TIMEOUT_MS // 1000} s). Let "
        "that program finish, or end its transaction (a sqlite3 shell left inside BEGIN holds "
        "the lock until COMMIT or ROLLBACK), then retry.",
        kind="locked",
    )


def lock_holders(path: Path) -> list[tuple[int, str]]:
    """Other processes holding a write lock on the database or its -shm file, as (pid, name),
    read from ``/proc/locks``. SQLite's write lock is a POSIX lock: in WAL mode on byte 120 of
    the -shm file, in rollback mode on the database file."""
    files = set()
    for p in (path, side_file(path, "-shm")):
        try:
            st = p.stat()
        except OSError:
            continue
        files.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids: list[int] = []
    for line in lines:
        # "1: POSIX  ADVISORY  WRITE 15677 fe:00:2146602 120 120" ("->" marks a waiter)
        fields = line.split()
        if len(fields) < 6 or "->" in fields or fields[3] != "WRITE":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if key in files and pid > 0 and pid != os.getpid() and pid not in pids:
            pids.append(pid)
    return [(pid, _process_name(pid)) for pid in pids]


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
