"""A real PostgreSQL server for the tests: Debian's server binaries, ``initdb`` + ``pg_ctl`` in a
temporary directory, run as an unprivileged user (PostgreSQL refuses to run as root), listening
only on a Unix socket in that directory. One server per test process (per xdist worker), one
new database per test. The tests that need it skip only where the binaries are not installed;
``.ci/run`` installs them, so in CI they run."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Tests only: durability off (a crash loses the throwaway cluster anyway), so creating a
#: database per test costs milliseconds.
_FAST = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")


def server_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (``/usr/lib/postgresql/N/bin``)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    return Path(found[-1]).parent if found else None


def _as_user() -> tuple[list[str], int | None, int | None]:
    """How to run the server: as ourselves unless root, then as ``nobody``."""
    if os.geteuid() != 0:
        return [], None, None
    user = pwd.getpwnam("nobody")
    return ["runuser", "-u", "nobody", "--"], user.pw_uid, user.pw_gid


@dataclass
class PgServer:
    """A running cluster: ``url(db)`` names one of its databases (``postgresql://`` libpq form)."""

    root: Path
    socket_dir: Path
    bin: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-U", "postgres", "-d", database, "-c", sql],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return out.stdout.strip()

    def new_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)


@contextlib.contextmanager
def running_server(*, durable: bool = False) -> Iterator[PgServer]:
    """Start a throwaway cluster; stop it and delete its files at the end. ``durable``: with
    PostgreSQL's default fsync/commit settings (benchmarks), not the tests' fast ones."""
    bin_dir = server_bin()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql")
    prefix, uid, gid = _as_user()
    # Short path: a Unix socket path must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="mbj-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if uid is not None and gid is not None:
        for path in (root, sock):
            os.chown(path, uid, gid)
    log = root / "server.log"
    try:
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--no-locale", "--no-sync"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
             "-o", " ".join(["-k", str(sock), "-c", "listen_addresses=''",
                             *(() if durable else _FAST),
                             "-c", "max_connections=200"]),
             "start"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        yield PgServer(root, sock, bin_dir)
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                 "stop"],
                capture_output=True, timeout=60,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
