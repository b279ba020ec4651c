"""Isolation: the argv each mode builds, the explicit environment, start-up detection (the
default, the fallback, refusals), and the exec helper run for real on this kernel: Landlock with
the state hidden, the seccomp filter, scoping, capabilities, and per-job cgroups."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_background_job import cgroup
from mcp_background_job._sandbox import landlock_abi, seccomp_program
from mcp_background_job.config import Settings
from mcp_background_job.errors import InvalidRequest, IsolationError
from mcp_background_job.isolation import (
    TEMP_DIRS,
    WITHHELD,
    Isolation,
    detect,
    helper_argv,
    rlimits_of,
)

ABI = landlock_abi()
needs_landlock = pytest.mark.skipif(ABI < 6, reason=f"Landlock ABI {ABI} here; these need 6+")
ROOT = os.geteuid() == 0


def outside_temp_dirs() -> Path:
    """A base directory that no temp directory contains (Landlock cannot hide state inside a
    writable one, so tests of hiding keep their state here)."""
    temps = [os.path.realpath(p) for p in (*TEMP_DIRS, os.environ.get("TMPDIR") or "/tmp")]
    for base in (Path.home() / ".local" / "state", Path(__file__).resolve().parents[1]):
        real = os.path.realpath(base)
        if not any(real == t or real.startswith(t + "/") for t in temps):
            return Path(real)
    raise AssertionError("no directory outside the temp directories to keep test state in")


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Path]:
    """``BASE/state`` (a database and a spool directory), ``BASE/home`` (with ``.cache``) and
    ``BASE/work``, in a directory outside the temp directories; removed afterwards."""
    base = outside_temp_dirs() / f"mcp-bj-test-{uuid.uuid4().hex[:8]}"
    for sub in ("state/jobs.db.spool", "home/.cache", "work"):
        (base / sub).mkdir(parents=True)
    (base / "state" / "jobs.db").write_text("DATABASE-CONTENT")
    (base / "state" / "jobs.db-wal").write_text("WAL-CONTENT")
    (base / "state" / "jobs.db.spool" / "other0000001.stdout").write_text("OTHER-JOB-OUTPUT")
    (base / "sibling.txt").write_text("readable sibling\n")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _iso(mode: str, network: bool = False, **extra: object) -> Isolation:
    return Isolation(
        mode=mode,
        network=network,
        writable=("/srv/cache",),
        rlimits=(("data", 1 << 30), ("nproc", 100)),
        env_allow=("PATH", "HOME"),
        bwrap="/usr/bin/bwrap",
        **extra,  # type: ignore[arg-type]
    )


def _settings(base: Path, **kw: object) -> Settings:
    return Settings(db=base / "state" / "jobs.db", subreaper=False, **kw)  # type: ignore[arg-type]


def _run(argv: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    done: subprocess.CompletedProcess[str] = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=60,
        stdin=subprocess.DEVNULL, **kw,  # type: ignore[call-overload]
    )  # fmt: skip
    return done


# --- argv, environment, settings ------------------------------------------------------------------


def test_argv_per_mode() -> None:
    assert _iso("none").argv("/bin/sh", "make", "/p") == ["/bin/sh", "-c", "make"]

    helper = _iso("rlimits").argv("/bin/sh", "make", "/p")
    assert helper[:5] == helper_argv()
    assert helper[5:] == ["--rlimit", "data=1073741824", "--rlimit", "nproc=100", "--", "/bin/sh",
                          "-c", "make"]  # fmt: skip
    prl = _iso("rlimits", prlimit="/usr/bin/prlimit").argv("/bin/sh", "make", "/p")
    assert prl[0] == "/usr/bin/prlimit" and prl[-4:] == ["--", "/bin/sh", "-c", "make"]

    ll = _iso("landlock", hidden=("/st/jobs.db", "/st/jobs.db.spool"), scoped=True,
              unix_sockets=False, spool_dir="/st/jobs.db.spool").argv(
        "/bin/sh", "make", "/p", "abc123abc123"
    )  # fmt: skip
    assert ll[:5] == helper_argv() and ll[ll.index("--ro") + 1] == "/"
    for path in ("/dev", "/st/jobs.db", "/st/jobs.db.spool"):
        assert ll[ll.index(path) - 1] == "--hide"
    for path in ("/p", "/tmp", "/srv/cache", "/st/jobs.db.spool/abc123abc123.stderr"):
        assert ll[ll.index(path) - 1] == "--rw"
    for flag in ("--deny-tcp", "--scope", "--deny-unix", "--drop-caps"):
        assert flag in ll
    assert "--deny-tcp" not in _iso("landlock", network=True).argv("/bin/sh", "x", "/p")

    bw = _iso("bwrap", hidden=("/st/jobs.db.spool",)).argv("/bin/sh", "make", "/p")
    box = bw[bw.index("/usr/bin/bwrap") :]
    assert box[1:4] == ["--ro-bind", "/", "/"]
    for flag in ("--unshare-pid", "--unshare-net", "--new-session", "--cap-drop"):
        assert flag in box
    assert box[box.index("--chdir") + 1] == "/p"
    assert box[box.index("/p") - 1 : box.index("/p") + 2] == ["--bind", "/p", "/p"]
    assert box[-4:] == ["--", "/bin/sh", "-c", "make"]
    assert "--unshare-net" not in _iso("bwrap", network=True).argv("/bin/sh", "x", "/p")


def test_environment_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_TOKEN", "s3cret")
    monkeypatch.setenv("HOME", "/home/dev")
    env = _iso("none").environment({"FOO": "bar", "HOME": "/elsewhere"}, ("MARK", "job1"))
    assert env["FOO"] == "bar"
    assert env["HOME"] == "/elsewhere"  # the caller's value wins
    assert env["MARK"] == "job1"
    assert "SERVER_TOKEN" not in env
    assert set(env) <= {"PATH", "HOME", "FOO", "MARK"}


def test_withheld_values_come_from_memory_or_the_job_does_not_start() -> None:
    iso = _iso("none")
    iso.secrets.put("job1", {"API_TOKEN": "t0k3n"})
    env = iso.environment({"API_TOKEN": WITHHELD, "MODE": "ci"}, ("MARK", "job1"))
    assert (env["API_TOKEN"], env["MODE"]) == ("t0k3n", "ci")
    with pytest.raises(InvalidRequest, match=r"API_TOKEN .*rerun"):
        iso.environment({"API_TOKEN": WITHHELD}, ("MARK", "job2"))  # queued by another server


def test_cwd_refusals(box: Path) -> None:
    state = str(box / "state")
    hidden = (f"{state}/jobs.db", f"{state}/jobs.db.spool")
    assert _iso("rlimits").check_cwd("/") is None
    for mode in ("landlock", "bwrap"):
        iso = _iso(mode, hidden=hidden)
        message = iso.check_cwd(f"{state}/jobs.db.spool")
        assert message is not None and "this server's state directory" in message
        # / and system directories: the job runs, its cwd read-only
        for read_only in ("/", "/dev", "/proc/self", "/sys"):
            assert iso.check_cwd(read_only) is None
            assert not iso.writable_cwd(read_only)
            argv = iso.argv("/bin/sh", "true", read_only)
            pairs = set(itertools.pairwise(argv))
            assert ("--rw", read_only) not in pairs and ("--bind", read_only) not in pairs
        for fine in ("/dev/shm", str(box / "work")):
            assert iso.check_cwd(fine) is None and iso.writable_cwd(fine)
    # Landlock cannot take the state out of a writable cwd; bwrap mounts over it.
    refused = _iso("landlock", hidden=hidden).check_cwd(str(box))
    assert refused is not None and "contains this server's state directory" in refused
    assert "MCP_BACKGROUND_JOB_DB" in refused
    assert _iso("bwrap", hidden=hidden).check_cwd(str(box)) is None
    # Not hidden (state inside a temp dir under auto): nothing to protect, nothing refused.
    assert _iso("landlock").check_cwd(str(box)) is None


def test_settings_defaults_and_values_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings(db=tmp_path / "db")
    assert (s.isolation, s.isolation_network, s.isolation_unix_sockets) == ("auto", True, False)
    assert "~/.cache" in s.isolation_cache_dirs and s.isolation_cgroup == "auto"
    # Network stays off by default where landlock or bwrap is chosen explicitly (as before).
    assert Settings(db=tmp_path / "db", isolation="landlock").isolation_network is False
    for mode in ("auto", "rlimits", "landlock", "bwrap"):
        monkeypatch.setenv("MCP_BACKGROUND_JOB_ISOLATION", mode)
        assert Settings(db=tmp_path / "db").isolation == mode
    monkeypatch.setenv("MCP_BACKGROUND_JOB_ISOLATION_CACHE_DIRS", '["~/.m2", "/opt/cache"]')
    monkeypatch.setenv("MCP_BACKGROUND_JOB_ISOLATION_UNIX_SOCKETS", "true")
    monkeypatch.setenv("MCP_BACKGROUND_JOB_ISOLATION_CGROUP", "off")
    s = Settings(db=tmp_path / "db")
    assert s.isolation_cache_dirs == ("~/.m2", "/opt/cache")
    assert (s.isolation_unix_sockets, s.isolation_cgroup) == (True, "off")
    monkeypatch.setenv("MCP_BACKGROUND_JOB_ISOLATION_CACHE_DIRS", '["relative/cache"]')
    with pytest.raises(ValueError, match="neither absolute nor"):
        Settings(db=tmp_path / "db")


def test_rlimits_come_from_settings(tmp_path: Path) -> None:
    s = Settings(db=tmp_path / "db", limit_cpu_s=60, limit_file_size_bytes=1 << 30)
    assert dict(rlimits_of(s)) == {"data": 8 << 30, "cpu": 60, "nproc": 4096, "fsize": 1 << 30}
    assert detect(Settings(db=tmp_path / "db", isolation="none")).rlimits == ()


def test_a_limit_can_be_switched_off_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_BACKGROUND_JOB_LIMIT_MEMORY_BYTES", "none")
    assert "data" not in dict(rlimits_of(Settings(db=tmp_path / "db")))


# --- detection ------------------------------------------------------------------------------------


def test_the_default_is_the_kernels_landlock_where_it_has_it(box: Path) -> None:
    iso = detect(_settings(box))
    assert iso.requested == "auto"
    assert iso.mode == ("landlock" if ABI >= 1 else "rlimits")
    assert iso.network is True  # package managers fetch: see the README
    if ABI >= 1:
        assert iso.hidden and all(p.startswith(str(box / "state")) for p in iso.hidden)
        assert iso.describe()["state_hidden"] is True
        assert iso.scoped is (ABI >= 6)


# A seccomp filter that makes Landlock's system calls fail with ENOSYS, as on a kernel without
# it: detection then runs in that process.
_NO_LANDLOCK = textwrap.dedent(
    """
    import ctypes, logging, platform, struct, sys
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]
    ins = lambda code, jt, jf, k: struct.pack("HBBI", code, jt, jf, k)
    prog = b"".join([
        ins(0x20, 0, 0, 4), ins(0x15, 1, 0, arch), ins(0x06, 0, 0, 0x7FFF0000),
        ins(0x20, 0, 0, 0), ins(0x35, 0, 2, 444), ins(0x35, 1, 0, 447),
        ins(0x06, 0, 0, 0x00050000 | 38), ins(0x06, 0, 0, 0x7FFF0000),
    ])
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(prog)
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Prog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from mcp_background_job.config import Settings
    from mcp_background_job.errors import IsolationError
    from mcp_background_job.isolation import detect
    print("auto:", detect(Settings(db=sys.argv[1])).mode)
    try:
        detect(Settings(db=sys.argv[1], isolation="landlock"))
    except IsolationError as exc:
        print("landlock:", exc)
    """
)


def test_without_landlock_auto_falls_back_with_one_log_line_and_landlock_refuses(
    box: Path,
) -> None:
    result = _run([sys.executable, "-c", _NO_LANDLOCK, str(box / "state" / "jobs.db")], box)
    assert result.returncode == 0, result.stderr
    assert "auto: rlimits" in result.stdout
    assert "landlock: isolation=landlock, but this kernel has no Landlock" in result.stdout
    fallbacks = [line for line in result.stderr.splitlines() if "isolation_fallback" in line]
    assert len(fallbacks) == 1 and "no Landlock" in fallbacks[0], result.stderr
    assert "read the server's database" in fallbacks[0]


@pytest.mark.skipif(ABI < 1, reason="this kernel has no Landlock")
def test_state_in_a_temp_dir_cannot_be_hidden_by_landlock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "state" / "jobs.db"  # pytest's tmp_path is in a temp directory
    if not any(str(tmp_path).startswith(os.path.realpath(t)) for t in TEMP_DIRS):
        db = Path("/tmp") / f"mcp-bj-{uuid.uuid4().hex[:8]}" / "jobs.db"
    with pytest.raises(IsolationError, match=r"cannot hide the server's state.*inside /tmp"):
        detect(Settings(db=db, isolation="landlock"))
    caplog.set_level(logging.INFO, logger="mcp_background_job")
    iso = detect(Settings(db=db))  # auto: Landlock all the same, and says what it cannot do
    assert (iso.mode, iso.hidden) == ("landlock", ())
    assert "isolation_limited isolation=landlock does not hide the server's state" in caplog.text
    # bwrap mounts over it wherever it is
    if shutil.which("bwrap"):
        assert detect(Settings(db=db, isolation="bwrap")).hidden


def test_missing_bwrap_stops_start_up_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(IsolationError, match="apt-get install bubblewrap"):
        detect(Settings(db=tmp_path / "db", isolation="bwrap"))


def test_rlimits_mode_is_probed_and_works(tmp_path: Path) -> None:
    iso = detect(Settings(db=tmp_path / "db", isolation="rlimits", limit_cpu_s=7))
    out = _run(iso.argv("/bin/sh", "ulimit -t; ulimit -d", str(tmp_path)), tmp_path)
    assert out.stdout.split() == ["7", str(8 << 20)], out.stderr  # ulimit -d is in KiB


def test_helper_refuses_bad_options_without_running_anything(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    for opts in (["--rlimit", "bogus=1"], ["--refuse", "the cwd is /"]):
        result = _run([*helper_argv(), *opts, "--", "touch", str(flag)], tmp_path)
        assert result.returncode == 126
        assert "bogus" in result.stderr or "the cwd is /" in result.stderr
        assert not flag.exists()
    assert "the job was not run" in _run([*helper_argv(), "--x", "--", "true"], tmp_path).stderr


def test_jobs_start_with_default_signal_dispositions(tmp_path: Path) -> None:
    # Python ignores SIGPIPE and SIGXFSZ, and exec kept them ignored in the job.
    script = "grep SigIgn /proc/self/status; yes | head -1"
    result = _run([*helper_argv(), "--rlimit", "core=0", "--", "/bin/sh", "-c", script], tmp_path)
    assert result.stdout == "SigIgn:\t0000000000000000\ny\n"
    assert result.stderr == ""  # no "yes: standard output: Broken pipe"


def test_ctrl_c_during_the_helper_is_not_lost(tmp_path: Path) -> None:
    # A SIGINT that reaches the helper at any moment before the job runs ends the job, as it
    # would have ended the job itself; it must not vanish with the interpreter at exec.
    delays = [0.0, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05] * 2
    for delay in delays:
        proc = subprocess.Popen([*helper_argv(), "--", "sleep", "30"], cwd=tmp_path,
                                stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
            proc.wait()
        # Killed by it; or, when it came while Python itself was starting, Python's own exit
        # (status 1, "KeyboardInterrupt"): either way `sleep` never ran.
        assert proc.returncode == -signal.SIGINT or (
            proc.returncode == 1 and b"KeyboardInterrupt" in err
        ), (delay, proc.returncode, err)


# --- the sandbox, for real ------------------------------------------------------------------------


@needs_landlock
def test_landlock_hides_the_state_and_confines_writes(box: Path) -> None:
    iso = detect(_settings(box, isolation="landlock", isolation_cgroup="off"))
    job = "abc123abc123"
    spool = box / "state" / "jobs.db.spool"
    script = f"""
        cat {box}/state/jobs.db || echo no-db
        cat {box}/state/jobs.db-wal || echo no-wal
        ls / > /dev/null && echo root-listable
        ls {box} | grep -qx state && echo way-listable
        ls {spool} > /dev/null && echo spool-names-only
        cat {spool}/other0000001.stdout || echo no-other-spool
        cat {box}/sibling.txt
        echo to-my-stderr >> /dev/stderr && echo own-spool-ok
        echo x > here.txt && echo cwd-ok
        echo x > /tmp/mcp-bj-{job} && echo tmp-ok && rm /tmp/mcp-bj-{job}
        echo x > {box}/sibling.txt || echo sibling-readonly
        echo x > /etc/mcp-bj-escape-{job} || echo etc-readonly
        cat /dev/kmsg > /dev/null || echo kmsg-closed
        echo null > /dev/null && echo null-ok
    """
    own = {s: spool / f"{job}.{s}" for s in ("stdout", "stderr")}
    with own["stdout"].open("wb") as out, own["stderr"].open("wb") as err:
        subprocess.run(
            iso.argv("/bin/sh", script, str(box / "work"), job), cwd=box / "work", stdout=out,
            stderr=err, stdin=subprocess.DEVNULL, timeout=60, check=False,
        )  # fmt: skip
    lines = own["stdout"].read_text().splitlines()
    assert lines == [
        "no-db", "no-wal", "root-listable", "way-listable", "spool-names-only", "no-other-spool",
        "readable sibling", "own-spool-ok", "cwd-ok", "tmp-ok", "sibling-readonly",
        "etc-readonly", "kmsg-closed", "null-ok",
    ], (lines, own["stderr"].read_text())  # fmt: skip
    assert "Permission denied" in own["stderr"].read_text()
    assert (box / "work" / "here.txt").read_text() == "x\n"
    assert (box / "sibling.txt").read_text() == "readable sibling\n"


@needs_landlock
def test_a_job_in_the_root_directory_runs_with_it_read_only(box: Path) -> None:
    iso = detect(_settings(box, isolation="landlock", isolation_cgroup="off"))
    name = f"/mcp-bj-escape-{uuid.uuid4().hex[:8]}"
    result = _run(iso.argv("/bin/sh", f"pwd; touch {name} || echo read-only", "/"), Path("/"))
    assert result.stdout == "/\nread-only\n", result.stderr
    assert not Path(name).exists()


@needs_landlock
def test_a_cwd_containing_the_state_is_refused_and_nothing_runs(box: Path) -> None:
    iso = detect(_settings(box, isolation="landlock", isolation_cgroup="off"))
    result = _run(iso.argv("/bin/sh", "touch ran", str(box)), box)
    assert result.returncode == 126
    assert "contains this server's state directory" in result.stderr
    assert not (box / "ran").exists()


_SOCKETS = textwrap.dedent(
    """
    import ctypes, os, signal, socket, sys
    def attempt(name, fn):
        try:
            fn()
            print(name, "ok")
        except OSError as exc:
            print(name, exc.errno)
    path, abstract, parent = sys.argv[1], sys.argv[2], int(sys.argv[3])
    attempt("unix-path", lambda: socket.socket(socket.AF_UNIX).connect(path))
    attempt("unix-abstract", lambda: socket.socket(socket.AF_UNIX).connect("\\0" + abstract))
    attempt("pair-stream", lambda: socket.socketpair())
    attempt("pair-dgram", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))
    attempt("inet", lambda: socket.socket(socket.AF_INET).close())
    attempt("signal-parent", lambda: os.kill(parent, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    r = libc.syscall(ctypes.c_long(425), ctypes.c_long(8), None)  # io_uring_setup
    print("io_uring", ctypes.get_errno() if r < 0 else "ok")
    r = libc.syscall(ctypes.c_long(-1))  # a probe: ENOSYS, as without the filter
    print("negative", ctypes.get_errno() if r < 0 else "ok")
    sys.stdout.flush()
    if len(sys.argv) > 4:  # an x32 system call: socket(AF_UNIX) with the x32 bit
        libc.syscall(ctypes.c_long(41 | 0x40000000), ctypes.c_long(1), ctypes.c_long(1), 0)
        print("x32 survived")
    """
)


@contextlib.contextmanager
def _unix_listeners(home: Path) -> Iterator[tuple[str, str]]:
    """A socket file under ``home`` (as ssh-agent, docker, D-Bus have) and an abstract one."""
    path = home / "agent.sock"
    abstract = f"mcp-bj-test-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(str(path))
        a.listen()
        b.bind("\0" + abstract)
        b.listen()
        yield str(path), abstract


@needs_landlock
def test_unix_sockets_signals_and_io_uring_do_not_leave_the_job(box: Path) -> None:
    home = box / "home"
    with _unix_listeners(home) as (path, abstract):
        x32 = ["x32"] if platform.machine() == "x86_64" else []
        iso = detect(_settings(box, isolation="landlock", isolation_cgroup="off"))
        argv = [sys.executable, "-I", "-c", _SOCKETS, path, abstract, str(os.getpid()), *x32]
        result = _run(iso.wrap(argv, str(box / "work")), box / "work")
        got = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        assert got == {
            "unix-path": "13", "unix-abstract": "13", "pair-stream": "ok", "pair-dgram": "13",
            "inet": "ok", "signal-parent": "1", "io_uring": "38", "negative": "38",
        }, result.stderr  # fmt: skip
        if x32:
            assert result.returncode == -signal.SIGSYS  # killed, not run as another call

        # Allowed by the setting: pathname sockets connect; abstract ones and signals stay
        # scoped to the job by Landlock.
        iso = detect(_settings(box, isolation="landlock", isolation_cgroup="off",
                               isolation_unix_sockets=True))  # fmt: skip
        result = _run(iso.wrap(argv[:-1] if x32 else argv, str(box / "work")), box / "work")
        got = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        assert (got["unix-path"], got["unix-abstract"], got["signal-parent"]) == ("ok", "1", "1")
        assert got["pair-dgram"] == "ok"


def test_seccomp_filter_is_built_for_each_supported_architecture() -> None:
    for machine in ("x86_64", "aarch64"):
        program = seccomp_program(machine)
        assert len(program) % 8 == 0
    # x86_64 refuses x32 numbers (bit 30); aarch64 has no such ABI to refuse.
    assert (0x40000000).to_bytes(4, "little") in seccomp_program("x86_64")
    assert (0x40000000).to_bytes(4, "little") not in seccomp_program("aarch64")
    with pytest.raises(Exception, match="no seccomp filter for the ppc64le"):
        seccomp_program("ppc64le")


@needs_landlock
@pytest.mark.skipif(not ROOT, reason="capabilities matter for root jobs")
def test_root_jobs_have_no_capabilities(box: Path) -> None:
    iso = detect(_settings(box, isolation="landlock", isolation_cgroup="off"))
    result = _run(iso.argv("/bin/sh", "grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status",
                           str(box / "work")), box / "work")  # fmt: skip
    values = [line.split()[1] for line in result.stdout.splitlines()]
    assert values == ["0000000000000000"] * 3, result.stdout + result.stderr


# --- cgroups --------------------------------------------------------------------------------------

CG = cgroup.detect(48 << 20, 20)
needs_cgroups = pytest.mark.skipif(isinstance(CG, str), reason=f"no writable cgroup here: {CG}")


def _job_cgroups(found: cgroup.JobCgroups | str | None) -> cgroup.JobCgroups:
    assert isinstance(found, cgroup.JobCgroups)
    return found


@needs_cgroups
@pytest.mark.parametrize("mode", ["rlimits", "landlock"])
def test_cgroup_memory_limit_counts_dev_shm(box: Path, tmp_path: Path, mode: str) -> None:
    # RLIMIT_DATA does not count tmpfs pages: 96 MiB in /dev/shm pass a 48 MiB RLIMIT_DATA.
    iso = detect(_settings(box, isolation=mode, limit_memory_bytes=48 << 20, limit_processes=20))
    assert iso.cgroups is not None and iso.cgroups.memory_bytes == 48 << 20
    job = f"shm{uuid.uuid4().hex[:9]}"
    shm = Path(f"/dev/shm/mcp-bj-{job}")
    try:
        command = f"head -c 100663296 /dev/zero > {shm} && echo written || echo stopped"
        result = _run(iso.argv("/bin/sh", command, str(tmp_path), job), tmp_path)
        size = shm.stat().st_size if shm.exists() else 0
        assert size < 64 << 20, (size, result.stdout, result.stderr)
        # The cgroup's OOM killer stopped the job (head, or the shell too): nothing finished.
        assert "written" not in result.stdout, result.stderr
    finally:
        shm.unlink(missing_ok=True)
        _job_cgroups(iso.cgroups).remove(job)


@needs_cgroups
def test_cgroup_process_limit_holds_for_root_too(tmp_path: Path) -> None:
    iso = detect(Settings(db=tmp_path / "state" / "jobs.db", isolation="rlimits",
                          limit_processes=20))  # fmt: skip
    cgs = _job_cgroups(iso.cgroups)
    job = f"pid{uuid.uuid4().hex[:9]}"
    script = "n=0; for i in $(seq 60); do sleep 30 & n=$((n+1)); done 2>/dev/null; wait"
    proc = subprocess.Popen(iso.argv("/bin/sh", script, str(tmp_path), job), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while len(cgs.procs(job)) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the shell has gone on trying (and failing) to fork the rest
        assert 10 <= len(cgs.procs(job)) <= 20
    finally:
        assert cgs.kill(job)
        proc.wait(timeout=10)
        cgs.remove(job)


@needs_cgroups
def test_cgroup_api_finds_and_kills_a_whole_tree(tmp_path: Path) -> None:
    iso = detect(Settings(db=tmp_path / "state" / "jobs.db", isolation="rlimits"))
    cgs = _job_cgroups(iso.cgroups)
    job = f"tree{uuid.uuid4().hex[:8]}"
    script = "setsid sleep 301 & (trap '' TERM; sleep 302) & sleep 303 & wait"
    proc = subprocess.Popen(iso.argv("/bin/sh", script, str(tmp_path), job), cwd=tmp_path,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while len(cgs.procs(job)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = cgs.procs(job)
        assert proc.pid in members and len(members) >= 4  # sh and three sleeps
        assert not cgs.remove(job)  # still in use: kept
        assert cgs.kill(job) is True
        assert cgs.procs(job) == set()
        assert all(not Path(f"/proc/{pid}/status").exists() or _zombie(pid) for pid in members)
        proc.wait(timeout=10)
        assert cgs.remove(job) and not any(d.exists() for d in cgs.dirs(job))
    finally:
        cgs.kill(job)
        cgs.remove(job)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    return True


@needs_cgroups
def test_cgroup_sweep_removes_only_old_empty_groups(tmp_path: Path) -> None:
    cgs = _job_cgroups(cgroup.detect(None, None))
    old, new = f"old{uuid.uuid4().hex[:9]}", f"new{uuid.uuid4().hex[:9]}"
    cgs.prepare(old)
    cgs.prepare(new)
    try:
        past = time.time() - cgroup.SWEEP_AGE_S - 5
        for d in cgs.dirs(old):
            os.utime(d, (past, past))
        cgs._swept[0] = 0.0
        cgs.sweep()
        assert not any(d.exists() for d in cgs.dirs(old))
        assert all(d.exists() for d in cgs.dirs(new))  # a job may be about to join it
    finally:
        cgs.remove(old)
        cgs.remove(new)


def test_cgroup_v2_detection_says_why_not(tmp_path: Path) -> None:
    # A process in a v2 group that also holds another process cannot delegate it to jobs.
    proc_cgroup = tmp_path / "cgroup"
    unified = tmp_path / "unified"
    (unified / "app.scope").mkdir(parents=True)
    proc_cgroup.write_text("0::/app.scope\n")
    (unified / "app.scope" / "cgroup.controllers").write_text("cpu memory pids\n")
    (unified / "app.scope" / "cgroup.subtree_control").write_text("")
    (unified / "app.scope" / "cgroup.procs").write_text(f"{os.getpid()}\n1\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"41 23 0:38 / {unified} rw,relatime - cgroup2 cgroup2 rw\n")
    found = cgroup.detect(1 << 30, 100, proc_cgroup=str(proc_cgroup), mountinfo=str(mountinfo))
    assert isinstance(found, str)
    assert "also holds other processes (1)" in found and "Delegate=yes" in found
    (unified / "app.scope" / "cgroup.controllers").write_text("cpu\n")
    found = cgroup.detect(1 << 30, 100, proc_cgroup=str(proc_cgroup), mountinfo=str(mountinfo))
    assert isinstance(found, str) and "memory and pids controller(s)" in found


def _unified() -> Path:
    """Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified in hybrid mode)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if " - cgroup2 " in line:
            return Path(line.split()[4])
    return Path("/nonexistent")


UNIFIED = _unified()


@pytest.mark.skipif(
    not (UNIFIED / "cgroup.procs").exists() or not os.access(UNIFIED, os.W_OK),
    reason="no writable cgroup v2 hierarchy here",
)
def test_cgroup_v2_groups_join_list_kill_and_remove_for_real(tmp_path: Path) -> None:
    # The v2 path on a real unified hierarchy (here without the memory/pids controllers, which
    # this machine binds to v1): joining, listing, cgroup.kill and removal.
    base = UNIFIED / f"mcp-bj-test-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    cgs = cgroup.JobCgroups(2, (str(base),), ("unified",), None, None)
    job = "v2job0000001"
    try:
        iso = Isolation(mode="rlimits", network=True, writable=(), rlimits=(), env_allow=("PATH",),
                        prlimit=shutil.which("prlimit"), cgroups=cgs)  # fmt: skip
        proc = subprocess.Popen(
            iso.argv("/bin/sh", "setsid sleep 301 & sleep 302 & wait", str(tmp_path), job),
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 20
        while len(cgs.procs(job)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid in cgs.procs(job) and len(cgs.procs(job)) >= 3
        assert cgs.kill(job)
        proc.wait(timeout=10)
        assert cgs.remove(job)
    finally:
        cgs.kill(job)
        cgs.remove(job)
        base.rmdir()
