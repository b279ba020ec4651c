"""Exec helper: set resource limits and a Landlock ruleset on itself, then exec the job.

Run as ``python -I -S _sandbox.py [OPTIONS] -- PROGRAM ARGS...`` between the server's fork and
the job, because ``preexec_fn`` can deadlock a threaded process (the server has threads). Stdlib
only, and it imports nothing from the package: ``-I -S`` keeps start-up at a few milliseconds.

Options:
    --rlimit NAME=VALUE   resource.setrlimit(RLIMIT_NAME, (VALUE, VALUE)); NAME is data, as, cpu,
                          nproc, fsize, core or nofile (never above the inherited hard limit)
    --ro PATH             Landlock: PATH and below may be read and executed
    --rw PATH             Landlock: PATH and below may be read, written, created, removed
    --dev PATH            Landlock: the device file (or directory) PATH may be read and written
    --deny-tcp            Landlock: outgoing TCP connections are refused (kernel ABI >= 4)
    --abi                 print the kernel's Landlock ABI version (0: none) and exit

Any Landlock option turns Landlock on: everything not granted is denied. On error it prints why
on stderr and exits with 126 (like a shell that cannot run a command); nothing runs unconfined.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

_RLIMITS = {
    "data": resource.RLIMIT_DATA,
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "core": resource.RLIMIT_CORE,
    "nofile": resource.RLIMIT_NOFILE,
}

# <linux/landlock.h>
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_CONNECT_TCP = 1 << 1  # ABI 4
_FS_ALL_ABI1 = (1 << 13) - 1
_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_DEV = _FS_READ_FILE | _FS_WRITE_FILE | _FS_READ_DIR


class SandboxError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    try:
        libc = _libc()
    except OSError:
        return 0
    version = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(0, int(version))


def apply_landlock(ro: list[str], rw: list[str], dev: list[str], deny_tcp: bool) -> None:
    libc = _libc()
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError("Landlock is not available in this kernel")
    if deny_tcp and abi < 4:
        raise SandboxError(f"Landlock ABI {abi} cannot restrict TCP (needs 4)")
    handled = _FS_ALL_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

    attr = RulesetAttr(handled, _NET_CONNECT_TCP if deny_tcp else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise SandboxError(f"landlock_create_ruleset: {os.strerror(ctypes.get_errno())}")
    file_rights = _FS_EXECUTE | _FS_READ_FILE | _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)
    grants = [(p, _READ) for p in ro] + [(p, handled) for p in rw] + [(p, _DEV) for p in dev]
    try:
        for path, rights in grants:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # nothing there to grant
            try:
                if not os.path.isdir(path):  # noqa: PTH112 (no pathlib: start-up time)
                    rights &= file_rights  # rights on a file may not include directory rights
                rule = PathBeneath(rights & handled, fd)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    err = os.strerror(ctypes.get_errno())
                    raise SandboxError(f"landlock_add_rule {path}: {err}")
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise SandboxError(f"prctl(NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise SandboxError(f"landlock_restrict_self: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(ruleset)


def apply_rlimit(spec: str) -> None:
    name, _, value = spec.partition("=")
    if name not in _RLIMITS or not value.isdigit():
        raise SandboxError(f"bad --rlimit {spec!r}")
    which = _RLIMITS[name]
    _soft, hard = resource.getrlimit(which)
    limit = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
    resource.setrlimit(which, (limit, limit))


def main(argv: list[str]) -> int:
    ro: list[str] = []
    rw: list[str] = []
    dev: list[str] = []
    deny_tcp = False
    landlock = False
    i = 0
    try:
        while i < len(argv):
            arg = argv[i]
            if arg == "--":
                i += 1
                break
            if arg == "--abi":
                print(landlock_abi())
                return 0
            if arg == "--deny-tcp":
                deny_tcp = landlock = True
                i += 1
                continue
            if arg not in ("--rlimit", "--ro", "--rw", "--dev") or i + 1 >= len(argv):
                raise SandboxError(f"unknown option {arg!r}")
            value = argv[i + 1]
            if arg == "--rlimit":
                apply_rlimit(value)
            else:
                {"--ro": ro, "--rw": rw, "--dev": dev}[arg].append(value)
                landlock = True
            i += 2
        program = argv[i:]
        if not program:
            raise SandboxError("no program given after --")
        if landlock:
            apply_landlock(ro, rw, dev, deny_tcp)
        os.execvp(program[0], program)  # noqa: S606 (the job's own argv: sh -c or bwrap)
    except (SandboxError, OSError, ValueError) as exc:
        sys.stderr.write(f"mcp-background-job sandbox: {exc}; the job was not run\n")
        return 126
    return 126  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
