"""Isolation and resource limits for jobs: the argv wrapper for each mode, the environment a job
gets, and detecting at start-up which mode works on this machine.

Import rule: layer ``processes`` in ``tests/test_layers.py``, beside ``cgroup`` and ``capture``:
``config`` and below; never the runner, ``app`` or the MCP layer.

Modes (``Settings.isolation``), each including the previous one's resource limits:

- ``none``: no limits at all (the job still gets an explicit environment, no inherited fds);
- ``rlimits``: per-process resource limits, set by util-linux ``prlimit`` or the ``_sandbox``
  exec helper (never ``preexec_fn``: it can deadlock a threaded server);
- ``landlock``: the helper also confines the job with Landlock: its cwd, the temp directories,
  the cache directories and ``isolation_writable`` writable; everything else read-only except
  the server's state (database, WAL, spool: hidden) and device files other than /dev/null & co.
  (closed); signals and abstract unix sockets scoped to the job (ABI >= 6); a seccomp filter
  refusing new unix sockets; no capabilities; outgoing TCP refused unless ``isolation_network``;
- ``bwrap``: bubblewrap: read-only root, the cwd and the cache/writable paths writable, a
  private /tmp and /dev, the state mounted over, PID/IPC/UTS namespaces, no network unless
  ``isolation_network``, no capabilities, the same seccomp filter;
- ``auto`` (the default): ``landlock`` where the kernel has it, else ``rlimits``, with one log
  line saying what is missing.

Where this server may make cgroups (``cgroup.py``), every mode but ``none`` also puts each job in
a group of its own with a memory and a process limit for the whole job.

An explicitly chosen mode that cannot work here stops the server with the reason and a fix
(``IsolationError``): never a silent downgrade. The probe runs a trivial job the way real ones will.
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import cgroup
from .capture import spool_paths
from .config import Settings
from .errors import InvalidRequest, IsolationError

log = logging.getLogger(__name__)

HELPER = Path(__file__).with_name("_sandbox.py")
# Imported, not run as a script: a script is compiled on every run, a module comes from its
# cached bytecode (~2 ms of the helper's CPU per job).
_BOOT = "import sys;sys.path.append({!r});from _sandbox import main;sys.exit(main())"
#: Writable by sandboxed jobs besides their cwd (compilers and test runners need a temp dir).
TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108
_LANDLOCK_DEV = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                 "/dev/tty", "/dev/pts", "/dev/ptmx")  # fmt: skip
_DEV_SHM = "/dev/shm"  # noqa: S108 (a temp directory jobs may use as their cwd)
#: Never a job's writable cwd: the whole file system, or the kernel's (raw disks, sysctls).
_SYSTEM_DIRS = ("/dev", "/proc", "/sys")
#: The database's companions that SQLite keeps beside it.
_DB_SUFFIXES = ("", "-wal", "-shm", "-journal")
#: The prlimit path joins the job's cgroups with a few lines of sh (~1 ms) instead of Python.
_ENTER = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 126; shift; done; shift; exec "$@"'
_SHELL = "/bin/sh"
#: The value stored in ``jobs.env`` for a variable whose value is secret (never stored). A NUL
#: cannot be in a real value, so this never stands for one.
WITHHELD = "\0withheld"
_SECCOMP_ARCHES = ("x86_64", "aarch64")


def helper_argv() -> list[str]:
    """``python -I -S -c BOOT``: the exec helper, to be followed by its options."""
    return [sys.executable, "-I", "-S", "-c", _BOOT.format(str(HELPER.parent))]


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


class SecretValues:
    """Values of jobs' secret-named variables, kept in this server's memory only (``jobs.env``
    holds ``WITHHELD`` for them): a job queued here gets them when it starts, and its output is
    masked for them. The most recent ``LIMIT`` jobs are kept."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, dict[str, str]] = OrderedDict()

    def put(self, job_id: str, values: Mapping[str, str]) -> None:
        if not values:
            return
        self._jobs[job_id] = dict(values)
        self._jobs.move_to_end(job_id)
        while len(self._jobs) > self.LIMIT:
            self._jobs.popitem(last=False)

    def get(self, job_id: str) -> Mapping[str, str]:
        return self._jobs.get(job_id, {})


@dataclass(frozen=True, slots=True)
class Isolation:
    """How this server wraps jobs; built once at start-up by ``detect``."""

    mode: str
    network: bool
    writable: tuple[str, ...]
    rlimits: tuple[tuple[str, int], ...]
    env_allow: tuple[str, ...]
    bwrap: str | None = None
    landlock_abi: int = 0
    #: util-linux ``prlimit``: sets limits and execs in ~1 ms, where the Python helper costs
    #: ~10 ms of CPU per job; None: use the helper.
    prlimit: str | None = None
    #: The setting (``auto`` or the mode itself).
    requested: str | None = None
    temp: tuple[str, ...] = TEMP_DIRS
    caches: tuple[str, ...] = ()
    #: The server's state (database, its WAL/SHM/journal, the spool directory), hidden from
    #: jobs; empty when not hidden (a mode without a sandbox, or state inside a writable place).
    hidden: tuple[str, ...] = ()
    #: Where the job's own spool files are (a landlock job may reopen them: ``> /dev/stderr``).
    spool_dir: str | None = None
    unix_sockets: bool = True
    #: Landlock ABI >= 6: signals and abstract unix sockets stay inside the job.
    scoped: bool = False
    cgroups: cgroup.JobCgroups | None = None
    secrets: SecretValues = field(default_factory=SecretValues, compare=False, repr=False)

    def describe(self) -> dict[str, object]:
        sandboxed = self.mode in ("landlock", "bwrap")
        return {
            "isolation": self.mode,
            "isolation_requested": self.requested or self.mode,
            "network": self.network if sandboxed else True,
            "writable": list(self.writable),
            "cache_dirs": list(self.caches) if sandboxed else [],
            "state_hidden": bool(self.hidden),
            "unix_sockets": self.unix_sockets if sandboxed else True,
            "scoped": self.scoped,
            "cgroup": self.cgroups.describe() if self.cgroups else None,
            "rlimits": dict(self.rlimits),
            "env_allow": list(self.env_allow),
            "landlock_abi": self.landlock_abi or None,
        }

    def argv(self, shell: str, command: str, cwd: str, job_id: str | None = None) -> list[str]:
        """The argv that runs ``shell -c command`` in ``cwd`` under this isolation."""
        return self.wrap([shell, "-c", command], cwd, job_id)

    def wrap(self, inner: list[str], cwd: str, job_id: str | None = None) -> list[str]:
        """The argv that runs ``inner`` in ``cwd`` under this isolation. With ``job_id``, the
        job's cgroups are made now (OSError if they cannot be)."""
        if self.mode == "none":
            return inner
        why = self.check_cwd(cwd)
        if why is not None:  # fail closed, e.g. for a queued job claimed from the database
            return [*helper_argv(), "--refuse", why, "--", *inner]
        joins = self.cgroups.prepare(job_id) if self.cgroups and job_id else []
        if self.mode == "landlock":
            opts = [*self._limit_opts(joins), "--ro", "/", "--hide", "/dev"]
            for path in self.hidden:
                opts += ["--hide", path]
            workspace = [cwd] if self.writable_cwd(cwd) else []
            for path in (*workspace, *self.temp, *self.caches, *self.writable, *self._own(job_id)):
                opts += ["--rw", path]
            for path in _LANDLOCK_DEV:
                opts += ["--dev", path]
            opts += [] if self.network else ["--deny-tcp"]
            opts += ["--scope"] if self.scoped else []
            opts += [] if self.unix_sockets else ["--deny-unix"]
            return [*helper_argv(), *opts, "--drop-caps", "--", *inner]
        if self.mode == "bwrap":
            assert self.bwrap is not None
            box = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                   "--tmpfs", "/tmp"]  # fmt: skip  # noqa: S108
            if self.writable_cwd(cwd):
                box += ["--bind", cwd, cwd]
            for path in (*self._bwrap_temp(), *self.caches, *self.writable):
                box += ["--bind-try", path, path]
            for path in self.hidden:  # after the binds: hidden even inside a writable one
                if Path(path).is_dir():
                    box += ["--tmpfs", path]
                elif os.path.lexists(path):
                    box += ["--ro-bind", "/dev/null", path]
            box += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session",
                    "--cap-drop", "ALL", "--chdir", cwd]  # fmt: skip
            box += [] if self.network else ["--unshare-net"]
            # Capabilities are dropped by bwrap itself (it needs them to build the sandbox).
            deny = [] if self.unix_sockets else ["--deny-unix"]
            return [*self._limits(joins, deny), *box, "--", *inner]
        return [*self._limits(joins, []), *inner]

    def _limit_opts(self, joins: list[str]) -> list[str]:
        opts = []
        for path in joins:
            opts += ["--cgroup", path]
        for name, value in self.rlimits:
            opts += ["--rlimit", f"{name}={value}"]
        return opts

    def _limits(self, joins: list[str], helper_opts: list[str]) -> list[str]:
        """The argv prefix that joins the cgroups, sets the limits and execs what follows."""
        if self.prlimit is None or helper_opts:
            return [*helper_argv(), *self._limit_opts(joins), *helper_opts, "--"]
        pre = [self.prlimit, *(f"--{name}={value}" for name, value in _clamped(self.rlimits))]
        if joins:
            return [_SHELL, "-c", _ENTER, "mcp-background-job-enter", *joins, "--", *pre, "--"]
        return [*pre, "--"]

    def _own(self, job_id: str | None) -> list[str]:
        if self.spool_dir is None or job_id is None:
            return []
        return [str(p) for p in spool_paths(Path(self.spool_dir), job_id).values()]

    def _bwrap_temp(self) -> list[str]:
        """bwrap has a private /tmp and /dev/shm; a TMPDIR elsewhere is bound in."""
        return [p for p in self.temp if p not in TEMP_DIRS]

    def environment(self, caller: Mapping[str, str], marker: tuple[str, str]) -> dict[str, str]:
        """The server's allowed variables, then the caller's, then the job marker. Withheld
        secret values come from this server's memory; InvalidRequest if they are not there."""
        env = {k: os.environ[k] for k in self.env_allow if k in os.environ}
        secret = self.secrets.get(marker[1])
        missing = []
        for key, value in caller.items():
            if value != WITHHELD:
                env[key] = value
            elif key in secret:
                env[key] = secret[key]
            else:
                missing.append(key)
        if missing:
            raise InvalidRequest(
                f"the values of {', '.join(sorted(missing))} (secret-like names) are not stored, "
                "only kept by the server that queued the job, which no longer has them. Start "
                "the job again with `rerun` and pass them in `env`."
            )
        env[marker[0]] = marker[1]
        return env

    def writable_cwd(self, cwd: str) -> bool:
        """Whether the job's cwd is made writable: not /, nor a system directory (devices,
        /proc, /sys), which such a job gets read-only (as any non-root user has /)."""
        path = os.path.realpath(cwd)
        if path == "/":
            return False
        return not any(_inside(path, d) for d in _SYSTEM_DIRS) or _inside(path, _DEV_SHM)

    def check_cwd(self, cwd: str) -> str | None:
        """Why ``cwd`` cannot be a job's workspace under this mode, or None."""
        if self.mode not in ("landlock", "bwrap"):
            return None
        path = os.path.realpath(cwd)
        for hidden in self.hidden:
            # bwrap mounts over the state even inside the cwd; Landlock cannot take a directory
            # out of a writable one.
            contains = self.mode == "landlock" and _inside(hidden, path)
            if (contains and self.writable_cwd(path)) or _inside(path, hidden):
                state = str(Path(self.hidden[0]).parent)
                return (
                    f"the cwd {path} {'contains' if contains else 'is inside'} this server's "
                    f"state directory {state} (its database and the output of every job), which "
                    f"jobs must not read; under isolation {self.mode} the cwd is writable. Pass a "
                    f"cwd that does not contain {state}, or keep the database elsewhere "
                    "(MCP_BACKGROUND_JOB_DB)."
                )
        return None


_RLIMIT_IDS = {
    "data": resource.RLIMIT_DATA,
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
}


def _clamped(rlimits: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
    """Limits no higher than this process's hard limits (as the helper does): raising one
    above it fails for an unprivileged user, and the job would not start."""
    out = []
    for name, value in rlimits:
        hard = resource.getrlimit(_RLIMIT_IDS[name])[1]
        out.append((name, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return out


def rlimits_of(settings: Settings) -> tuple[tuple[str, int], ...]:
    pairs = (
        ("data", settings.limit_memory_bytes),
        ("as", settings.limit_address_space_bytes),
        ("cpu", settings.limit_cpu_s),
        ("nproc", settings.limit_processes),
        ("fsize", settings.limit_file_size_bytes),
    )
    return tuple((name, value) for name, value in pairs if value is not None)


def state_paths(settings: Settings) -> tuple[str, ...]:
    """The files and directories of the server's state: the database with its WAL, SHM and
    journal, and the spool directory (real paths: a symlink on the way does not hide them)."""
    spool = os.path.realpath(settings.spool_path)
    if isinstance(settings.db, str):
        return (spool,)  # a PostgreSQL database: no files of it here
    db = os.path.realpath(settings.db)
    return (*(db + suffix for suffix in _DB_SUFFIXES), spool)


def temp_dirs() -> tuple[str, ...]:
    """``TEMP_DIRS`` and the server's TMPDIR (jobs inherit it)."""
    extra = os.environ.get("TMPDIR", "")
    dirs = list(TEMP_DIRS)
    if Path(extra).is_absolute() and os.path.realpath(extra) != "/":
        real = os.path.realpath(extra)
        if not any(_inside(real, d) for d in dirs):
            dirs.append(real)
    return tuple(dirs)


def cache_dirs(settings: Settings) -> tuple[str, ...]:
    home = str(Path.home())
    out = []
    for path in settings.isolation_cache_dirs:
        full = home + path[1:] if path.startswith("~/") else path
        out.append(os.path.realpath(full))
    return tuple(dict.fromkeys(out))


def detect(settings: Settings) -> Isolation:
    """The isolation ``settings`` asks for, after checking that it works here."""
    requested = settings.isolation
    iso = Isolation(
        mode="rlimits" if requested == "auto" else requested,
        network=settings.isolation_network,
        writable=tuple(str(p) for p in settings.isolation_writable),
        rlimits=rlimits_of(settings) if requested != "none" else (),
        env_allow=settings.env_allow,
        prlimit=shutil.which("prlimit"),
        requested=requested,
        temp=temp_dirs(),
        caches=cache_dirs(settings),
        spool_dir=os.path.realpath(settings.spool_path),
    )
    if requested == "none":
        return iso
    iso = replace(iso, cgroups=_cgroups(settings))
    if requested == "auto":
        try:
            sandboxed = _landlock(settings, replace(iso, mode="landlock"), auto=True)
            _probe(sandboxed)
            iso = sandboxed
        except IsolationError as exc:
            log.warning(
                "isolation_fallback requested=auto mode=rlimits reason=%r: jobs can write "
                "anywhere this user can, and read the server's database",
                str(exc),
            )
            _probe(iso)
    elif requested == "landlock":
        iso = _landlock(settings, iso, auto=False)
        _probe(iso)
    elif requested == "bwrap":
        iso = _bwrap(settings, iso)
        _probe(iso)
    else:
        _probe(iso)
    if os.geteuid() == 0 and settings.limit_processes is not None and iso.cgroups is None:
        log.info("isolation_note running as root: the kernel ignores RLIMIT_NPROC for root")
    return iso


def _cgroups(settings: Settings) -> cgroup.JobCgroups | None:
    if settings.isolation_cgroup == "off":
        return None
    found = cgroup.detect(settings.limit_memory_bytes, settings.limit_processes)
    if isinstance(found, cgroup.JobCgroups):
        log.info(
            "isolation_cgroup version=%d memory_bytes=%s max_processes=%s",
            found.version, found.memory_bytes, found.max_processes,
        )  # fmt: skip
        return found
    if settings.isolation_cgroup == "on":
        raise IsolationError(
            f"isolation_cgroup=on, but no cgroup can be made for jobs here: {found}. Set "
            "isolation_cgroup=auto to run without per-job cgroups."
        )
    log.info(
        "isolation_cgroup off reason=%r: memory and process limits are per process "
        "(shared memory and /dev/shm are not counted; root ignores the process limit)",
        found,
    )
    return None


def _state_conflict(hidden: tuple[str, ...], writable: tuple[str, ...]) -> str | None:
    for path in hidden:
        for root in writable:
            if _inside(path, root) or _inside(root, path):
                return (
                    f"{path} lies inside {root}"
                    if _inside(path, root)
                    else (f"the writable {root} lies inside {path}")
                )
    return None


def _unix_sockets(settings: Settings, mode: str, auto: bool) -> bool:
    """Whether jobs may create unix sockets: the setting, where the seccomp filter exists."""
    if settings.isolation_unix_sockets:
        return True
    machine = platform.machine()
    if machine in _SECCOMP_ARCHES:
        return False
    message = (
        f"isolation={mode} refuses jobs' unix sockets with a seccomp filter, which exists for "
        f"{' and '.join(_SECCOMP_ARCHES)}, not {machine}. Set isolation_unix_sockets=true."
    )
    if not auto:
        raise IsolationError(message)
    log.info("isolation_limited %s", message)
    return True


def _landlock(settings: Settings, iso: Isolation, *, auto: bool) -> Isolation:
    abi = _landlock_abi()
    if abi < 1:
        raise IsolationError(
            "isolation=landlock, but this kernel has no Landlock (needs Linux 5.13+ with "
            "CONFIG_SECURITY_LANDLOCK and landlock in the lsm= boot list). Use isolation=bwrap "
            "(install bubblewrap) or isolation=rlimits."
        )
    if not iso.network and abi < 4:
        raise IsolationError(
            f"isolation=landlock without network needs Landlock ABI 4 (Linux 6.7+) to refuse "
            f"TCP connections; this kernel has ABI {abi}. Set isolation_network=true, or use "
            "isolation=bwrap."
        )
    hidden = state_paths(settings)
    conflict = _state_conflict(hidden, (*iso.temp, *iso.caches, *iso.writable))
    if conflict is not None:
        message = (
            f"isolation=landlock cannot hide the server's state from jobs: {conflict}, which "
            "jobs may write (Landlock cannot take a directory out of a writable one). Keep the "
            "database elsewhere (the default is ~/.local/state/mcp-background-job/jobs.db), or "
            "use isolation=bwrap, which mounts over it."
        )
        if not auto:
            raise IsolationError(message)
        log.info("isolation_limited %s", message.replace("cannot hide", "does not hide"))
        hidden = ()
    if abi < 6:
        log.info(
            "isolation_limited Landlock ABI %d (< 6): jobs can signal processes outside the job "
            "(the server too) and reach abstract unix sockets; Linux 6.12+ scopes both",
            abi,
        )
    return replace(
        iso,
        mode="landlock",
        landlock_abi=abi,
        hidden=hidden,
        scoped=abi >= 6,
        unix_sockets=_unix_sockets(settings, "landlock", auto),
    )


def _bwrap(settings: Settings, iso: Isolation) -> Isolation:
    path = shutil.which("bwrap")
    if path is None:
        raise IsolationError(
            "isolation=bwrap, but bubblewrap is not installed: install it (Debian/Ubuntu: "
            "apt-get install bubblewrap; Fedora: dnf install bubblewrap), or choose "
            "isolation=landlock or rlimits."
        )
    return replace(
        iso,
        bwrap=path,
        hidden=state_paths(settings),
        unix_sockets=_unix_sockets(settings, "bwrap", False),
    )


def _landlock_abi() -> int:
    from ._sandbox import landlock_abi

    return landlock_abi()


def _probe(iso: Isolation) -> None:
    """Run ``true`` the way jobs will run (in a cgroup of its own too); refuse to start if that
    fails."""
    if iso.mode == "none":
        return
    # Unique per call: servers opened in one process would otherwise share (and remove) it.
    probe_id = f"probe{os.getpid()}-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="mcp-background-job-probe-") as cwd:
        try:
            argv = iso.argv(_SHELL, "exit 0", cwd, probe_id)
            result = subprocess.run(
                argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30, cwd=cwd,
                check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise IsolationError(f"isolation={iso.mode} does not work here: {exc}") from exc
        finally:
            if iso.cgroups is not None:
                iso.cgroups.remove(probe_id)
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip()[-500:]
        hint = ""
        if "uid map" in err or "Operation not permitted" in err or "namespace" in err:
            hint = (
                " Unprivileged user namespaces seem to be blocked (e.g. AppArmor on Ubuntu 24.04+:"
                " sysctl kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile"
                " for bwrap), or use isolation=landlock."
            )
        raise IsolationError(
            f"isolation={iso.mode} does not work here: a test job failed with exit code "
            f"{result.returncode}: {err or 'no message'}.{hint}"
        )
