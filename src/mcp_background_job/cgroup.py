"""Per-job control groups: a memory and a process limit on each job as a whole, and every
process of a job found or killed by its group.

Import rule: nothing from the package (layer ``processes`` in ``tests/test_layers.py``).

Resource limits (``RLIMIT_DATA``, ``RLIMIT_NPROC``) are per process and miss shared mappings,
``/dev/shm`` and tmpfs files, and the kernel ignores ``RLIMIT_NPROC`` for root. A cgroup counts
all of a job's memory (shmem and tmpfs pages included) and all of its processes, whoever runs it.

Two layouts, detected at start-up (``detect``):

- **cgroup v2**: this server's own group, when it may write it and is its only process (a
  systemd unit with ``Delegate=yes``, or ``systemd-run --user --scope -p Delegate=yes``). The
  server moves itself into ``<own>/server`` (v2 lets only leaf groups hold processes), enables
  the memory and pids controllers below ``<own>``, and makes ``<own>/jobs/job-<id>`` per job:
  ``memory.max``, ``pids.max``; ``cgroup.kill`` kills a job's tree at once.
- **cgroup v1**: the memory and pids hierarchies (and freezer, if mounted), when this server may
  make groups below its own in each: ``<own>/mcp-background-job/job-<id>`` per job, with
  ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``, so swap does not extend it)
  and ``pids.max``; a kill freezes the group (when the freezer is there), SIGKILLs each of its
  processes and thaws it.

A job joins its group before it execs (``_sandbox --cgroup``, or ``echo 0 >`` in a tiny shell for
the ``prlimit`` path), so every process it forks is counted. Empty job groups are removed by
``remove`` and, after ``SWEEP_AGE_S``, by the sweep each new job runs: a group made a moment ago
for a job that is about to join it is never swept.

Only the runner calls this module: through ``isolation``, which prepares a job's group, and
directly to find, kill and remove a job's groups as its tree is stopped or found gone.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

PREFIX = "job-"
#: Age after which an empty job group is swept (a new one waits for its job to join it).
SWEEP_AGE_S = 60.0
V1_DIR = "mcp-background-job"
_PROC_SELF_CGROUP = "/proc/self/cgroup"
_MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True, slots=True)
class JobCgroups:
    """Where this server makes its jobs' groups, and the limits it sets on each.

    ``bases``: one directory per hierarchy (v2: one; v1: memory, pids and maybe freezer), in
    which ``job-<id>`` groups are made; ``kinds`` names each (``unified``, ``memory``, ...).
    """

    version: Literal[1, 2]
    bases: tuple[str, ...]
    kinds: tuple[str, ...]
    memory_bytes: int | None
    max_processes: int | None
    _swept: list[float] = field(default_factory=lambda: [0.0], compare=False, repr=False)

    def describe(self) -> dict[str, object]:
        return {
            "version": self.version,
            "bases": list(self.bases),
            "memory_bytes": self.memory_bytes,
            "max_processes": self.max_processes,
        }

    def dirs(self, job_id: str) -> list[Path]:
        return [Path(base) / f"{PREFIX}{job_id}" for base in self.bases]

    def prepare(self, job_id: str) -> list[str]:
        """Make the job's groups with their limits; returns the ``cgroup.procs`` files the job
        writes 0 to (joins) before it execs. Raises OSError when a group cannot be made."""
        self.sweep()
        files = []
        for kind, path in zip(self.kinds, self.dirs(job_id), strict=True):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o755)
            for name, value in self._limits(kind):
                (path / name).write_text(value)
            if kind == "memory" and self.memory_bytes is not None:
                # Memory plus swap, where swap is accounted: else swap extends the limit.
                with contextlib.suppress(OSError):
                    (path / "memory.memsw.limit_in_bytes").write_text(str(self.memory_bytes))
            files.append(str(path / "cgroup.procs"))
        return files

    def _limits(self, kind: str) -> list[tuple[str, str]]:
        mem, pids = self.memory_bytes, self.max_processes
        out: list[tuple[str, str]] = []
        if kind == "unified":
            out += [("memory.max", str(mem))] if mem is not None else []
            out += [("pids.max", str(pids))] if pids is not None else []
        elif kind == "memory" and mem is not None:
            out.append(("memory.limit_in_bytes", str(mem)))
        elif kind == "pids" and pids is not None:
            out.append(("pids.max", str(pids)))
        return out

    def procs(self, job_id: str) -> set[int]:
        """Every process in the job's groups now (empty once they are gone)."""
        found: set[int] = set()
        for path in self.dirs(job_id):
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return found

    def kill(self, job_id: str, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process of the job, forks racing the kill included; True once the
        groups are empty (within ``timeout_s``), False if processes are left or no group."""
        dirs = self.dirs(job_id)
        if not any(d.is_dir() for d in dirs):
            return False
        unified = dirs[0] / "cgroup.kill"
        if self.version == 2 and unified.exists():
            unified.write_text("1")  # the kernel kills the whole group, new forks included
        else:
            freezer = next(
                (d for k, d in zip(self.kinds, dirs, strict=True) if k == "freezer"), None
            )
            frozen = freezer is not None and _freeze(freezer, True)
            try:
                for pid in self.procs(job_id):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            finally:
                if frozen and freezer is not None:
                    _freeze(freezer, False)  # killed processes die once thawed
        deadline = time.monotonic() + timeout_s
        while self.procs(job_id):
            if time.monotonic() > deadline:
                return False
            for pid in self.procs(job_id):  # forked before the first pass saw them
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        return True

    def remove(self, job_id: str) -> bool:
        """Remove the job's groups; False if a process is still in one (nothing removed then)."""
        done = True
        for path in self.dirs(job_id):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                done = False
        return done

    def sweep(self) -> int:
        """Remove empty job groups older than ``SWEEP_AGE_S`` (any server's); at most once a
        second. Returns how many were removed."""
        now = time.time()
        if now - self._swept[0] < 1.0:
            return 0
        self._swept[0] = now
        removed = 0
        for base in self.bases:
            try:
                entries = list(os.scandir(base))
            except OSError:
                continue
            for entry in entries:
                if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    if now - entry.stat().st_mtime < SWEEP_AGE_S:
                        continue
                    Path(entry.path).rmdir()  # EBUSY while a process is in it
                    removed += 1
                except OSError:
                    continue
        return removed


def _freeze(path: Path, frozen: bool) -> bool:
    state = path / "freezer.state"
    try:
        state.write_text("FROZEN" if frozen else "THAWED")
        if not frozen:
            return True
        deadline = time.monotonic() + 1.0
        while state.read_text().strip() != "FROZEN":
            if time.monotonic() > deadline:
                return True  # still freezing: kill anyway, forks are caught by later passes
            time.sleep(0.005)
    except OSError:
        return False
    return True


# --- detection -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str  # the hierarchy's directory mounted there
    point: str
    fstype: str
    options: frozenset[str]


def _mounts(mountinfo: str) -> list[_Mount]:
    out = []
    for line in Path(mountinfo).read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        unescape = fields[4].replace("\\040", " ")
        out.append(_Mount(fields[3], unescape, tail[0], frozenset(tail[2].split(","))))
    return out


def _own_groups(proc_cgroup: str) -> dict[str, str]:
    """Controller (``unified`` for v2) -> this process's group path in that hierarchy."""
    out = {}
    for line in Path(proc_cgroup).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else ["unified"]:
            out[name] = path
    return out


def _in_mount(mount: _Mount, group: str) -> Path | None:
    root = mount.root.rstrip("/")
    if group != root and not group.startswith(root + "/") and root != "":
        return None  # this process's group is not visible under that mount
    return Path(mount.point) / group[len(root) :].lstrip("/")


def detect(
    memory_bytes: int | None,
    max_processes: int | None,
    *,
    proc_cgroup: str = _PROC_SELF_CGROUP,
    mountinfo: str = _MOUNTINFO,
) -> JobCgroups | str:
    """The job groups this server can make, or why it cannot (one sentence)."""
    try:
        groups = _own_groups(proc_cgroup)
        mounts = _mounts(mountinfo)
    except OSError as exc:
        return f"cannot read this process's cgroups: {exc}"
    reasons = []
    for attempt in (_detect_v2, _detect_v1):
        found = attempt(groups, mounts, memory_bytes, max_processes)
        if isinstance(found, JobCgroups):
            return found
        reasons.append(found)
    return "; ".join(reasons)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _detect_v2(
    groups: dict[str, str], mounts: list[_Mount], memory: int | None, pids: int | None
) -> JobCgroups | str:
    mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if mount is None or "unified" not in groups:
        return "cgroup v2: not mounted"
    own = _in_mount(mount, groups["unified"])
    if own is None or not own.is_dir():
        return "cgroup v2: this server's group is not visible"
    try:
        available = set((own / "cgroup.controllers").read_text().split())
    except OSError as exc:
        return f"cgroup v2: {exc}"
    missing = {"memory", "pids"} - available
    if missing:
        return (
            f"cgroup v2: the {' and '.join(sorted(missing))} controller(s) are not available in "
            f"{own} (bound to cgroup v1, or not delegated)"
        )
    if not _writable(own) or not os.access(own / "cgroup.subtree_control", os.W_OK):
        return (
            f"cgroup v2: {own} is not writable by this user: start the server in a delegated "
            "group (systemd-run --user --scope -p Delegate=yes mcp-background-job)"
        )
    me = os.getpid()
    is_root = groups["unified"] == "/"
    try:
        others = {int(p) for p in (own / "cgroup.procs").read_text().split()} - {me}
        if others and not is_root:
            listed = ", ".join(map(str, sorted(others)[:5]))
            return (
                f"cgroup v2: {own} also holds other processes ({listed}): "
                "start the server in a group of its own (systemd-run --user --scope -p "
                "Delegate=yes mcp-background-job)"
            )
        if is_root:
            base = own / V1_DIR
            base.mkdir(exist_ok=True)
            (base / "cgroup.subtree_control").write_text("+memory +pids")
        else:
            # Only leaf groups may hold processes once controllers are enabled below: the
            # server moves itself into a leaf of its own first.
            leaf = own / "server"
            leaf.mkdir(exist_ok=True)
            (leaf / "cgroup.procs").write_text(str(me))
            (own / "cgroup.subtree_control").write_text("+memory +pids")
            base = own / "jobs"
            base.mkdir(exist_ok=True)
            (base / "cgroup.subtree_control").write_text("+memory +pids")
    except OSError as exc:
        return f"cgroup v2: cannot set up job groups in {own}: {exc}"
    found = JobCgroups(2, (str(base),), ("unified",), memory, pids)
    return _tried(found)


def _detect_v1(
    groups: dict[str, str], mounts: list[_Mount], memory: int | None, pids: int | None
) -> JobCgroups | str:
    bases, kinds = [], []
    for kind in ("memory", "pids", "freezer"):
        mount = next((m for m in mounts if m.fstype == "cgroup" and kind in m.options), None)
        own = _in_mount(mount, groups[kind]) if mount is not None and kind in groups else None
        if own is None:
            if kind == "freezer":
                continue  # optional: kills then loop without freezing
            return f"cgroup v1: no {kind} hierarchy"
        base = own / V1_DIR
        try:
            base.mkdir(exist_ok=True)
        except OSError as exc:
            if kind == "freezer":
                continue
            return f"cgroup v1: cannot make {base}: {exc.strerror}"
        bases.append(str(base))
        kinds.append(kind)
    return _tried(JobCgroups(1, tuple(bases), tuple(kinds), memory, pids))


def _tried(found: JobCgroups) -> JobCgroups | str:
    """``found`` if a job group can be made, limited and removed there; else why not."""
    # Unique per call: servers opened in one process (tests, a worker beside a server) probe too.
    probe = f"probe{os.getpid()}-{secrets.token_hex(4)}"
    try:
        found.prepare(probe)
    except OSError as exc:
        return f"cgroup v{found.version}: cannot make a job group: {exc}"
    finally:
        with contextlib.suppress(OSError):
            found.remove(probe)
    return found
