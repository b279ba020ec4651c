"""Isolation: the argv each mode builds, the explicit environment, start-up detection, and the
exec helper run for real (rlimits, Landlock)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcp_background_job._sandbox import landlock_abi
from mcp_background_job.config import Settings
from mcp_background_job.errors import IsolationError
from mcp_background_job.isolation import HELPER, Isolation, detect, rlimits_of


def _iso(mode: str, network: bool = False) -> Isolation:
    return Isolation(
        mode=mode,
        network=network,
        writable=("/srv/cache",),
        rlimits=(("data", 1 << 30), ("nproc", 100)),
        env_allow=("PATH", "HOME"),
        bwrap="/usr/bin/bwrap",
    )


def test_argv_per_mode() -> None:
    assert _iso("none").argv("/bin/sh", "make", "/p") == ["/bin/sh", "-c", "make"]

    rl = _iso("rlimits").argv("/bin/sh", "make", "/p")
    assert rl[:4] == [sys.executable, "-I", "-S", str(HELPER)]
    assert rl[4:] == ["--rlimit", "data=1073741824", "--rlimit", "nproc=100", "--", "/bin/sh",
                      "-c", "make"]  # fmt: skip

    ll = _iso("landlock").argv("/bin/sh", "make", "/p")
    assert ll[8:10] == ["--ro", "/"]
    assert "--deny-tcp" in ll
    for path in ("/p", "/tmp", "/srv/cache"):
        assert ll[ll.index(path) - 1] == "--rw"
    assert "--deny-tcp" not in _iso("landlock", network=True).argv("/bin/sh", "x", "/p")

    bw = _iso("bwrap").argv("/bin/sh", "make", "/p")
    box = bw[bw.index("--") + 1 :]
    assert box[0] == "/usr/bin/bwrap"
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


def test_cwd_root_is_refused_only_where_the_cwd_becomes_writable() -> None:
    assert _iso("rlimits").check_cwd("/") is None
    for mode in ("landlock", "bwrap"):
        message = _iso(mode).check_cwd("/")
        assert message is not None and "cwd" in message
        assert _iso(mode).check_cwd("/home/dev/proj") is None


def test_rlimits_come_from_settings(tmp_path: Path) -> None:
    s = Settings(db=tmp_path / "db", limit_cpu_s=60, limit_file_size_bytes=1 << 30)
    assert dict(rlimits_of(s)) == {"data": 8 << 30, "cpu": 60, "nproc": 4096, "fsize": 1 << 30}
    assert detect(Settings(db=tmp_path / "db", isolation="none")).rlimits == ()


def test_missing_bwrap_stops_start_up_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(IsolationError, match="apt-get install bubblewrap"):
        detect(Settings(db=tmp_path / "db", isolation="bwrap"))


def test_rlimits_mode_is_probed_and_works(tmp_path: Path) -> None:
    iso = detect(Settings(db=tmp_path / "db", isolation="rlimits", limit_cpu_s=7))
    argv = iso.argv("/bin/sh", "ulimit -t; ulimit -d", str(tmp_path))
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.split() == ["7", str(8 << 20)]  # ulimit -d is in KiB


def test_helper_refuses_bad_options_without_running_anything(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(HELPER), "--rlimit", "bogus=1", "--", "touch", str(flag)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 126
    assert "the job was not run" in result.stderr
    assert not flag.exists()


@pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock")
def test_helper_landlock_confines_writes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside.txt"
    script = f"echo in > {work}/in.txt; echo out > {outside} 2>/dev/null || echo denied"
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(HELPER), "--ro", "/", "--rw", str(work),
         "--dev", "/dev/null", "--", "/bin/sh", "-c", script],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.stdout.strip() == "denied"
    assert (work / "in.txt").read_text() == "in\n"
    assert not outside.exists()


@pytest.mark.skipif(landlock_abi() >= 1, reason="Landlock is available here")
def test_landlock_unavailable_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(IsolationError, match="no Landlock"):
        detect(Settings(db=tmp_path / "db", isolation="landlock"))


def test_a_limit_can_be_switched_off_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_BACKGROUND_JOB_LIMIT_MEMORY_BYTES", "none")
    assert "data" not in dict(rlimits_of(Settings(db=tmp_path / "db")))
