"""Exec helper: put itself in the job's cgroup, set resource limits, confine itself with Landlock
and a seccomp filter, drop capabilities, then exec the job.

Run between the server's fork and the job, because ``preexec_fn`` can deadlock a threaded process
(the server has threads)::

    python -I -S -c 'import sys; sys.path.append(DIR); from _sandbox import main; main()' \
        OPTIONS -- PROGRAM ARGS...

(``isolation.helper_argv`` builds that line: imported rather than run as a script, it starts from
cached bytecode.) Stdlib only, imports nothing from the package, and only built-in modules at
start (``posix``, ``_ctypes``, ``resource``): it runs once per job, and ``os`` plus ``ctypes``
(and ``typing``) were ~5 ms of its ~16 ms of CPU (measured, see the README's isolation section).

Options (applied in this order, whatever order they are given in):
    --cgroup FILE         write 0 to FILE (a cgroup's ``cgroup.procs``): join that group first
    --rlimit NAME=VALUE   setrlimit(RLIMIT_NAME, (VALUE, VALUE)); NAME is data, as, cpu, nproc,
                          fsize, core or nofile (never above the inherited hard limit)
    --ro PATH             Landlock: PATH and below may be read and executed, except --hide paths
    --hide PATH           Landlock: no --ro grant reaches PATH: the entries along the way to it are
                          granted one by one, so the directories on its path cannot be listed
    --rw PATH             Landlock: PATH and below may be read, written, created, removed (a file:
                          read and written)
    --dev PATH            Landlock: the device file (or directory) PATH may be read and written
    --deny-tcp            Landlock: outgoing TCP connections are refused (kernel ABI >= 4)
    --scope               Landlock: signals and abstract unix sockets do not reach processes
                          outside the job (kernel ABI >= 6)
    --deny-unix           seccomp: socket(AF_UNIX) and socketpair(AF_UNIX, SOCK_DGRAM) fail with
                          EACCES, io_uring_setup with ENOSYS; other architectures' system calls
                          (x32, i386) kill the process
    --drop-caps           drop every capability (a root job keeps uid 0, without its powers)
    --refuse MESSAGE      run nothing: print MESSAGE and exit 126
    --abi                 print the kernel's Landlock ABI version (0: none) and exit

Any Landlock option turns Landlock on: everything not granted is denied. On error it prints why
on stderr and exits with 126 (like a shell that cannot run a command); nothing runs unconfined.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stubs; `signal` imports enum: ~3 ms)
import posix
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~5 ms to import: only for mypy
    from typing import Any, Literal

_RLIMIT_NAMES = ("data", "as", "cpu", "nproc", "fsize", "core", "nofile")

# <linux/landlock.h>; the syscall numbers are the same on x86_64 and aarch64.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_CONNECT_TCP = 1 << 1  # ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1  # ABI 6
_FS_ALL_ABI1 = (1 << 13) - 1
_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_DEV = _FS_READ_FILE | _FS_WRITE_FILE | _FS_READ_DIR

# <linux/prctl.h>, <linux/capability.h>, <linux/seccomp.h>, <linux/filter.h>, <linux/audit.h>
_PR_CAPBSET_DROP = 24
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPABILITY_VERSION_3 = 0x20080522
_SECCOMP_MODE_FILTER = 2
_RET_KILL_PROCESS, _RET_ERRNO, _RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
_LD_W_ABS, _JEQ_K, _JGE_K, _AND_K, _RET_K = 0x20, 0x15, 0x35, 0x54, 0x06
_AF_UNIX, _SOCK_DGRAM, _SOCK_TYPE_MASK = 1, 2, 0xF
_EACCES, _ENOSYS = 13, 38
_X32_SYSCALL_BIT = 0x40000000
#: machine -> (AUDIT_ARCH_*, socket, socketpair, io_uring_setup)
_ARCHES = {
    "x86_64": (0xC000003E, 41, 53, 425),
    "aarch64": (0xC00000B7, 198, 199, 425),
}


class SandboxError(Exception):
    pass


class _FFI:
    """The few C types and libc functions this helper needs, made from ``_ctypes`` directly:
    importing ``ctypes`` costs ~4 ms per job (measured), ``_ctypes`` ~0.5 ms."""

    def __init__(self) -> None:
        import _ctypes

        c: Any = _ctypes  # typeshed types it for ctypes' own use only
        self.c = c

        def simple(code: str) -> Any:
            return type(f"c_{code}", (c._SimpleCData,), {"_type_": code})

        self.Long, self.U64, self.I32 = simple("l"), simple("Q"), simple("i")
        self.U32, self.U16, self.U8, self.Ptr = simple("I"), simple("H"), simple("B"), simple("P")
        lib = type("Lib", (), {"_handle": c.dlopen(None, 2)})  # RTLD_NOW: this process's libc
        fn = type("Fn", (c.CFuncPtr,), {
            "_flags_": c.FUNCFLAG_CDECL | c.FUNCFLAG_USE_ERRNO, "_restype_": self.Long,
        })  # fmt: skip
        self._syscall, self._prctl, self._capset = (
            fn((name, lib)) for name in ("syscall", "prctl", "capset")
        )

    def syscall(self, number: int, *args: Any) -> int:
        # Every int as a C long: syscall() is variadic and reads whole registers.
        wrapped = [self.Long(a) if isinstance(a, int) else a for a in args]
        return int(self._syscall(self.Long(number), *wrapped))

    def prctl(self, option: int, arg2: int = 0, arg3: Any = 0) -> int:
        third = self.Long(arg3) if isinstance(arg3, int) else arg3
        zero = self.Long(0)
        return int(self._prctl(self.Long(option), self.Long(arg2), third, zero, zero))

    def errno(self, what: str) -> SandboxError:
        return SandboxError(f"{what}: {posix.strerror(self.c.get_errno())}")

    def struct(self, fields: list[tuple[str, Any]], pack: int = 0) -> Any:
        attrs: dict[str, Any] = {"_fields_": fields}
        if pack:
            attrs["_pack_"] = pack
        return type("S", (self.c.Structure,), attrs)

    def buffer(self, data: bytes) -> Any:
        array: Any = type("B", (self.c.Array,), {"_type_": self.U8, "_length_": len(data)})
        return array.from_buffer_copy(data)


_ffi: _FFI | None = None


def _lib() -> _FFI:
    global _ffi
    if _ffi is None:
        _ffi = _FFI()
    return _ffi


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    try:
        ffi = _lib()
    except (OSError, AttributeError):
        return 0
    version = ffi.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    return max(0, version)


# --- Landlock -------------------------------------------------------------------------------


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def read_grants(roots: list[str], hidden: list[str]) -> tuple[list[str], list[str]]:
    """The paths to grant read on so that everything below ``roots`` is readable except the
    ``hidden`` paths, as (granted whole, listable only): a root with nothing hidden below it is
    granted whole; one with hidden paths below it is split into its entries, recursively, and the
    directories on the way get only the right to be listed. Landlock rules reach everything
    beneath them, so the names in a hidden directory can be listed too, never read: without that
    right, ``ls /`` and ``ls ~`` failed in every job, and ``find`` stopped at the top.
    Symbolic links are skipped: access through one is checked where it leads."""
    out: list[str] = []
    way: list[str] = []

    def around(path: str, inner: list[str]) -> None:
        if any(_inside(path, h) for h in inner):
            return
        below = [h for h in inner if _inside(h, path)]
        if not below:
            out.append(path)
            return
        way.append(path)
        try:
            entries = posix.scandir(path)
        except OSError:
            return  # nothing listable here, so nothing to grant
        with entries:
            names = [e.name for e in entries if not e.is_symlink()]
        base = path.rstrip("/")
        for name in names:
            around(f"{base}/{name}", below)

    for root in roots:
        around(root, hidden)
    return out, way


def _isdir(path: str) -> bool:
    try:
        return (posix.stat(path).st_mode & 0o170000) == 0o040000
    except OSError:
        return False


def apply_landlock(
    ro: list[str], hide: list[str], rw: list[str], dev: list[str], deny_tcp: bool, scope: bool
) -> None:
    ffi = _lib()
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError("Landlock is not available in this kernel")
    if deny_tcp and abi < 4:
        raise SandboxError(f"Landlock ABI {abi} cannot restrict TCP (needs 4)")
    if scope and abi < 6:
        raise SandboxError(f"Landlock ABI {abi} cannot scope signals and sockets (needs 6)")
    handled = _FS_ALL_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr_type = ffi.struct([("fs", ffi.U64), ("net", ffi.U64), ("scoped", ffi.U64)])
    rule_type = ffi.struct([("allowed", ffi.U64), ("fd", ffi.I32)], pack=1)
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if scope else 0
    attr = attr_type(handled, _NET_CONNECT_TCP if deny_tcp else 0, scoped)
    # The kernel takes the struct of the ABI it knows: fs only (1-3), + net (4-5), + scoped (6+).
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = ffi.syscall(_SYS_CREATE_RULESET, ffi.c.byref(attr), size, 0)
    if ruleset < 0:
        raise ffi.errno("landlock_create_ruleset")
    file_rights = _FS_EXECUTE | _FS_READ_FILE | _FS_WRITE_FILE | (_FS_TRUNCATE if abi >= 3 else 0)
    whole, way = read_grants(ro, hide)
    grants = [(p, _READ) for p in whole] + [(p, _FS_READ_DIR) for p in way]
    grants += [(p, handled) for p in rw] + [(p, _DEV) for p in dev]
    try:
        for path, rights in grants:
            try:
                fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
            except (FileNotFoundError, PermissionError):
                continue  # nothing there to grant (or nothing this user could reach anyway)
            try:
                if not _isdir(path):
                    rights &= file_rights  # rights on a file may not include directory rights
                rule = rule_type(rights & handled, fd)
                if ffi.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ffi.c.byref(rule), 0):
                    raise ffi.errno(f"landlock_add_rule {path}")
            finally:
                posix.close(fd)
        if ffi.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            raise ffi.errno("landlock_restrict_self")
    finally:
        posix.close(ruleset)


# --- seccomp: no new unix sockets -------------------------------------------------------------


def seccomp_program(machine: str, byteorder: Literal["little", "big"] = sys.byteorder) -> bytes:
    """A classic-BPF seccomp filter for ``machine`` (``uname -m``): ``socket(AF_UNIX, ...)`` and
    ``socketpair(AF_UNIX, SOCK_DGRAM, ...)`` fail with EACCES (a datagram socket can be connected
    again, to any path, after socketpair made it), ``io_uring_setup`` with ENOSYS (io_uring can
    create sockets without the socket system call); a system call of another ABI (x32's numbers,
    i386's int 0x80) kills the process, since its numbers mean other calls."""
    if machine not in _ARCHES:
        raise SandboxError(f"no seccomp filter for the {machine} architecture")
    arch, nr_socket, nr_socketpair, nr_io_uring = _ARCHES[machine]
    arg0 = 16 if byteorder == "little" else 20  # low half of the first argument (an int)
    arg1 = arg0 + 8
    prog: list[tuple[int, str | None, str | None, int]] = [  # code, jump if true/false, k
        (_LD_W_ABS, None, None, 4),  # arch
        (_JEQ_K, None, "kill", arch),
        (_LD_W_ABS, None, None, 0),  # syscall number
    ]
    if machine == "x86_64":
        # x32 numbers have bit 30 set; a negative number (syscall(-1) probes) is just ENOSYS.
        prog.append((_JGE_K, "allow", None, 0x80000000))
        prog.append((_JGE_K, "kill", None, _X32_SYSCALL_BIT))
    prog += [
        (_JEQ_K, "socket", None, nr_socket),
        (_JEQ_K, "socketpair", None, nr_socketpair),
        (_JEQ_K, "enosys", None, nr_io_uring),
        (_RET_K, None, None, _RET_ALLOW),
        (_LD_W_ABS, None, None, arg0),  # socket: the domain
        (_JEQ_K, "eacces", "allow", _AF_UNIX),
        (_LD_W_ABS, None, None, arg0),  # socketpair: the domain, then the type
        (_JEQ_K, None, "allow", _AF_UNIX),
        (_LD_W_ABS, None, None, arg1),
        (_AND_K, None, None, _SOCK_TYPE_MASK),  # without SOCK_NONBLOCK / SOCK_CLOEXEC
        (_JEQ_K, "eacces", "allow", _SOCK_DGRAM),
        (_RET_K, None, None, _RET_ALLOW),
        (_RET_K, None, None, _RET_ERRNO | _EACCES),
        (_RET_K, None, None, _RET_ERRNO | _ENOSYS),
        (_RET_K, None, None, _RET_KILL_PROCESS),
    ]
    n = len(prog)
    labels = {"allow": n - 4, "eacces": n - 3, "enosys": n - 2, "kill": n - 1}
    # the first instructions of the socket and socketpair checks
    loads = [i for i, ins in enumerate(prog) if ins[0] == _LD_W_ABS and ins[3] == arg0]
    labels["socket"], labels["socketpair"] = loads
    out = bytearray()
    for i, (code, jt, jf, k) in enumerate(prog):
        t = labels[jt] - i - 1 if jt else 0
        f = labels[jf] - i - 1 if jf else 0
        out += code.to_bytes(2, byteorder) + bytes([t, f]) + k.to_bytes(4, byteorder)
    return bytes(out)


def apply_seccomp() -> None:
    ffi = _lib()
    program = seccomp_program(posix.uname().machine)
    buf = ffi.buffer(program)
    fprog_type = ffi.struct([("len", ffi.U16), ("filter", ffi.Ptr)])
    fprog = fprog_type(len(program) // 8, ffi.c.addressof(buf))
    if ffi.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ffi.c.byref(fprog)) != 0:
        raise ffi.errno("seccomp")


# --- capabilities, cgroups, limits -------------------------------------------------------------


def drop_capabilities() -> None:
    """No capabilities now or after exec: bounding and ambient sets emptied, then capset(0)."""
    ffi = _lib()
    fd = posix.open("/proc/sys/kernel/cap_last_cap", posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        last = int(posix.read(fd, 16))
    finally:
        posix.close(fd)
    for cap in range(last + 1):
        ffi.prctl(_PR_CAPBSET_DROP, cap)  # EPERM without CAP_SETPCAP: then it holds none
    ffi.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    header = ffi.struct([("version", ffi.U32), ("pid", ffi.I32)])(_CAPABILITY_VERSION_3, 0)
    data = ffi.struct([(f"f{i}", ffi.U32) for i in range(6)])()  # two empty cap_user_data
    if int(ffi._capset(ffi.c.byref(header), ffi.c.byref(data))) != 0:
        raise ffi.errno("capset")


def join_cgroup(procs_file: str) -> None:
    fd = posix.open(procs_file, posix.O_WRONLY | posix.O_CLOEXEC)
    try:
        posix.write(fd, b"0")  # 0: the writing process
    finally:
        posix.close(fd)


def apply_rlimit(spec: str) -> None:
    import resource

    name, _, value = spec.partition("=")
    if name not in _RLIMIT_NAMES or not value.isdigit():
        raise SandboxError(f"bad --rlimit {spec!r}")
    which = getattr(resource, f"RLIMIT_{name.upper()}")
    _soft, hard = resource.getrlimit(which)
    limit = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
    resource.setrlimit(which, (limit, limit))


def _exec(program: list[str]) -> None:
    """execvp without ``os``: search PATH for a bare name."""
    name = program[0]
    if "/" in name:
        posix.execv(name, program)
    path = posix.environ.get(b"PATH", b"/usr/local/bin:/usr/bin:/bin").decode()
    error: OSError = FileNotFoundError(2, f"{name}: command not found")
    for directory in path.split(":"):
        candidate = f"{directory or '.'}/{name}"
        try:
            posix.execv(candidate, program)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            error = exc  # as execvp: go on, report it if nothing else runs
    raise error


_LISTS = ("--cgroup", "--rlimit", "--ro", "--hide", "--rw", "--dev")
_FLAGS = ("--deny-tcp", "--scope", "--deny-unix", "--drop-caps")


def _default_signals() -> None:
    """The job starts with default signal dispositions: Python ignores SIGPIPE and SIGXFSZ and
    handles SIGINT itself, and exec keeps an ignored signal ignored (``yes | head`` would print
    "Broken pipe"). A SIGINT held back while the helper ran is delivered now: its default
    action ends the job as Ctrl-C would have."""
    for signum in (_signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT):
        _signal.signal(signum, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGINT})


def main(argv: list[str] | None = None) -> int:
    # A SIGINT (Ctrl-C sent by interact or `run`) that reached Python's handler just before exec
    # would be lost with the interpreter: keep it pending in the kernel until _default_signals.
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    args = sys.argv[1:] if argv is None else argv
    lists: dict[str, list[str]] = {name: [] for name in _LISTS}
    flags: set[str] = set()
    i = 0
    try:
        while i < len(args):
            arg = args[i]
            if arg == "--":
                i += 1
                break
            if arg == "--abi":
                sys.stdout.write(f"{landlock_abi()}\n")
                return 0
            if arg in _FLAGS:
                flags.add(arg)
                i += 1
                continue
            if arg == "--refuse" and i + 1 < len(args):
                sys.stderr.write(f"mcp-background-job sandbox: {args[i + 1]}\n")
                return 126
            if arg not in _LISTS or i + 1 >= len(args):
                raise SandboxError(f"unknown option {arg!r}")
            lists[arg].append(args[i + 1])
            i += 2
        program = args[i:]
        if not program:
            raise SandboxError("no program given after --")
        for procs_file in lists["--cgroup"]:
            join_cgroup(procs_file)
        for spec in lists["--rlimit"]:
            apply_rlimit(spec)
        landlock = any(lists[k] for k in ("--ro", "--hide", "--rw", "--dev"))
        landlock = landlock or bool(flags & {"--deny-tcp", "--scope"})
        # Needed by Landlock and seccomp without privileges; also keeps setuid programs from
        # gaining any inside the job.
        confined = landlock or flags & {"--deny-unix", "--drop-caps"}
        if confined and _lib().prctl(_PR_SET_NO_NEW_PRIVS, 1) != 0:
            raise _lib().errno("prctl(NO_NEW_PRIVS)")
        if landlock:
            apply_landlock(
                lists["--ro"], lists["--hide"], lists["--rw"], lists["--dev"],
                "--deny-tcp" in flags, "--scope" in flags,
            )  # fmt: skip
        if "--drop-caps" in flags:
            drop_capabilities()
        if "--deny-unix" in flags:
            apply_seccomp()
        _default_signals()
        _exec(program)
    except (SandboxError, OSError, ValueError) as exc:
        sys.stderr.write(f"mcp-background-job sandbox: {exc}; the job was not run\n")
        return 126
    return 126  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
