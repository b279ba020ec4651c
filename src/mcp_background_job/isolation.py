"""Isolation and resource limits for jobs: the argv wrapper for each mode, the environment a job
gets, and detecting at start-up whether the chosen mode works on this machine.

Modes (``Settings.isolation``), each including the previous one's resource limits:

- ``none``: no limits at all (the job still gets an explicit environment, no inherited fds);
- ``rlimits``: per-process resource limits (memory, address space, CPU, processes, file size),
  set by the ``_sandbox`` exec helper (never ``preexec_fn``: it can deadlock a threaded server);
- ``landlock``: the helper also confines the job with Landlock: the job's cwd and the
  configured writable paths (plus /tmp) writable, everything else read-only, device files
  other than /dev/null & co. closed, outgoing TCP refused unless ``isolation_network``;
- ``bwrap``: bubblewrap: read-only root, the cwd and configured paths writable, a private /tmp
  and /dev, a PID namespace, no network unless ``isolation_network``, no capabilities.

A mode that cannot work here stops the server with the reason and a fix (``IsolationError``):
never a silent downgrade. The probe runs a trivial job the way real ones will run.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Settings
from .errors import IsolationError

log = logging.getLogger(__name__)

HELPER = Path(__file__).with_name("_sandbox.py")
#: Landlock: always writable besides the cwd (compilers and test runners need a temp dir).
_LANDLOCK_RW = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108
_LANDLOCK_DEV = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                 "/dev/tty", "/dev/pts", "/dev/ptmx")  # fmt: skip


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
    #: ~11 ms of CPU per job (most of the cost of starting a short job); None: use the helper.
    prlimit: str | None = None

    def describe(self) -> dict[str, object]:
        return {
            "isolation": self.mode,
            "network": self.network if self.mode in ("landlock", "bwrap") else True,
            "writable": list(self.writable),
            "rlimits": dict(self.rlimits),
            "env_allow": list(self.env_allow),
            "landlock_abi": self.landlock_abi or None,
        }

    def argv(self, shell: str, command: str, cwd: str) -> list[str]:
        """The argv that runs ``shell -c command`` in ``cwd`` under this isolation."""
        return self.wrap([shell, "-c", command], cwd)

    def wrap(self, inner: list[str], cwd: str) -> list[str]:
        """The argv that runs ``inner`` in ``cwd`` under this isolation."""
        if self.mode == "none":
            return inner
        if self.prlimit is not None and self.mode != "landlock":
            helper = [
                self.prlimit,
                *(f"--{name}={value}" for name, value in _clamped(self.rlimits)),
            ]
        else:
            helper = [sys.executable, "-I", "-S", str(HELPER)]
            for name, value in self.rlimits:
                helper += ["--rlimit", f"{name}={value}"]
        if self.mode == "landlock":
            helper += ["--ro", "/"]
            for path in (cwd, *_LANDLOCK_RW, *self.writable):
                helper += ["--rw", path]
            for path in _LANDLOCK_DEV:
                helper += ["--dev", path]
            if not self.network:
                helper.append("--deny-tcp")
            return [*helper, "--", *inner]
        if self.mode == "bwrap":
            assert self.bwrap is not None
            box = [self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                   "--tmpfs", "/tmp"]  # fmt: skip  # noqa: S108 (a private, empty /tmp)
            for path in (cwd, *self.writable):
                box += ["--bind", path, path]
            box += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session",
                    "--cap-drop", "ALL", "--chdir", cwd]  # fmt: skip
            if not self.network:
                box.append("--unshare-net")
            return [*helper, "--", *box, "--", *inner]
        return [*helper, "--", *inner]

    def environment(self, caller: Mapping[str, str], marker: tuple[str, str]) -> dict[str, str]:
        """The server's allowed variables, then the caller's, then the job marker."""
        env = {k: os.environ[k] for k in self.env_allow if k in os.environ}
        env.update(caller)
        env[marker[0]] = marker[1]
        return env

    def check_cwd(self, cwd: str) -> str | None:
        """Why ``cwd`` cannot be a job's writable workspace under this mode, or None."""
        if self.mode in ("landlock", "bwrap") and Path(cwd) == Path("/"):
            return (
                f"isolation {self.mode} makes the job's cwd writable, and the cwd is / (the whole "
                "file system). Pass cwd= a project directory."
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


def detect(settings: Settings) -> Isolation:
    """The isolation ``settings`` asks for, after checking that it works here."""
    iso = Isolation(
        mode=settings.isolation,
        network=settings.isolation_network,
        writable=tuple(str(p) for p in settings.isolation_writable),
        rlimits=rlimits_of(settings) if settings.isolation != "none" else (),
        env_allow=settings.env_allow,
        prlimit=shutil.which("prlimit"),
    )
    if iso.mode == "landlock":
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
        iso = replace(iso, landlock_abi=abi)
    elif iso.mode == "bwrap":
        path = shutil.which("bwrap")
        if path is None:
            raise IsolationError(
                "isolation=bwrap, but bubblewrap is not installed: install it (Debian/Ubuntu: "
                "apt-get install bubblewrap; Fedora: dnf install bubblewrap), or choose "
                "isolation=landlock or rlimits."
            )
        iso = replace(iso, bwrap=path)
    _probe(iso)
    if iso.mode != "none" and os.geteuid() == 0 and settings.limit_processes is not None:
        log.info("isolation_note running as root: the kernel ignores RLIMIT_NPROC for root")
    return iso


def _landlock_abi() -> int:
    from ._sandbox import landlock_abi

    return landlock_abi()


def _probe(iso: Isolation) -> None:
    """Run ``true`` the way jobs will run; refuse to start if that fails."""
    if iso.mode == "none":
        return
    cwd = str(Path.cwd()) if Path.cwd() != Path("/") else "/tmp"  # noqa: S108
    argv = iso.argv("/bin/sh", "exit 0", cwd)
    try:
        result = subprocess.run(
            argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=30, cwd=cwd, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IsolationError(f"isolation={iso.mode} does not work here: {exc}") from exc
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
